package bpf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podtracer/podtracer/internal/testenv"
)

func TestIsSSLLibrary(t *testing.T) {
	for name, want := range map[string]bool{
		"libssl.so.3": true, "libssl.so.1.1": true, "libssl.so": true, "libssl-1b2c3d4e.so.3": true,
		"libssl3.so": false, "libcrypto.so.3": false, "libssl.so3": false, "libssl-dev.txt": false, "libsslx.so.3": false,
	} {
		if got := isSSLLibrary(name); got != want {
			t.Errorf("isSSLLibrary(%q) = %v", name, got)
		}
	}
}

// selfSigned writes a key and a self-signed certificate for localhost into
// a temporary directory, with the openssl command.
func selfSigned(t *testing.T) (cert, key string) {
	t.Helper()
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	out, err := exec.Command(testenv.LookPath(t, "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
		"-subj", "/CN=localhost", "-keyout", key, "-out", cert).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v %s", err, out)
	}
	return cert, key
}

// tlsScript is a TLS server and client in one Python process (the
// neighbour), on Python's ssl module: libssl's SSL_read_ex and
// SSL_write_ex. It waits for a line on stdin (the uprobes are in), then
// makes two connections: on each the client sends a request and the
// server answers it, twice (the second request read in two calls). The
// server reads ahead, as nginx does, and ends its handshake late: its
// last read of the handshake takes the first request too, and its first
// SSL_read makes no receive. argv: certificate, key.
const tlsScript = `
import ctypes, socket, ssl, sys, threading, time
cert, key = sys.argv[1], sys.argv[2]
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
# SSL_CTX_set_read_ahead(ctx, 1), a macro of SSL_CTX_ctrl (SSL_CTRL_SET_READ_AHEAD,
# 41) on the SSL_CTX that CPython's context object holds after its header.
libssl = ctypes.CDLL("libssl.so.3")
libssl.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
libssl.SSL_CTX_ctrl(ctypes.c_void_p.from_address(id(sctx) + 16).value, 41, 1, None)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
print(l.getsockname()[1], flush=True)
sys.stdin.readline()
def serve():
    for _ in range(2):
        s, _ = l.accept()
        s.setblocking(False)
        t = sctx.wrap_socket(s, server_side=True, do_handshake_on_connect=False)
        while True:
            try:
                t.do_handshake()
                break
            except ssl.SSLWantReadError:
                time.sleep(0.2)
        t.setblocking(True)
        for i in range(2):
            # The second request in two reads: the second finds its
            # bytes decrypted already, and makes no receive of its own.
            req = t.recv(4096) if i == 0 else t.recv(9) + t.recv(4096)
            t.sendall(b"PONG-TLS " + req[9:] + b" z" * 150 * i)
        t.close()
th = threading.Thread(target=serve); th.start()
for n in range(2):
    c = cctx.wrap_socket(socket.create_connection(l.getsockname()), server_hostname="localhost")
    for i in range(2):
        c.sendall(b"PING-TLS conn%d-req%d" % (n, i))
        assert c.recv(4096).startswith(b"PONG-TLS conn%d-req%d" % (n, i))
    c.close()
th.join()
print("done", flush=True)
`

// TestTLSPlaintext: with the uprobes on a neighbour's libssl, its TLS
// connections come up as their plaintext (FlagPlaintext), on the socket
// each end uses, and none of their records does; each end's handshake is
// one EventTLS.
func TestTLSPlaintext(t *testing.T) {
	testenv.Privileged(t)
	if !kernelAtLeast(t, 6, 3) {
		t.Skip("TLS is read with the socket hooks, Linux 6.3+")
	}
	// uprobe_multi links where the kernel has them (6.10+), else a perf
	// event per uprobe; both, where it has them.
	t.Run("uprobe_multi", func(t *testing.T) {
		if !kernelAtLeast(t, 6, 10) {
			t.Skip("uprobe_multi links with a per-process filter need Linux 6.10+")
		}
		testTLSPlaintext(t, true)
	})
	t.Run("perf_events", func(t *testing.T) { testTLSPlaintext(t, false) })
}

func testTLSPlaintext(t *testing.T, multi bool) {
	cert, key := selfSigned(t)
	cmd := exec.Command(testenv.LookPath(t, "python3"), "-c", tlsScript, cert, key)
	got, stats := runTLSNeighbour(t, cmd, multi, "libssl.so")
	checkTLSPlaintext(t, got, stats, "TLS")
}

// TestGoTLSPlaintext: with the uprobes on a Go neighbour's crypto/tls, its
// TLS connections come up as their plaintext, as libssl's do; also from
// stripped executables, position-independent or linked by the C linker,
// whose function table is all there is to find them by, and from older Go
// versions.
func TestGoTLSPlaintext(t *testing.T) {
	testenv.Privileged(t)
	if !kernelAtLeast(t, 6, 3) {
		t.Skip("TLS is read with the socket hooks, Linux 6.3+")
	}
	source, err := os.ReadFile("testdata/gotls/main.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, build := range []struct {
		name      string
		toolchain string // GOTOOLCHAIN: older Go versions, fetched by the go command
		flags     []string
		multi     bool
	}{
		{"uprobe_multi", "local", nil, true},
		{"perf_events_stripped_pie", "local", []string{"-buildmode=pie", "-ldflags=-s -w"}, false},
		// The function table's and the module data's layouts of older
		// versions; cgo's external linking, where the Go code does not
		// start the text section.
		{"go1.18", "go1.18.10", nil, true},
		{"go1.21_stripped_pie", "go1.21.13", []string{"-buildmode=pie", "-ldflags=-s -w"}, true},
		{"external_linking_stripped", "local", []string{"-ldflags=-linkmode=external -s -w"}, true},
	} {
		t.Run(build.name, func(t *testing.T) {
			if build.multi && !kernelAtLeast(t, 6, 10) {
				t.Skip("uprobe_multi links with a per-process filter need Linux 6.10+")
			}
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "main.go"), source, 0o644)
			os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module gotls\n\ngo 1.18\n"), 0o644)
			exe := filepath.Join(dir, "gotls")
			cmd := exec.Command(testenv.LookPath(t, "go"), append(append([]string{"build", "-o", exe}, build.flags...), ".")...)
			cmd.Dir, cmd.Env = dir, append(os.Environ(), "GOTOOLCHAIN="+build.toolchain, "GOFLAGS=", "CGO_ENABLED=1")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go build: %v\n%s", err, out)
			}
			// Read's plaintext is taken at its copy out (one cheap trap)
			// where Read makes one, as Go 1.26's does.
			f, err := os.Open(exe)
			if err != nil {
				t.Fatal(err)
			}
			places, err := inspectGoTLS(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("Read's copy at %#x, its returns at %#x", places.readCopy, places.readReturns)
			if build.toolchain == "local" && (places.readCopy == 0 || places.readReturns != nil) {
				t.Errorf("Go %s: Read's copy at %#x, returns at %#x; want the copy alone", runtime.Version(), places.readCopy, places.readReturns)
			}
			got, stats := runTLSNeighbour(t, exec.Command(exe), build.multi, "(Go crypto/tls)")
			checkTLSPlaintext(t, got, stats, "GO")
		})
	}
}

// traceNeighbour runs cmd, a neighbour that prints its TLS server's port,
// waits for a line on stdin, talks TLS with itself and prints "done",
// under a capture that trace (given the capture and the neighbour's pid)
// puts the uprobes on before the line: with uprobe_multi links (multi) or
// perf events. It returns the neighbour's events, its port and the
// capture's counters, and checks that UntraceTLS takes the uprobes off.
func traceNeighbour(t *testing.T, cmd *exec.Cmd, multi bool, trace func(c *Capture, pid int)) ([]Event, string, Stats) {
	t.Helper()
	c, err := Load(Config{CaptureBytes: 256, Hooks: HooksSocket, TLS: true}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !multi {
		c.tls.loadMulti = nil // perf events
	}
	var events []Event
	var neighbour atomic.Int64 // its pid, once it runs: the host's other processes are seen too
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev Event
		for c.Read(&ev) == nil {
			if int64(ev.PID) == neighbour.Load() {
				ev.Payload = slices.Clone(ev.Payload)
				events = append(events, ev)
			}
		}
	}()

	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	neighbour.Store(int64(cmd.Process.Pid))
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatal("the neighbour printed no port")
	}
	port := strings.TrimSpace(lines.Text())
	trace(c, cmd.Process.Pid)
	fmt.Fprintln(stdin)
	if !lines.Scan() || lines.Text() != "done" {
		t.Fatalf("neighbour: %q", lines.Text())
	}
	cmd.Wait()
	time.Sleep(500 * time.Millisecond)
	stats, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	c.UntraceTLS(cmd.Process.Pid)
	if len(c.TLSTraced()) != 0 {
		t.Errorf("still traced: %v", c.TLSTraced())
	}
	c.Close()
	<-done
	return events, port, stats
}

// runTLSNeighbour runs cmd, a neighbour that prints its TLS server's port,
// waits for a line on stdin, talks TLS with itself and prints "done", with
// the uprobes on its TLS library (named with library): with uprobe_multi
// links (multi) or perf events. It returns the plaintext that came up, as
// the words each connection end moved in order ("<" received, ">" sent),
// by the end's addresses, and the capture's counters; and checks that
// no record of those connections came up, and one EventTLS for each end.
func runTLSNeighbour(t *testing.T, cmd *exec.Cmd, multi bool, library string) (map[string]string, Stats) {
	t.Helper()
	events, port, stats := traceNeighbour(t, cmd, multi, func(c *Capture, pid int) {
		if !multi && strings.Contains(library, "Go") {
			if _, err := c.TraceTLS(pid, false); !errors.Is(err, ErrTLSNotSpoken) {
				t.Errorf("TraceTLS of a Go program not seen speaking TLS, with perf events: %v, want ErrTLSNotSpoken", err)
			}
		}
		traced, err := c.TraceTLS(pid, true)
		if err != nil {
			t.Fatalf("TraceTLS: %v", err)
		}
		if (c.tls.multi != nil) != multi {
			t.Fatalf("uprobe_multi programs: %v, want %v", c.tls.multi != nil, multi)
		}
		if !strings.Contains(traced, library) {
			t.Errorf("library %q, want %q", traced, library)
		}
		if again, err := c.TraceTLS(pid, true); err != nil || again != traced {
			t.Errorf("TraceTLS again: %q %v", again, err)
		}
		sleep := exec.Command("sleep", "10")
		if err := sleep.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.TraceTLS(sleep.Process.Pid, true); !errors.Is(err, ErrNoTLSLibrary) {
			t.Errorf("TraceTLS of a process without libssl or Go: %v, want ErrNoTLSLibrary", err)
		}
		sleep.Process.Kill()
		sleep.Wait()
	})

	// Connection ends by their addresses: a socket's memory is reused by
	// the next connection's.
	hellos := map[string]bool{} // connection ends whose handshake came up
	plain := map[string][]string{}
	socks := map[string]uint64{} // and the socket each end's events name
	var b strings.Builder
	for _, ev := range events {
		fmt.Fprintf(&b, "type=%d flags=%d dir=%d sock=%x %v-%v len=%d %q\n", ev.Type, ev.Flags, ev.Dir, ev.Conn, ev.Local, ev.Remote, ev.Len, ev.Payload)
		switch {
		case ev.Type == EventTLS:
			if end := fmt.Sprint(ev.Local, ev.Remote); hellos[end] {
				t.Errorf("a second EventTLS for %s", end)
			} else {
				hellos[end] = true
			}
		case ev.Type == EventData && ev.Flags&FlagPlaintext != 0:
			end := fmt.Sprint(ev.Local, ev.Remote)
			if !hellos[end] {
				t.Errorf("plaintext on %s before its EventTLS", end)
			}
			if sock, ok := socks[end]; ok && sock != ev.Conn {
				t.Errorf("plaintext of %s on sockets %x and %x", end, sock, ev.Conn)
			}
			socks[end] = ev.Conn
			if fmt.Sprint(ev.Local.Port()) != port && fmt.Sprint(ev.Remote.Port()) != port {
				t.Errorf("plaintext between %v and %v, not on port %s", ev.Local, ev.Remote, port)
			}
			if int(ev.Len) != len(ev.Payload) {
				t.Errorf("plaintext of %d bytes with %d captured", ev.Len, len(ev.Payload))
			}
			side := map[Direction]string{Ingress: "<", Egress: ">"}[ev.Dir]
			plain[end] = append(plain[end], side+string(ev.Payload))
		case ev.Type == EventData:
			t.Errorf("bytes of a TLS connection came up: %q", ev.Payload)
		}
	}
	if len(hellos) != 4 {
		t.Errorf("%d connection ends with an EventTLS, want 4 (2 connections)", len(hellos))
	}
	streams := map[string]string{}
	for end, words := range plain {
		streams[end] = strings.Join(words, " ")
	}
	if t.Failed() {
		t.Logf("events:\n%s", b.String())
	}
	return streams, stats
}

// checkTLSPlaintext checks the connection ends' plaintext streams of the
// neighbours of runTLSNeighbour, whose messages say tag: each end's, once;
// and that the kernel held records back and lost no plaintext.
func checkTLSPlaintext(t *testing.T, got map[string]string, stats Stats, tag string) {
	t.Helper()
	want := map[string]bool{}
	for n := range 2 {
		req := func(i int) string { return fmt.Sprintf("PING-%s conn%d-req%d", tag, n, i) }
		// The second answer is longer than the capture's 256 bytes.
		resp := func(i int) string {
			return fmt.Sprintf("PONG-%s conn%d-req%d", tag, n, i) + strings.Repeat(" z", 150*i)
		}
		want[fmt.Sprintf(">%s <%s >%s <%s", req(0), resp(0), req(1), resp(1))] = true
		// The server reads the second request's first 9 bytes, then
		// the rest.
		want[fmt.Sprintf("<%s >%s <%s <%s >%s", req(0), resp(0), req(1)[:9], req(1)[9:], resp(1))] = true
	}
	for end, s := range got {
		if !want[s] {
			t.Errorf("connection %s: %s", end, s)
		} else {
			delete(want, s)
		}
	}
	if len(want) != 0 {
		t.Errorf("missing plaintext streams %v", want)
	}
	if stats.TLSRecords == 0 || stats.TLSLost != 0 {
		t.Errorf("stats %+v: want TLS records held back, no plaintext lost", stats)
	}
}

// TestTLSWholeHTTP2: a TLS call longer than the capture goes up whole on
// an HTTP/2 connection (its plaintext began with the client preface), in
// events of MaxCaptureBytes, as far as 8 of them, the last counting the
// rest; on another connection, one event of MaxCaptureBytes counts it
// all. The neighbour's clients write 40000 bytes in one call each.
func TestTLSWholeHTTP2(t *testing.T) {
	testenv.Privileged(t)
	if !kernelAtLeast(t, 6, 3) {
		t.Skip("TLS is read with the socket hooks, Linux 6.3+")
	}
	exe := filepath.Join(t.TempDir(), "gotls")
	if out, err := exec.Command(testenv.LookPath(t, "go"), "build", "-o", exe, "./testdata/gotls").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	all, port, _ := traceNeighbour(t, exec.Command(exe, "big"), kernelAtLeast(t, 6, 10), func(c *Capture, pid int) {
		if _, err := c.TraceTLS(pid, true); err != nil {
			t.Fatalf("TraceTLS: %v", err)
		}
	})
	var events []Event // the plaintext sent
	for _, ev := range all {
		if ev.Type == EventData && ev.Flags&FlagPlaintext != 0 && ev.Dir == Egress {
			events = append(events, ev)
		}
	}

	data := make([]byte, 40000)
	for i := range data {
		data[i] = byte(i % 251)
	}
	// The clients' sends, by connection end, in order.
	sent := map[string][]Event{}
	var ends []string
	for _, ev := range events {
		if fmt.Sprint(ev.Remote.Port()) != port {
			continue // the server's
		}
		end := fmt.Sprint(ev.Local, ev.Remote)
		if sent[end] == nil {
			ends = append(ends, end)
		}
		sent[end] = append(sent[end], ev)
	}
	if len(ends) != 2 {
		t.Fatalf("client sends on %d connections, want 2", len(ends))
	}
	var lens []string
	for _, ev := range sent[ends[0]] {
		lens = append(lens, fmt.Sprintf("%d/%d", ev.Len, len(ev.Payload)))
	}
	want := []string{"24/24"}
	for range 7 {
		want = append(want, "4096/4096")
	}
	want = append(want, "11328/4096")
	if got := strings.Join(lens, " "); got != strings.Join(want, " ") {
		t.Errorf("HTTP/2 connection: sends (len/captured) %s, want %s", got, strings.Join(want, " "))
	}
	var whole []byte
	for _, ev := range sent[ends[0]][1:] {
		whole = append(whole, ev.Payload...)
	}
	if !bytes.Equal(whole, data[:len(whole)]) {
		t.Error("HTTP/2 connection: the chunks are not the call's bytes in order")
	}
	if s := sent[ends[1]]; len(s) != 1 || s[0].Len != 40000 || !bytes.Equal(s[0].Payload, data[:MaxCaptureBytes]) {
		t.Errorf("other connection: %d sends, want one of 40000 bytes with its first %d", len(s), MaxCaptureBytes)
	}
}

// TestTLSMapsOff: with TLS off the TLS maps, which the socket programs
// refer to but nothing fills, hold one entry each instead of 17 MB of
// the pod's kernel memory; with it on, their full size.
func TestTLSMapsOff(t *testing.T) {
	testenv.Privileged(t)
	if !kernelAtLeast(t, 6, 3) {
		testenv.Skip(t, "the socket programs need the socket tracepoints (Linux 6.3+)")
	}
	for _, tls := range []bool{false, true} {
		c, err := Load(Config{CaptureBytes: 512, Hooks: HooksSocket, TLS: tls}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		progs := c.programs
		if c.tls != nil {
			p := c.tls.progs
			progs = append(progs, p.TLSWrite, p.TLSReturn, p.GoTLSRead)
		}
		sizes := map[string]uint32{}
		for _, p := range progs {
			info, err := p.Info()
			if err != nil {
				t.Fatal(err)
			}
			ids, _ := info.MapIDs()
			for _, id := range ids {
				m, err := ebpf.NewMapFromID(id)
				if err != nil {
					t.Fatal(err)
				}
				if mi, err := m.Info(); err == nil && slices.Contains(tlsMaps, mi.Name) {
					sizes[mi.Name] = mi.MaxEntries
				}
				m.Close()
			}
		}
		c.Close()
		// With TLS off only the socket programs are loaded, which refer
		// to two of them.
		if tls && len(sizes) != len(tlsMaps) || !tls && len(sizes) < 2 {
			t.Fatalf("TLS %v: the programs' TLS maps %v, want %v", tls, sizes, tlsMaps)
		}
		for name, n := range sizes {
			if tls && n < 4096 || !tls && n != 1 { // tls_pids, by process, is the smallest
				t.Errorf("TLS %v: %s has %d entries", tls, name, n)
			}
		}
	}
}
