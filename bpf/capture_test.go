package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podtracer/podtracer/internal/kernel"
	"github.com/podtracer/podtracer/internal/testenv"
)

func TestConfigBounds(t *testing.T) {
	for _, n := range []int{0, MinCaptureBytes - 1, MaxCaptureBytes + 1} {
		if _, err := Load(Config{CaptureBytes: n}, slog.Default()); err == nil {
			t.Errorf("capture bytes %d accepted", n)
		}
	}
}

// TestCapture loads the programs for real. The test process plays the
// agent (excluded); its children, a Python server and curl, are the
// neighbours; a curl in another PID namespace must not be seen.
// startServer runs python's http.server, a neighbour process of the test
// (which plays the agent), and returns its port.
func startServer(t *testing.T, python string) int {
	t.Helper()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	server := exec.Command(python, "-m", "http.server", "--bind", "127.0.0.1", fmt.Sprint(port))
	server.Dir = t.TempDir()
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Process.Kill(); server.Wait() })
	for i := 0; i < 100; i++ {
		if conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			conn.Close() // the test process is the agent: this connection is not seen
			return port
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("python http.server does not listen on %d", port)
	return 0
}

// Stop detaches the programs but lets Read return what the kernel already
// captured: a shutdown loses nothing.
func TestStopDrains(t *testing.T) {
	testenv.Privileged(t)
	python := testenv.LookPath(t, "python3")
	curl := testenv.LookPath(t, "curl")
	c, err := Load(Config{CaptureBytes: 64}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	url := fmt.Sprintf("http://127.0.0.1:%d/", startServer(t, python))
	get := func(path string) {
		if out, err := exec.Command(curl, "-s", "-o", "/dev/null", url+path).CombinedOutput(); err != nil {
			t.Fatalf("curl: %v %s", err, out)
		}
	}
	get("before-stop") // nothing reads yet: the events wait in the ring buffer
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	get("after-stop")
	stats, err := c.Stats()
	if err != nil || stats.Events == 0 {
		t.Fatalf("stats after stop: %+v, %v", stats, err)
	}

	// Drained marks the end of each batch of events: it comes after the
	// events, before Read ends.
	var before, after, readSinceDrained, drained int
	c.Drained = func() { drained++; readSinceDrained = 0 }
	var ev Event
	for {
		err := c.Read(&ev)
		if errors.Is(err, ErrClosed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		readSinceDrained++
		switch p := string(ev.Payload); {
		case strings.HasPrefix(p, "GET /before-stop"):
			before++
		case strings.HasPrefix(p, "GET /after-stop"):
			after++
		}
	}
	// Seen twice: sent by curl, received by the server.
	if before != 2 || after != 0 {
		t.Errorf("requests read after stop: %d before it (want 2), %d after it (want 0)", before, after)
	}
	if drained == 0 || readSinceDrained != 0 {
		t.Errorf("Drained called %d times, %d events read after the last call", drained, readSinceDrained)
	}
	if err := c.Read(&ev); !errors.Is(err, ErrClosed) {
		t.Errorf("read after drain: %v, want ErrClosed", err)
	}
}

// TestAutoHooks: on a kernel that has the socket tracepoints (6.3+), auto
// must pick them; an older kernel gets the syscall tracepoints.
func TestAutoHooks(t *testing.T) {
	testenv.Privileged(t)
	c, err := Load(Config{CaptureBytes: 64}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := HooksSyscall
	if kernelAtLeast(t, 6, 3) {
		want = HooksSocket
	}
	if c.Hooks() != want {
		t.Errorf("auto attached %q, want %q on this kernel", c.Hooks(), want)
	}
	if _, err := Load(Config{CaptureBytes: 64, Hooks: "kprobe"}, slog.Default()); err == nil || !strings.Contains(err.Error(), "unknown hook set") {
		t.Errorf("hook set kprobe: %v", err)
	}
}

func kernelAtLeast(t *testing.T, major, minor int) bool {
	return kernel.AtLeast(major, minor)
}

// hookSets returns the hook sets this kernel can run: both on 6.3+.
func hookSets(t *testing.T) []string {
	if kernelAtLeast(t, 6, 3) {
		return []string{HooksSocket, HooksSyscall}
	}
	return []string{HooksSyscall}
}

func TestCapture(t *testing.T) {
	testenv.Privileged(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) { testCapture(t, hooks) })
	}
}

func testCapture(t *testing.T, hooks string) {
	python := testenv.LookPath(t, "python3")
	curl := testenv.LookPath(t, "curl")

	c, err := Load(Config{CaptureBytes: 64, RingBufferBytes: 1 << 20, Hooks: hooks}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Hooks() != hooks {
		t.Fatalf("attached %q, want %q", c.Hooks(), hooks)
	}

	port := startServer(t, python)

	long := strings.Repeat("v", 300)
	url := fmt.Sprintf("http://127.0.0.1:%d/bpf-test", port)
	if out, err := exec.Command("unshare", "--pid", "--fork", curl, "-s", "-o", "/dev/null", url+"/other-ns").CombinedOutput(); err != nil {
		t.Fatalf("curl in another pid namespace: %v %s", err, out)
	}
	curlCmd := exec.Command(curl, "-s", "-o", "/dev/null", "-H", "X-Long: "+long, url)
	if out, err := curlCmd.CombinedOutput(); err != nil {
		t.Fatalf("curl: %v %s", err, out)
	}

	type seen struct {
		ev      Event
		payload string
		tail    string
	}
	var events []seen
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev Event
		for c.Read(&ev) == nil {
			events = append(events, seen{ev, string(ev.Payload), string(ev.Tail)})
		}
	}()
	time.Sleep(time.Second)
	stats, err := c.Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if stats.Lost != 0 || stats.Events == 0 {
		t.Errorf("stats %+v: want events and no loss", stats)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	<-done

	var request, response, clientSend, closed bool
	var serverConn uint64 // the server's end of curl's connection
	for _, s := range events {
		ev := s.ev
		switch {
		case ev.Type == EventData && ev.Dir == Egress && strings.HasPrefix(s.payload, "GET /bpf-test/other-ns"):
			t.Errorf("event from a process in another PID namespace: pid %d %q", ev.PID, ev.CommString())
		case ev.Type == EventData && ev.Dir == Ingress && strings.HasPrefix(s.payload, "GET /bpf-test HTTP/1.1"):
			request, serverConn = true, ev.Conn
			if ev.Local.Port() != uint16(port) || ev.Remote.Addr().String() != "127.0.0.1" {
				t.Errorf("server side ends %v %v", ev.Local, ev.Remote)
			}
			if len(ev.Payload) != 64 || ev.Len <= 300 {
				t.Errorf("captured %d of %d bytes, want 64 of more than 300", len(ev.Payload), ev.Len)
			}
			if !strings.HasSuffix(s.tail, "\r\n\r\n") || len(s.tail) != 16 {
				t.Errorf("tail %q", s.tail)
			}
			// The socket tracepoints see neither accept nor the syscall's
			// entry.
			if wantRole := map[string]Role{HooksSocket: RoleUnknown, HooksSyscall: RoleServer}[hooks]; ev.Role != wantRole ||
				ev.ExitNS < ev.EnterNS || ev.EnterNS == 0 {
				t.Errorf("role %v (want %v) enter %d exit %d", ev.Role, wantRole, ev.EnterNS, ev.ExitNS)
			}
			if d := time.Since(c.WallTime(ev.ExitNS)); d < 0 || d > time.Minute {
				t.Errorf("wall time %v off by %v", c.WallTime(ev.ExitNS), d)
			}
			if !strings.HasPrefix(ev.CommString(), "python") {
				t.Errorf("comm %q", ev.CommString())
			}
		case ev.Type == EventData && ev.Dir == Egress && strings.HasPrefix(s.payload, "HTTP/1.0 404"):
			response = true
		case ev.Type == EventData && ev.Dir == Egress && strings.HasPrefix(s.payload, "GET /bpf-test HTTP/1.1"):
			clientSend = true
			if int(ev.PID) == curlCmd.Process.Pid && ev.Role != RoleClient {
				t.Errorf("client role %v", ev.Role)
			}
		case ev.Type == EventClose && serverConn != 0 && ev.Conn == serverConn:
			// By the socket: a closing socket may have given up its port.
			closed = true
		}
	}
	if !request || !response || !clientSend || !closed {
		var b bytes.Buffer
		for _, s := range events {
			fmt.Fprintf(&b, "type=%d dir=%d pid=%d %s len=%d %q\n", s.ev.Type, s.ev.Dir, s.ev.PID, s.ev.CommString(), s.ev.Len, s.payload)
		}
		t.Fatalf("request %v response %v client send %v close %v; events:\n%s", request, response, clientSend, closed, b.String())
	}
}

// TestCloseWakesRead: Close ends a Read that is waiting for events with
// ErrClosed, at once.
func TestCloseWakesRead(t *testing.T) {
	testenv.Privileged(t)
	c, err := Load(Config{CaptureBytes: 64}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var ev Event
		for {
			if err := c.Read(&ev); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(3 * maxPoll) // Read is asleep between polls now
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Read after Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
}

// vectorScript writes and reads through iovec arrays (writev, sendmsg,
// readv, recvmsg) on a loopback TCP connection, as nginx and Node.js do.
const vectorScript = `
import os, socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
os.writev(c.fileno(), [b"VEC1:", b"x" * 100, b"-TAIL-0123456789"])
a, b = bytearray(60), bytearray(100)
got = os.readv(s.fileno(), [a, b])
c.sendmsg([b"VEC2:", b"abc", b"def"])
buf = bytearray(64)
n = s.recvmsg_into([buf])[0]
os.writev(c.fileno(), [b"VEC3:"] + [b"ab"] * 16)
m = len(s.recv(64))
# A chunked body as Node.js sends it: the end of the body, "0\r\n\r\n",
# is a vector of its own, past the captured prefix and past the eighth.
os.writev(c.fileno(), [b"VEC4:" + b"y" * 100] + [b"\r\n", b"3", b"\r\n", b"bye"] * 3 + [b"\r\n", b"0\r\n\r\n"])
k = 0
while k < 136:
    k += len(s.recv(4096))
sys.stdout.write("%d %d %d %d\n" % (got, n, m, k))
`

// capturePython loads the capture with cfg, runs a Python script (a
// neighbour: the test plays the agent), and hands each event read to each
// until half a second after the script ended. It returns what the script
// printed.
func capturePython(t *testing.T, cfg Config, script string, each func(ev *Event)) string {
	t.Helper()
	return captureCommand(t, cfg, exec.Command(testenv.LookPath(t, "python3"), "-c", script), each)
}

// captureCommand is capturePython for any command.
func captureCommand(t *testing.T, cfg Config, cmd *exec.Cmd, each func(ev *Event)) string {
	t.Helper()
	c, err := Load(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v %s", cmd.Path, err, out)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev Event
		for c.Read(&ev) == nil {
			each(&ev)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	c.Close()
	<-done
	return string(out)
}

// TestCaptureVectors: transfers through iovec arrays are captured with
// their prefix, in order across the vectors, and their tail.
func TestCaptureVectors(t *testing.T) {
	testenv.Privileged(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) {
			type capture struct{ payload, tail string }
			got := map[string]capture{} // by direction and the payload's first 5 bytes
			out := capturePython(t, Config{CaptureBytes: 64, RingBufferBytes: 1 << 20, Hooks: hooks}, vectorScript, func(ev *Event) {
				if ev.Type == EventData && len(ev.Payload) >= 5 && strings.HasPrefix(string(ev.Payload), "VEC") {
					got[fmt.Sprintf("%d %s", ev.Dir, ev.Payload[:5])] = capture{string(ev.Payload), string(ev.Tail)}
				}
			})
			if strings.TrimSpace(out) != "121 11 37 136" {
				t.Fatalf("script printed %q", out)
			}

			prefix := "VEC1:" + strings.Repeat("x", 59)
			for _, dir := range []Direction{Egress, Ingress} {
				w := got[fmt.Sprintf("%d VEC1:", dir)]
				if w.payload != prefix || w.tail != "-TAIL-0123456789" {
					t.Errorf("VEC1 dir %d: payload %q tail %q, want %q and the last 16 bytes", dir, w.payload, w.tail, prefix)
				}
				if m := got[fmt.Sprintf("%d VEC2:", dir)]; m.payload != "VEC2:abcdef" || m.tail != "" {
					t.Errorf("VEC2 dir %d: payload %q tail %q", dir, m.payload, m.tail)
				}
			}
			// 17 vectors: the first 8 are copied (MAX_IOV), not fewer.
			if w := got[fmt.Sprintf("%d VEC3:", Egress)]; w.payload != "VEC3:"+strings.Repeat("ab", 7) {
				t.Errorf("VEC3 sent in 17 vectors: payload %q", w.payload)
			}
			if r := got[fmt.Sprintf("%d VEC3:", Ingress)]; r.payload != "VEC3:"+strings.Repeat("ab", 16) {
				t.Errorf("VEC3 received: payload %q", r.payload)
			}
			// The tail of a transfer whose last vectors are short: the last
			// one and the one before (Node.js's "\r\n", "0\r\n\r\n").
			if w := got[fmt.Sprintf("%d VEC4:", Egress)]; w.payload != "VEC4:"+strings.Repeat("y", 59) || w.tail != "\r\n0\r\n\r\n" {
				t.Errorf("VEC4 sent in 15 vectors: payload %q tail %q", w.payload, w.tail)
			}
			if r := got[fmt.Sprintf("%d VEC4:", Ingress)]; r.tail != "e\r\n3\r\nbye\r\n0\r\n\r\n" {
				t.Errorf("VEC4 received: tail %q", r.tail)
			}
		})
	}
}

// The wait between polls follows the rate the last poll found: an eighth
// of the ring buffer per poll, within bounds.
func TestNextPoll(t *testing.T) {
	testPoll := maxPoll
	maxPoll = PollInterval
	defer func() { maxPoll = testPoll }()
	t0 := time.Unix(1000, 0)
	for _, c := range []struct {
		elapsed time.Duration
		found   int
		want    time.Duration
	}{
		{10 * time.Millisecond, 0, PollInterval},                // nothing came: the longest wait
		{10 * time.Millisecond, 1 << 17, 10 * time.Millisecond}, // an eighth of 1 MiB in 10 ms
		{10 * time.Millisecond, 1 << 16, 20 * time.Millisecond}, // half that rate
		{10 * time.Millisecond, 1 << 12, PollInterval},          // a quiet pod
		{10 * time.Millisecond, 1 << 20, MinPollInterval},       // the whole ring in 10 ms
		{40 * time.Millisecond, 1 << 17, 40 * time.Millisecond},
		{10 * time.Millisecond, 1 << 13, 160 * time.Millisecond}, // 800 kB/s: 5k requests/s of small events
	} {
		cp := &Capture{ringBytes: 1 << 20, lastPoll: t0, found: c.found}
		if got := cp.nextPoll(t0.Add(c.elapsed)); got != c.want {
			t.Errorf("%d bytes in %v: wait %v, want %v", c.found, c.elapsed, got, c.want)
		}
		if cp.found != 0 || !cp.lastPoll.Equal(t0.Add(c.elapsed)) {
			t.Errorf("the poll's count was not reset")
		}
	}
}

// withoutFastOnRefusal: while the verifier refuses the programs, the
// kernel's Redis spans go first, then the Redis drop, then the kernel's
// HTTP spans, then the HTTP fast path, then the HTTP/2 frame walk (first
// when the stack was refused); another error, or nothing left to turn
// off, is returned as it is.
func TestWithoutFastOnRefusal(t *testing.T) {
	refused := fmt.Errorf("load program: %w", &ebpf.VerifierError{Cause: errors.New("too complex")})
	stack := fmt.Errorf("load program: %w", &ebpf.VerifierError{Cause: errors.New("argument list too long"),
		Log: []string{"combined stack size of 3 calls is 544. Too large", "processed 1234 insns"}})
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct {
		fast      Fast
		refusals  int   // attaches refused before one succeeds
		first     error // the first refusal, when not the usual
		other     error // or every attach fails so
		wantOff   string
		wantError bool
	}{
		{Fast{HTTP: true, Redis: true}, 0, nil, nil, "", false},
		{Fast{HTTP: true, Redis: true}, 1, nil, nil, "fast_redis redis_drop", false},
		{Fast{HTTP: true, Redis: true}, 2, nil, nil, "fast_redis redis_drop fast_http", false},
		{Fast{HTTP: true, Redis: true}, 3, nil, nil, "fast_redis redis_drop fast_http h2_frames", false},
		{Fast{HTTP: true, Redis: true}, 4, nil, nil, "fast_redis redis_drop fast_http h2_frames", true},
		{Fast{HTTP: true}, 1, nil, nil, "fast_http", false},
		{Fast{HTTP: true, Spans: true, Redis: true}, 2, nil, nil, "fast_redis redis_drop fast_spans", false},
		{Fast{HTTP: true, Spans: true, Redis: true}, 3, nil, nil, "fast_redis redis_drop fast_spans fast_http", false},
		{Fast{Spans: true}, 1, nil, nil, "fast_spans fast_http", false},
		{Fast{Spans: true, Redis: true}, 2, nil, nil, "fast_redis redis_drop fast_spans fast_http", false},
		{Fast{Spans: true, RedisSpans: true}, 1, nil, nil, "redis_spans fast_redis", false},
		{Fast{Spans: true, RedisSpans: true, Redis: true}, 1, nil, nil, "redis_spans", false},
		{Fast{Spans: true, RedisSpans: true, Redis: true}, 2, nil, nil, "redis_spans fast_redis redis_drop", false},
		{Fast{Redis: true}, 2, nil, nil, "fast_redis redis_drop h2_frames", false},
		{Fast{Redis: true}, 3, nil, nil, "fast_redis redis_drop h2_frames", true},
		{Fast{}, 1, nil, nil, "h2_frames", false},
		{Fast{}, 2, nil, nil, "h2_frames", true},
		// Refused for the stack: the HTTP/2 walk goes first.
		{Fast{HTTP: true, Redis: true}, 1, stack, nil, "h2_frames", false},
		{Fast{HTTP: true, Redis: true}, 2, stack, nil, "h2_frames fast_redis redis_drop", false},
		{Fast{}, 2, stack, nil, "h2_frames", true},
		{Fast{HTTP: true, Redis: true}, 0, nil, errors.New("no such tracepoint"), "", true},
	} {
		attaches := 0
		var off []string
		err := withoutFastOnRefusal(c.fast, func() error {
			attaches++
			if c.other != nil {
				return c.other
			}
			if attaches == 1 && c.first != nil {
				return c.first
			}
			if attaches <= c.refusals {
				return refused
			}
			return nil
		}, func(name string) error { off = append(off, name); return nil }, logger)
		if got := strings.Join(off, " "); got != c.wantOff || (err != nil) != c.wantError {
			t.Errorf("%+v, %d refusals, %v: turned off %q, error %v; want %q, error %v", c.fast, c.refusals, c.other, got, err, c.wantOff, c.wantError)
		}
	}
}

// notStreamScript receives bytes that are not the stream's next: a peek
// (recv and recvmsg), the urgent byte, a MSG_TRUNC receive whose bytes TCP
// discards (the buffer still holds STALE); then it connects a socket that
// was refused, again, to a server: the second connection's data and close.
const notStreamScript = `
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
port = srv.getsockname()[1]
c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
c.sendall(b"PEEK1"); time.sleep(0.05)
p1 = a.recv(5, socket.MSG_PEEK); p2 = a.recvmsg(5, 0, socket.MSG_PEEK)[0]; r = a.recv(5)
c.send(b"!", socket.MSG_OOB); time.sleep(0.05)
o = a.recv(1, socket.MSG_OOB)
c.sendall(b"TRUNC"); time.sleep(0.05)
buf = bytearray(b"STALE"); t = a.recv_into(buf, 5, socket.MSG_TRUNC)
c.sendall(b"AFTER"); time.sleep(0.05)
f = a.recv(5)
closed = socket.socket(); closed.bind(("127.0.0.1", 0)); dead = closed.getsockname()[1]; closed.close()
s = socket.socket()
try:
    s.connect(("127.0.0.1", dead))
except ConnectionRefusedError:
    pass
s.connect(("127.0.0.1", port)); b, _ = srv.accept()
s.sendall(b"AGAIN"); b.recv(5); s.close(); b.close()
sys.stdout.write("%s %s %s %s %d %s %d\n" % (p1.decode(), p2.decode(), r.decode(), o.decode(), t, f.decode(), s.fileno()))
`

// TestNotStreamBytes: bytes a receive does not take from the stream are not
// reported as the stream's (an Istio sidecar peeks at every connection);
// bytes a receive takes but discards (MSG_TRUNC) are counted, not read; and
// a socket that connects again after a refused connect reports its second
// connection's data and close.
func TestNotStreamBytes(t *testing.T) {
	testenv.Privileged(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) {
			var ingress []string
			var againConn uint64
			againClosed := false
			cmd := exec.Command(testenv.LookPath(t, "python3"), "-c", notStreamScript)
			out := captureCommand(t, Config{CaptureBytes: 64, RingBufferBytes: 1 << 20, Hooks: hooks}, cmd, func(ev *Event) {
				switch {
				case ev.PID != uint32(cmd.Process.Pid):
					// another process's: other tests run beside
				case ev.Type == EventData && ev.Dir == Ingress && len(ev.Payload) == 0:
					ingress = append(ingress, fmt.Sprintf("#%d", ev.Len)) // counted, not read
				case ev.Type == EventData && ev.Dir == Ingress:
					ingress = append(ingress, string(ev.Payload))
				case ev.Type == EventData && ev.Dir == Egress && string(ev.Payload) == "AGAIN":
					againConn = ev.Conn // the client's side, whose socket was refused first
				case ev.Type == EventClose && againConn != 0 && ev.Conn == againConn:
					againClosed = true
				}
			})
			if !strings.HasPrefix(out, "PEEK1 PEEK1 PEEK1 ! 5 AFTER") {
				t.Fatalf("script printed %q", out)
			}
			count := map[string]int{}
			for _, p := range ingress {
				count[p]++
			}
			if count["PEEK1"] != 1 || count["!"] != 0 || count["STALE"] != 0 || count["#5"] != 1 || count["AFTER"] != 1 || count["AGAIN"] != 1 {
				t.Errorf("ingress payloads %q: want PEEK1, the 5 bytes of TRUNC counted (#5), AFTER and AGAIN once each, no ! nor STALE", ingress)
			}
			if hooks == HooksSocket && !againClosed {
				t.Error("no close event for the connection of a socket refused before")
			}
		})
	}
}

// countedScript moves bytes over a loopback connection with syscalls whose
// registers name no buffer of them: sendmmsg (two messages), recvmmsg and
// splice from a pipe. The other side uses recv and send.
const countedScript = `
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t), ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
def mmsgs(bufs):
    vecs, msgs = (iovec * len(bufs))(), (mmsghdr * len(bufs))()
    for i, b in enumerate(bufs):
        vecs[i].base, vecs[i].len = ctypes.cast(b, ctypes.c_void_p), len(b)
        msgs[i].hdr.iov, msgs[i].hdr.iovlen = ctypes.pointer(vecs[i]), 1
    return msgs, vecs
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
c = socket.create_connection(("127.0.0.1", srv.getsockname()[1])); a, _ = srv.accept()
out = [ctypes.create_string_buffer(b"MMSG-ONE", 8), ctypes.create_string_buffer(b"MMSG-TWO!", 9)]
msgs, vecs = mmsgs(out)
sent = libc.sendmmsg(c.fileno(), msgs, 2, 0)
got = a.recv(17); time.sleep(0.05)
a.sendall(b"RECVMMSG"); time.sleep(0.05)
into = [ctypes.create_string_buffer(8)]
msgs, vecs = mmsgs(into)
n = libc.recvmmsg(c.fileno(), msgs, 1, 0, None)
r, w = os.pipe(); os.write(w, b"SPLICED")
os.splice(r, c.fileno(), 7); time.sleep(0.05)
got += a.recv(7)
sys.stdout.write("%d %s %d %s\n" % (sent, got.decode(), n, into[0].raw.decode()))
`

// processConns collects, per connection of cmd's process (other tests'
// run beside), what it saw: "dir:payload" for the bytes read, "dir:#len"
// for the bytes counted.
func processConns(conns map[uint64][]string, cmd *exec.Cmd) func(ev *Event) {
	return func(ev *Event) {
		if ev.Type != EventData || ev.PID != uint32(cmd.Process.Pid) {
			return
		}
		if len(ev.Payload) == 0 {
			conns[ev.Conn] = append(conns[ev.Conn], fmt.Sprintf("%d:#%d", ev.Dir, ev.Len))
		} else {
			conns[ev.Conn] = append(conns[ev.Conn], fmt.Sprintf("%d:%s", ev.Dir, ev.Payload))
		}
	}
}

// connWith returns the connection of conns whose events include want.
func connWith(t *testing.T, conns map[uint64][]string, want string) []string {
	t.Helper()
	for _, evs := range conns {
		if slices.Contains(evs, want) {
			return evs
		}
	}
	t.Fatalf("no connection with %q: %v", want, conns)
	return nil
}

// splicedScript splices bytes from a pipe into a socket, and from a
// socket into a pipe.
const splicedScript = `
import os, socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
c = socket.create_connection(("127.0.0.1", srv.getsockname()[1])); a, _ = srv.accept()
c.sendall(b"FIRST"); a.recv(5)
r, w = os.pipe()
os.write(w, b"SPLICE-OUT")
os.splice(r, c.fileno(), 10); time.sleep(0.05)
n = os.splice(a.fileno(), w, 10)
sys.stdout.write("%d %s\n" % (n, os.read(r, 10).decode()))
`

// TestSplicedBytes: a splice into a socket is counted by both hook sets
// (the socket hooks from Linux 6.5), a splice out of one by the syscall
// hooks; the socket hooks have no tracepoint on that path.
func TestSplicedBytes(t *testing.T) {
	testenv.Privileged(t)
	in, out := fmt.Sprint(Ingress), fmt.Sprint(Egress)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) {
			if hooks == HooksSocket {
				needSpliceTracepoint(t)
			}
			conns := map[uint64][]string{}
			cmd := exec.Command(testenv.LookPath(t, "python3"), "-c", splicedScript)
			got := captureCommand(t, Config{CaptureBytes: 64, RingBufferBytes: 1 << 20, Hooks: hooks}, cmd, processConns(conns, cmd))
			if strings.TrimSpace(got) != "10 SPLICE-OUT" {
				t.Fatalf("script printed %q", got)
			}
			if client := connWith(t, conns, out+":FIRST"); !slices.Equal(client, []string{out + ":FIRST", out + ":#10"}) {
				t.Errorf("client's events %q: want FIRST, then 10 bytes counted", client)
			}
			server := []string{in + ":FIRST", in + ":#10"}
			if hooks == HooksSocket {
				server = server[:1]
			}
			if got := connWith(t, conns, in+":FIRST"); !slices.Equal(got, server) {
				t.Errorf("server's events %q, want %q", got, server)
			}
		})
	}
}

// TestCountedBytes: bytes moved on a pod's connection by a syscall whose
// registers name no buffer of them (sendmmsg, recvmmsg, splice, io_uring,
// an io_uring worker thread, io_uring's task work run as another syscall
// ends) go up counted, with no payload, so that user
// space knows where its copy of the stream has a hole; before, they left
// no trace, and the parsers took the bytes after the hole for the bytes
// before it. The syscall hooks do not follow these syscalls at all.
func TestCountedBytes(t *testing.T) {
	testenv.Privileged(t)
	if !slices.Contains(hookSets(t), HooksSocket) {
		testenv.Skip(t, "the socket hooks need Linux 6.3+; the syscall hooks do not follow these syscalls")
	}
	cfg := Config{CaptureBytes: 64, RingBufferBytes: 1 << 20, Hooks: HooksSocket}
	in, out := fmt.Sprint(Ingress), fmt.Sprint(Egress)

	t.Run("mmsg and splice", func(t *testing.T) {
		conns := map[uint64][]string{}
		cmd := exec.Command(testenv.LookPath(t, "python3"), "-c", countedScript)
		got := captureCommand(t, cfg, cmd, processConns(conns, cmd))
		if strings.TrimSpace(got) != "2 MMSG-ONEMMSG-TWO!SPLICED 1 RECVMMSG" {
			t.Fatalf("script printed %q", got)
		}
		client := connWith(t, conns, out+":#8")
		want := []string{out + ":#8", out + ":#9", in + ":#8", out + ":#7"}
		if !kernelAtLeast(t, 6, 5) {
			want = want[:3] // a splice into a socket went by sendpage, past sock_sendmsg's tracepoint
		}
		if !slices.Equal(client, want) {
			t.Errorf("client's events %q, want %q", client, want)
		}
		server := connWith(t, conns, out+":RECVMMSG")
		if !slices.Contains(server, out+":RECVMMSG") || !strings.Contains(strings.Join(server, " "), "SPLICED") {
			t.Errorf("server's events %q: want its reads and its send read", server)
		}
	})

	t.Run("io_uring", func(t *testing.T) {
		cc := testenv.LookPath(t, "clang")
		if _, err := os.Stat("/usr/include/liburing.h"); err != nil {
			testenv.Skip(t, "needs liburing (apt-get install liburing-dev)")
		}
		bin := filepath.Join(t.TempDir(), "uring")
		if out, err := exec.Command(cc, "-O2", "-o", bin, "testdata/uring.c", "-luring", "-lpthread").CombinedOutput(); err != nil {
			t.Fatalf("clang: %v %s", err, out)
		}
		conns := map[uint64][]string{}
		cmd := exec.Command(bin)
		got := captureCommand(t, cfg, cmd, processConns(conns, cmd))
		if strings.TrimSpace(got) == "no io_uring" {
			testenv.Skip(t, "io_uring is disabled here (kernel.io_uring_disabled, or a seccomp filter)")
		}
		if strings.TrimSpace(got) != "URING-INLINEURING-WORKER URING-TASKWORK" {
			t.Fatalf("uring printed %q", got)
		}
		// Both sends counted: the one in io_uring_enter, the worker's.
		client := connWith(t, conns, out+":#12")
		if want := []string{out + ":#12", out + ":#12", out + ":URING-TASKWORK"}; !slices.Equal(client, want) {
			t.Errorf("client's events %q, want %q", client, want)
		}
		// The receive done as task work, in the registers of a read(2) of
		// a pipe: counted, not read from the pipe's buffer.
		server := connWith(t, conns, in+":URING-INLINE")
		if want := []string{in + ":URING-INLINE", in + ":URING-WORKER", in + ":#14"}; !slices.Equal(server, want) {
			t.Errorf("server's events %q, want %q", server, want)
		}
	})
}

// lateCloseScript ends connections while the client has yet to read their
// last bytes: the server's reset after its response (RSET), and the
// server's FIN after the client's shutdown(SHUT_WR) (HALF), after which the
// client reads them, then once more (nothing: the end); a reset after
// which it reads them and closes without that last read (NOEOF); and a
// client that closes with its reply unread (DROP).
const lateCloseScript = `
import socket, struct, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
port = srv.getsockname()[1]
got, keep = [], []
for how in ("RSET", "HALF"):
    c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
    c.sendall(b"REQ-" + how.encode())
    if how == "HALF":
        c.shutdown(socket.SHUT_WR)
    a.recv(8); a.sendall(b"RESP-" + how.encode())
    if how == "RSET":
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()
    time.sleep(0.3)  # the connection ends, its reply unread
    got.append(c.recv(16).decode())
    try:
        c.recv(16)
    except ConnectionResetError:
        pass
    keep.append(c)  # closed at the end: two sockets, two addresses
c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
c.sendall(b"REQ-NOEOF"); a.recv(9); a.sendall(b"RESP-NOEOF")
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); a.close()
time.sleep(0.3); got.append(c.recv(16).decode()); c.close()
c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
c.sendall(b"REQ-DROP"); a.recv(8); a.sendall(b"RESP-DROP")
time.sleep(0.3); c.close(); keep.append(a)
sys.stdout.write(" ".join(got) + "\n")
`

// TestLateClose: a connection that ends while its process has bytes still
// to read reports its close after them, not before (user space would
// forget the connection first, and lose the reply).
func TestLateClose(t *testing.T) {
	testenv.Privileged(t)
	if !slices.Contains(hookSets(t), HooksSocket) {
		testenv.Skip(t, "the socket hooks need Linux 6.3+; the syscall hooks report closes at close(2)")
	}
	type step struct {
		what string
		conn uint64
	}
	var steps []step
	type client struct {
		how  string
		conn uint64
		from int // where its request is in steps: socket addresses are reused
	}
	var clients []client
	out := capturePython(t, Config{CaptureBytes: 64, RingBufferBytes: 1 << 20, Hooks: HooksSocket}, lateCloseScript, func(ev *Event) {
		switch p := string(ev.Payload); {
		case ev.Type == EventData && ev.Dir == Egress && strings.HasPrefix(p, "REQ-"):
			clients = append(clients, client{p[4:], ev.Conn, len(steps)})
		case ev.Type == EventData && ev.Dir == Ingress && strings.HasPrefix(p, "RESP-"):
			steps = append(steps, step{"data", ev.Conn})
		case ev.Type == EventClose:
			steps = append(steps, step{"close", ev.Conn})
		}
	})
	if strings.TrimSpace(out) != "RESP-RSET RESP-HALF RESP-NOEOF" {
		t.Fatalf("script printed %q", out)
	}
	for _, cl := range clients {
		var order []string
		for _, s := range steps[cl.from:] {
			if s.conn == cl.conn {
				order = append(order, s.what)
			}
		}
		want := []string{"data", "close"}
		if cl.how == "DROP" {
			want = []string{"close"} // closed unread: at once, the reply never read
		}
		if len(order) < len(want) || !slices.Equal(order[:len(want)], want) {
			t.Errorf("%s: the client's events %q, want %q", cl.how, order, want)
		}
	}
	if len(clients) != 4 {
		t.Errorf("%d client connections seen, want 4", len(clients))
	}
}

// destroyScript: a connection the server closes first and one the client
// closes first, after a request and its reply each.
const destroyScript = `
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
port = srv.getsockname()[1]
for first in ("SERVER", "CLIENT"):
    c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
    c.sendall(b"REQ-" + first.encode()); a.recv(64); a.sendall(b"RESP"); c.recv(4)
    ends = [a, c] if first == "SERVER" else [c, a]
    ends[0].close(); ends[1].recv(1); ends[1].close()
print("done")
`

// TestCloseAtDestroy: a connection's close reaches user space once, and
// even when inet_sock_set_state did not run for its end (the kernel skips
// a program's run on a CPU where it is already running): its socket's
// destruction sends it then. The test detaches inet_sock_set_state to be
// sure it does not run.
func TestCloseAtDestroy(t *testing.T) {
	testenv.Privileged(t)
	if !slices.Contains(hookSets(t), HooksSocket) {
		testenv.Skip(t, "the socket hooks need Linux 6.3+")
	}
	for _, detached := range []bool{false, true} {
		t.Run(fmt.Sprintf("detached=%v", detached), func(t *testing.T) {
			c, err := Load(Config{CaptureBytes: 64, Hooks: HooksSocket}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if detached {
				detach(t, c, "inet_sock_set_state")
			}
			var events []Event
			done := make(chan struct{})
			go func() {
				defer close(done)
				var ev Event
				for c.Read(&ev) == nil {
					e := ev
					e.Payload = bytes.Clone(ev.Payload)
					events = append(events, e)
				}
			}()
			cmd := exec.Command(testenv.LookPath(t, "python3"), "-c", destroyScript)
			if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "done" {
				t.Fatalf("script: %v %s", err, out)
			}
			time.Sleep(500 * time.Millisecond)
			c.Close()
			<-done
			// The script's events only: another process's socket may
			// take a freed address.
			conns := map[uint64]string{} // the script's connections, by end
			var closed []string
			for _, ev := range events {
				if int(ev.PID) != cmd.Process.Pid {
					continue
				}
				switch p := string(ev.Payload); {
				case ev.Type == EventData && strings.HasPrefix(p, "REQ-"):
					end := "client"
					if ev.Dir == Ingress {
						end = "server"
					}
					conns[ev.Conn] = p[4:] + " first, " + end
				case ev.Type == EventClose && conns[ev.Conn] != "":
					closed = append(closed, conns[ev.Conn]) // twice, if it came twice
				}
			}
			slices.Sort(closed)
			want := []string{"CLIENT first, client", "CLIENT first, server", "SERVER first, client", "SERVER first, server"}
			if !slices.Equal(closed, want) {
				t.Errorf("closes of %q, want %q, one each", closed, want)
			}
		})
	}
}

// detach takes the program whose name begins with name off its hook.
func detach(t *testing.T, c *Capture, name string) {
	t.Helper()
	for i, l := range c.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			t.Fatal(err)
		}
		pinfo, err := prog.Info()
		prog.Close()
		if err != nil {
			t.Fatal(err)
		}
		// The kernel keeps 15 bytes of a program's name.
		if strings.HasPrefix(name, pinfo.Name) && len(pinfo.Name) >= min(len(name), 15) {
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			c.links = slices.Delete(c.links, i, i+1)
			return
		}
	}
	t.Fatalf("no program %s attached", name)
}

// TestNewProcessWakes: a process's first event wakes the reader at once,
// rather than at its next poll, so that the agent reads the /proc entry of
// a short-lived one (a curl, a probe's script) before it exits. (That its
// later events wait for the poll is not checked: the capture, in the root
// PID namespace, sees the machine's other processes, whose first events
// wake the reader too.)
func TestNewProcessWakes(t *testing.T) {
	testenv.Privileged(t)
	testPoll := maxPoll
	maxPoll = time.Minute // no poll comes during the test
	defer func() { maxPoll = testPoll }()
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) { testNewProcessWakes(t, hooks) })
	}
}

func testNewProcessWakes(t *testing.T, hooks string) {
	c, err := Load(Config{CaptureBytes: 64, Hooks: hooks}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	events := make(chan Event, 64)
	go func() {
		var ev Event
		for c.Read(&ev) == nil {
			if ev.Type == EventData {
				e := ev
				e.Payload = bytes.Clone(ev.Payload)
				events <- e
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // the reader waits for its next poll now

	pid, port := startPythonServer(t, pythonListener+`
while True:
    c, _ = s.accept()
    c.recv(64)
    c.close()
`)
	send := func(what string) {
		conn, _ := dial(t, port)
		io.WriteString(conn, what)
		conn.Close()
	}
	arrived := func(what string, within time.Duration) bool {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case ev := <-events:
				if int(ev.PID) == pid && string(ev.Payload) == what {
					return true
				}
			case <-deadline:
				return false
			}
		}
	}
	send("first")
	if !arrived("first", 5*time.Second) {
		t.Fatal("the first event of a new process did not wake the reader")
	}
}

// TestExecWakes: with TLS on, a program a neighbour starts is told at once
// (the reader woken, though no poll is due), with its pid and name; one
// started in another PID namespace (another pod) is not.
func TestExecWakes(t *testing.T) {
	testenv.Privileged(t)
	if !kernelAtLeast(t, 6, 3) {
		t.Skip("the exec event comes with the socket hooks (Linux 6.3+)")
	}
	unshare := testenv.LookPath(t, "unshare")
	// A copy of true under a name of its own: other tests of the machine
	// run programs beside this one, in the same PID namespace.
	name := fmt.Sprintf("ptexec%d", os.Getpid()%100000000)
	truePath := filepath.Join(t.TempDir(), name)
	if b, err := os.ReadFile(testenv.LookPath(t, "true")); err != nil || os.WriteFile(truePath, b, 0o755) != nil {
		t.Fatalf("copy true: %v", err)
	}
	testPoll := maxPoll
	maxPoll = time.Minute // no poll comes during the test
	defer func() { maxPoll = testPoll }()
	c, err := Load(Config{CaptureBytes: 64, Hooks: HooksSocket, TLS: true}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	execs := make(chan Event, 64)
	go func() {
		var ev Event
		for c.Read(&ev) == nil {
			if ev.Type == EventExec {
				execs <- ev
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // the reader waits for its next poll now

	other := exec.Command(unshare, "--pid", "--fork", truePath) // its copy is another pod's
	if out, err := other.CombinedOutput(); err != nil {
		t.Fatalf("unshare: %v %s", err, out)
	}
	cmd := exec.Command(truePath)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-execs:
			if ev.CommString() != name {
				continue // unshare itself, in this namespace
			}
			if int(ev.PID) != cmd.Process.Pid {
				t.Fatalf("an exec of %s by pid %d, want only %d's: the other namespace's was reported", name, ev.PID, cmd.Process.Pid)
			}
			if ev.Conn != 0 || ev.Local.IsValid() && ev.Local.Port() != 0 || len(ev.Payload) != 0 {
				t.Errorf("the exec event has a connection or a payload: %+v", ev)
			}
			return
		case <-deadline:
			t.Fatalf("the exec of %s did not wake the reader", name)
		}
	}
}
