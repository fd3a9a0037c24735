package bpf

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/podtracer/podtracer/internal/testenv"
)

// keepAliveServer is a neighbour HTTP/1.1 server with keep-alive: GET
// /a answers "ok" in one send, /slow its head, then after 40 ms its
// body, in two sends.
const keepAliveServer = `
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def answer(self, body):
        if self.path.startswith("/slow"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.flush()
            time.sleep(0.04)
            self.wfile.write(b"ok")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self): self.answer(b"ok")
    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer(b"posted")
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
`

// fastEvents reads c's events until closed, keeping the data events'
// payloads and trace IDs.
type fastEvents struct {
	mu     sync.Mutex
	events []Event
	done   chan struct{}
}

func readEvents(c *Capture) *fastEvents { return readEventsOf(c, false) }

// readEventsOf is readEvents, with the close events too when closes.
func readEventsOf(c *Capture, closes bool) *fastEvents {
	f := &fastEvents{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		var ev Event
		for c.Read(&ev) == nil {
			if ev.Type == EventClose && !closes || ev.Type == EventExec {
				continue // programs started: no connection's
			}
			e := ev
			e.Payload = append([]byte(nil), ev.Payload...)
			f.mu.Lock()
			f.events = append(f.events, e)
			f.mu.Unlock()
		}
	}()
	return f
}

// take returns the events of process pid read so far, after the reader's
// next poll, and forgets every event read. Other tests of the machine may
// be running beside (go test runs packages at once), and this test's
// capture, in the root PID namespace, sees their processes too.
func (f *fastEvents) take(pid int) []Event {
	time.Sleep(3 * maxPoll)
	f.mu.Lock()
	defer f.mu.Unlock()
	var ev []Event
	for _, e := range f.events {
		if int(e.PID) == pid {
			ev = append(ev, e)
		}
	}
	f.events = nil
	return ev
}

// takeAfter is take once n events of process pid have come, or after 5 s:
// for what comes when the kernel gets to it, such as a close that waits
// for the peer's delayed ACK of the FIN (40 ms or more).
func (f *fastEvents) takeAfter(pid, n int) []Event {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(maxPoll) {
		f.mu.Lock()
		got := 0
		for _, e := range f.events {
			if int(e.PID) == pid {
				got++
			}
		}
		f.mu.Unlock()
		if got >= n {
			break
		}
	}
	return f.take(pid)
}

// lossNote says what the kernel lost, for a test's failure: events lost
// to a full ring (the test's capture sees every process of the machine)
// and program runs skipped (a close missed).
func lossNote(c *Capture) string {
	s, err := c.Stats()
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("(kernel: %d events lost, %d runs skipped)", s.Lost, s.RunsSkipped)
}

// expectLines checks the first lines of the events of process pid that
// user space got since the last take: which requests and responses.
func (f *fastEvents) expectLines(t *testing.T, pid int, want ...string) {
	t.Helper()
	var got []string
	for _, ev := range f.take(pid) {
		line, _, _ := strings.Cut(string(ev.Payload), "\r\n")
		got = append(got, line)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("user space got %q, want %q", got, want)
	}
}

// startPythonServer runs script, a neighbour server that prints its port
// first, for the test's life.
func startPythonServer(t *testing.T, script string) (pid, port int) {
	t.Helper()
	cmd := exec.Command(testenv.LookPath(t, "python3"), "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if _, err := fmt.Fscan(bufio.NewReader(out), &port); err != nil {
		t.Fatalf("server port: %v", err)
	}
	return cmd.Process.Pid, port
}

// dial connects to the server on port, for the test's life.
func dial(t *testing.T, port int) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, bufio.NewReader(conn)
}

// exchange writes raw on conn and reads n responses.
func exchange(t *testing.T, conn net.Conn, r *bufio.Reader, raw string, n int) {
	t.Helper()
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	var req *http.Request
	if strings.HasPrefix(raw, "HEAD ") {
		req = &http.Request{Method: "HEAD"}
	}
	readResponses(t, r, req, n)
}

// readResponses reads n responses to req (nil: to a GET) and their bodies.
func readResponses(t *testing.T, r *bufio.Reader, req *http.Request, n int) {
	t.Helper()
	for i := range n {
		resp, err := http.ReadResponse(r, req)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// loadFast loads the capture with the socket hooks and the fast path as
// fast says, for a test that plays the agent; it is closed with the test.
func loadFast(t *testing.T, fast Fast) *Capture {
	t.Helper()
	testenv.Privileged(t)
	if !kernelAtLeast(t, 6, 3) {
		testenv.Skip(t, "the fast path needs the socket tracepoints (Linux 6.3+)")
	}
	fast.HTTP = true
	if fast.Bounds == nil {
		fast.Bounds = testBounds
	}
	c, err := Load(Config{CaptureBytes: 512, Hooks: HooksSocket, Fast: fast}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var testBounds = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// TestFastPath: with the fast path on, the requests of a registered
// method and path with no traceparent, whose body (if any) comes in the
// same read, are counted in the kernel's histogram and never reach user
// space; every other request, and its response, does, whole. The test process plays the agent and the client (both
// excluded); the server is a neighbour.
func TestFastPath(t *testing.T) {
	c := loadFast(t, Fast{})
	if !c.FastPath() {
		t.Fatal("fast path not on")
	}
	events := readEvents(c)
	pid, port := startPythonServer(t, keepAliveServer)
	conn, r := dial(t, port)
	get := func(path, headers string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: x\r\n" + headers + "\r\n"
	}
	seen := func(want ...string) { t.Helper(); events.expectLines(t, pid, want...) }

	// A path the agent has not registered: user space's.
	exchange(t, conn, r, get("/a", ""), 1)
	seen("GET /a HTTP/1.1", "HTTP/1.1 200 OK", "ok")
	for _, p := range []string{"/a", "/slow"} {
		if ok, err := c.AddRoute(uint32(pid), "GET", p, 7); !ok || err != nil {
			t.Fatalf("add route %s: %v %v", p, ok, err)
		}
	}
	for _, m := range []string{"get", "GE", "OPTIONSX", "M-SEARCH"} {
		if ok, _ := c.AddRoute(uint32(pid), m, "/a", 7); ok {
			t.Errorf("a route of method %q was taken", m)
		}
	}

	// Registered: the kernel's, query or not, and nothing reaches user space.
	for i := 0; i < 10; i++ {
		exchange(t, conn, r, get("/a", "User-Agent: t\r\n"), 1)
	}
	exchange(t, conn, r, get("/a?x=1", ""), 1)
	exchange(t, conn, r, get("/slow", ""), 1)
	// A browser's head: lines longer than one step of the scan looks
	// through, one of them longer than many.
	browser := "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
		"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n" +
		"Accept-Language: en-US,en;q=0.5\r\nCookie: " + strings.Repeat("c", 200) + "\r\n" // 428 bytes in all: under the 512 captured
	exchange(t, conn, r, get("/a", browser), 1)
	seen()
	// Not the kernel's: a traceparent, a body, a path not registered, two
	// requests in one read (pipelined), a HEAD of a GET-only route. Each
	// reaches user space whole, with its response.
	exchange(t, conn, r, get("/a", "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"), 1)
	seen("GET /a HTTP/1.1", "HTTP/1.1 200 OK", "ok")
	exchange(t, conn, r, "GET /a HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nHost: x\r\n\r\n", 1)
	seen("GET /a HTTP/1.1", "HTTP/1.1 200 OK", "ok") // the header right after the request line counts too
	exchange(t, conn, r, get("/a", browser+"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"), 1)
	seen("GET /a HTTP/1.1", "HTTP/1.1 200 OK", "ok") // and the last one of a long head
	exchange(t, conn, r, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 1)
	seen("POST /a HTTP/1.1", "HTTP/1.1 200 OK", "posted")
	exchange(t, conn, r, get("/b", ""), 1)
	seen("GET /b HTTP/1.1", "HTTP/1.1 200 OK", "ok")
	exchange(t, conn, r, get("/a", "")+get("/a", ""), 2)
	seen("GET /a HTTP/1.1", "HTTP/1.1 200 OK", "ok", "HTTP/1.1 200 OK", "ok")
	exchange(t, conn, r, "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	seen("HEAD /a HTTP/1.1", "HTTP/1.1 200 OK")
	// And the kernel's again, on the same connection.
	exchange(t, conn, r, get("/a", ""), 1)
	seen()

	// A request with a body, once its method and path are registered: the
	// kernel's when the whole body, of its Content-Length, comes in the
	// same read as the head, and nothing else.
	if ok, err := c.AddRoute(uint32(pid), "POST", "/a", 8); !ok || err != nil {
		t.Fatalf("add route POST /a: %v %v", ok, err)
	}
	post := func(headers, body string) string {
		return "POST /a HTTP/1.1\r\nHost: x\r\n" + headers + "\r\n" + body
	}
	exchange(t, conn, r, post("Content-Type: application/json\r\nContent-Length: 13\r\n", `{"a":"bcdef"}`), 1)
	exchange(t, conn, r, post("content-length:3\r\ncontent-type: text/plain\r\n", "abc"), 1)
	seen()
	io.WriteString(conn, post("Content-Length: 3\r\n", "")) // the body in a read of its own
	time.Sleep(50 * time.Millisecond)
	exchange(t, conn, r, "abc", 1)
	seen("POST /a HTTP/1.1", "abc", "HTTP/1.1 200 OK", "posted")
	exchange(t, conn, r, post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"), 1) // two lengths
	seen("POST /a HTTP/1.1", "HTTP/1.1 200 OK", "posted")
	exchange(t, conn, r, post("Content-Length: 2\r\n", "ab"), 1)
	seen()

	stats, err := c.Stats()
	if err != nil || stats.FastRequests != 17 || stats.FastLost != 0 {
		t.Errorf("stats %+v %v: want 17 fast requests, none lost", stats, err)
	}
	got := map[HistKey]HistValue{}
	if err := c.ReadHistograms(func(k HistKey, v *HistValue) { got[k] = *v }); err != nil {
		t.Fatal(err)
	}
	if v := got[HistKey{PID: uint32(pid), Route: 8, Status: 200, Method: "POST", Version: "1.1"}]; v.Count != 3 {
		t.Errorf("histograms %+v: want 3 POST requests", got)
	}
	delete(got, HistKey{PID: uint32(pid), Route: 8, Status: 200, Method: "POST", Version: "1.1"})
	want := HistKey{PID: uint32(pid), Route: 7, Status: 200, Method: "GET", Version: "1.1"}
	v, ok := got[want]
	if len(got) != 1 || !ok || v.Count != 14 {
		t.Fatalf("histograms %+v: want 14 in %+v", got, want)
	}
	var inBuckets uint64
	for _, n := range v.Buckets {
		inBuckets += n
	}
	// /slow lasted until its body, 40 ms after its head: above 25 ms,
	// not in the bucket its head put it in.
	var above25ms uint64
	for _, n := range v.Buckets[3:] {
		above25ms += n
	}
	if inBuckets != 14 || above25ms < 1 || v.MaxNS < 40e6 || v.SumNS < 40e6 || v.MinNS == 0 {
		t.Errorf("histogram %+v", v)
	}

	if err := c.ForgetProcess(uint32(pid)); err != nil {
		t.Fatal(err)
	}
	got = map[HistKey]HistValue{}
	c.ReadHistograms(func(k HistKey, v *HistValue) { got[k] = *v })
	if len(got) != 0 {
		t.Errorf("histograms after ForgetProcess: %+v", got)
	}
	exchange(t, conn, r, get("/a", ""), 1)
	seen("GET /a HTTP/1.1", "HTTP/1.1 200 OK", "ok")
}

// TestFastPathSampling: the kernel picks a share of the eligible requests
// for spans by drawing their trace IDs; those reach user space with the
// trace ID's low half, which the ratio sampler keeps.
func TestFastPathSampling(t *testing.T) {
	const ratio = 0.25
	c := loadFast(t, Fast{SampleRatio: ratio})
	events := readEvents(c)
	pid, port := startPythonServer(t, keepAliveServer)
	if _, err := c.AddRoute(uint32(pid), "GET", "/a", 1); err != nil {
		t.Fatal(err)
	}
	conn, r := dial(t, port)
	const n = 400
	for i := 0; i < n; i++ {
		exchange(t, conn, r, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	}
	var sampled, responses int
	for _, ev := range events.take(pid) {
		switch {
		case strings.HasPrefix(string(ev.Payload), "GET /a"):
			sampled++
			if ev.TraceLow == 0 || ev.TraceLow>>1 >= uint64(ratio*(1<<63)) {
				t.Errorf("trace low %x: not one the ratio sampler keeps", ev.TraceLow)
			}
		case strings.HasPrefix(string(ev.Payload), "HTTP/1.1 200"):
			responses++
		}
	}
	stats, _ := c.Stats()
	// 100 expected; 60..140 is more than 4 standard deviations (8.7) wide.
	if sampled < 60 || sampled > 140 || responses != sampled || stats.FastRequests != uint64(n-sampled) {
		t.Errorf("%d of %d requests sampled with %d responses, %d fast: want about %d, all the rest fast", sampled, n, responses,
			stats.FastRequests, int(ratio*n))
	}
}

// pythonListener starts a raw server script: a socket s listening on a
// port of the loopback, printed first (startPythonServer reads it).
const pythonListener = `
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
`

// readAheadServer reads two requests before it answers the first, as a
// server does whose client pipelines: per connection, a read, a second
// read, then both responses, in order, one write each.
const readAheadServer = pythonListener + `
while True:
    c, _ = s.accept()
    a = c.recv(4096)
    b = c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB")
    c.recv(4096)
    c.close()
`

// TestFastPathPipelined: a request that arrives while an earlier one
// waits for its response goes to user space with its response, whichever
// of the two the kernel could have taken: user space pairs them.
func TestFastPathPipelined(t *testing.T) {
	c := loadFast(t, Fast{})
	events, pid, port := startFastServer(t, c, readAheadServer)
	for _, first := range []string{"/slow-path", "/fast"} {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		io.WriteString(conn, "GET "+first+" HTTP/1.1\r\nHost: x\r\n\r\n")
		time.Sleep(50 * time.Millisecond) // read on its own
		io.WriteString(conn, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
		readResponses(t, r, nil, 2)
		conn.Close()
		var got []string
		for _, ev := range events.take(pid) {
			got = append(got, string(ev.Payload))
		}
		want := []string{
			"GET " + first + " HTTP/1.1\r\nHost: x\r\n\r\n",
			"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA",
			"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB",
		}
		if first == "/fast" {
			want = []string{want[1], want[3]} // the first exchange is the kernel's, whole
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("first %s: user space got %q, want %q", first, got, want)
		}
	}
	if stats, _ := c.Stats(); stats.FastRequests != 1 {
		t.Errorf("%d requests measured in the kernel, want 1", stats.FastRequests)
	}
}

// readAheadSpliceServer is readAheadServer whose second response is
// spliced from a pipe (counted, not read), and which answers a third
// request after them.
const readAheadSpliceServer = pythonListener + `
import os
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
    r, w = os.pipe()
    os.write(w, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB")
    os.splice(r, c.fileno(), 39)
    c.recv(4096)
    c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    c.recv(4096)
    c.close()
`

// TestFastPathPipelinedCounted: when the response of the request handed to
// user space behind one the kernel took is counted, not read, it goes up
// counted, not taken for more of the kernel's response: user space then
// pairs the next response with the next request.
func TestFastPathPipelinedCounted(t *testing.T) {
	c := loadFast(t, Fast{})
	needSpliceTracepoint(t)
	events, pid, port := startFastServer(t, c, readAheadSpliceServer)
	conn, r := dial(t, port)
	io.WriteString(conn, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // read on its own
	exchange(t, conn, r, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n", 2)
	exchange(t, conn, r, "GET /third HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	conn.Close()
	expectEvents(t, events.take(pid), `32 "GET /other HTTP/1.1\r\nHost: x\r\n\r\n"`, `39 ""`, `32 "GET /third HTTP/1.1\r\nHost: x\r\n\r\n"`, `27 "HTTP/1.1 204 No Content\r\n\r\n"`)
}

// sendingServer reads the next request while it still writes the
// response before it (Node.js and aiohttp do): the second request comes
// between the first response's two writes.
const sendingServer = pythonListener + `
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nbig")
    c.recv(4096)
    c.sendall(b"gie")
    c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    c.recv(4096)
    c.close()
`

// TestFastPathReadWhileSending: a request the kernel takes while the
// response before it, which user space has, is still going out leaves the
// rest of that response to user space; its own response is the next
// status line.
func TestFastPathReadWhileSending(t *testing.T) {
	c := loadFast(t, Fast{})
	events, pid, port := startFastServer(t, c, sendingServer)
	conn, r := dial(t, port)
	io.WriteString(conn, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // the first part is out
	io.WriteString(conn, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	for _, want := range []int{200, 204} {
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("status %d, want %d", resp.StatusCode, want)
		}
	}
	conn.Close()
	var got []string
	for _, ev := range events.take(pid) {
		got = append(got, string(ev.Payload))
	}
	want := []string{"GET /big HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nbig", "gie"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("user space got %q, want %q", got, want)
	}
	var statuses []int
	if err := c.ReadHistograms(func(k HistKey, v *HistValue) { statuses = append(statuses, k.Status) }); err != nil {
		t.Fatal(err)
	}
	if stats, _ := c.Stats(); stats.FastRequests != 1 || len(statuses) != 1 || statuses[0] != 204 {
		t.Errorf("%d requests measured in the kernel, series of statuses %v: want 1, [204]", stats.FastRequests, statuses)
	}
}

// fastServer answers /fast with answer(c), a Python function it defines
// for the connection c, anything else with a 404.
func fastServer(answer string) string {
	return pythonListener + "import os\n" + answer + `
while True:
    c, _ = s.accept()
    while True:
        d = c.recv(4096)
        if not d:
            break
        if d.split(b" ")[1] == b"/fast":
            answer(c)
        else:
            c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx")
    c.close()
`
}

// vecServer answers /fast with one writev of the vectors VECS.
var vecServer = fastServer(`
def answer(c):
    os.writev(c.fileno(), VECS)
`)

// startFastServer reads c's events, starts server (a Python script that
// prints its port) and registers its GET /fast for the fast path.
func startFastServer(t *testing.T, c *Capture, server string) (events *fastEvents, pid, port int) {
	t.Helper()
	events = readEvents(c)
	pid, port = startPythonServer(t, server)
	if _, err := c.AddRoute(uint32(pid), "GET", "/fast", 1); err != nil {
		t.Fatal(err)
	}
	return events, pid, port
}

// fastThenOther starts server (a pythonListener script), registers its
// GET /fast, sends /fast then /other on one connection, and returns the
// events user space got of the server and the statuses of the kernel's
// histogram series.
func fastThenOther(t *testing.T, c *Capture, server string) ([]Event, []int) {
	t.Helper()
	events, pid, port := startFastServer(t, c, server)
	conn, r := dial(t, port)
	for _, p := range []string{"/fast", "/other"} {
		exchange(t, conn, r, "GET "+p+" HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	}
	conn.Close()
	got := events.take(pid)
	var statuses []int
	if err := c.ReadHistograms(func(k HistKey, v *HistValue) { statuses = append(statuses, k.Status) }); err != nil {
		t.Fatal(err)
	}
	return got, statuses
}

// TestFastPathTwoVectors: the response to a request the kernel took, in
// two vectors of one writev, is measured whether its status line is all
// in the first (nginx: the head, then the body) or not (an empty first
// vector, a line split between them), and what follows stays in step.
func TestFastPathTwoVectors(t *testing.T) {
	for _, tc := range []struct{ name, vecs string }{
		{"head and body", `[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"]`},
		{"empty first", `[b"", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]`},
		{"line split", `[b"HTTP/1.1", b" 200 OK\r\nContent-Length: 2\r\n\r\nok"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events, statuses := fastThenOther(t, loadFast(t, Fast{}), strings.Replace(vecServer, "VECS", tc.vecs, 1))
			var got []string
			for _, ev := range events {
				got = append(got, string(ev.Payload))
			}
			want := []string{"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx"}
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("user space got %q, want %q", got, want)
			}
			if len(statuses) != 1 || statuses[0] != 200 {
				t.Errorf("histogram series of statuses %v, want [200]", statuses)
			}
		})
	}
}

// spliceServer answers /fast with a splice from a pipe, which the kernel
// counts but cannot read.
var spliceServer = fastServer(`
def answer(c):
    r, w = os.pipe()
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    os.write(w, resp)
    os.splice(r, c.fileno(), len(resp))
    os.close(r); os.close(w)
`)

// TestFastPathCountedResponse: the response to a request the kernel took
// that it can count but not read (a splice) gives the exchange up, and the
// fast path on its connection: the next response is not counted for it.
func TestFastPathCountedResponse(t *testing.T) {
	c := loadFast(t, Fast{})
	needSpliceTracepoint(t)
	events, statuses := fastThenOther(t, c, spliceServer)
	expectEvents(t, events, `40 ""`, `32 "GET /other HTTP/1.1\r\nHost: x\r\n\r\n"`, `46 "HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx"`)
	if len(statuses) != 0 {
		t.Errorf("histogram series of statuses %v, want none", statuses)
	}
}

// TestFastPathSpaceInTarget: a request whose target has a space before
// the version's is user space's, which reads the path as "/fast x", not
// as /fast; a space in the query is the query's.
func TestFastPathSpaceInTarget(t *testing.T) {
	c := loadFast(t, Fast{})
	events, pid, port := startFastServer(t, c, strings.Replace(vecServer, "VECS", `[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"]`, 1))
	conn, r := dial(t, port)
	exchange(t, conn, r, "GET /fast x HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	exchange(t, conn, r, "GET /fast?q=a b HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	conn.Close()
	var got []string
	for _, ev := range events.take(pid) {
		got = append(got, string(ev.Payload))
	}
	want := []string{"GET /fast x HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("user space got %q, want %q", got, want)
	}
	if stats, _ := c.Stats(); stats.FastRequests != 1 {
		t.Errorf("%d requests measured in the kernel, want 1 (the query's)", stats.FastRequests)
	}
}

// TestFastPathRoom: the kernel takes no request once its histograms may
// be full, so that no series is refused and its requests lost: they go to
// user space instead.
func TestFastPathRoom(t *testing.T) {
	const maxSeries = 16 // room for 14: an eighth is kept
	c := loadFast(t, Fast{MaxSeries: maxSeries})
	events := readEvents(c)
	pid, port := startPythonServer(t, keepAliveServer)
	conn, r := dial(t, port)
	var userSpace []string
	for i := range 20 {
		path := fmt.Sprintf("/p%d", i)
		if _, err := c.AddRoute(uint32(pid), "GET", path, uint32(i)); err != nil {
			t.Fatal(err)
		}
		exchange(t, conn, r, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n", 1)
		if err := c.ReadHistograms(func(HistKey, *HistValue) {}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ev := range events.take(pid) {
		if line, _, _ := strings.Cut(string(ev.Payload), "\r\n"); strings.HasPrefix(line, "GET ") {
			userSpace = append(userSpace, line)
		}
	}
	stats, _ := c.Stats()
	want := []string{"GET /p14 HTTP/1.1", "GET /p15 HTTP/1.1", "GET /p16 HTTP/1.1", "GET /p17 HTTP/1.1", "GET /p18 HTTP/1.1", "GET /p19 HTTP/1.1"}
	if stats.FastRequests != 14 || stats.FastLost != 0 || strings.Join(userSpace, "|") != strings.Join(want, "|") {
		t.Errorf("%d in the kernel, %d lost, user space got %q: want 14, none, %q", stats.FastRequests, stats.FastLost, userSpace, want)
	}
}

// byteFirstServer reads each request's first byte alone, then the rest,
// as Go's server does when the next request comes before it cancels its
// one-byte background read.
const byteFirstServer = pythonListener + `
while True:
    c, _ = s.accept()
    while True:
        if not c.recv(1):
            break
        c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.close()
`

// TestFastPathHeldByte: a request whose first byte was read alone is still
// the kernel's when the rest qualifies; when it does not, user space gets
// the byte and then the rest, in order, with the response.
func TestFastPathHeldByte(t *testing.T) {
	c := loadFast(t, Fast{})
	events := readEvents(c)
	pid, port := startPythonServer(t, byteFirstServer)
	conn, r := dial(t, port)
	seen := func(want ...string) { t.Helper(); events.expectLines(t, pid, want...) }
	get := "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
	exchange(t, conn, r, get, 1)
	seen("G", "ET /a HTTP/1.1", "HTTP/1.1 200 OK")
	if _, err := c.AddRoute(uint32(pid), "GET", "/a", 1); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		exchange(t, conn, r, get, 1)
	}
	seen()
	exchange(t, conn, r, "GET /a HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n", 1)
	seen("G", "ET /a HTTP/1.1", "HTTP/1.1 200 OK")
	exchange(t, conn, r, "POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1)
	seen("P", "OST /a HTTP/1.1", "HTTP/1.1 200 OK")
	exchange(t, conn, r, get, 1)
	seen()
	// A POST once registered: its 'P' is held the same way.
	if _, err := c.AddRoute(uint32(pid), "POST", "/a", 1); err != nil {
		t.Fatal(err)
	}
	exchange(t, conn, r, "POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1)
	seen()
	if stats, _ := c.Stats(); stats.FastRequests != 7 {
		t.Errorf("%d requests measured in the kernel, want 7", stats.FastRequests)
	}

	// A byte held when the connection closes reaches user space before
	// the close.
	pid, port = startPythonServer(t, pythonListener+`
while True:
    c, _ = s.accept()
    c.recv(1)
    c.close()
`)
	conn, _ = dial(t, port)
	io.WriteString(conn, "G")
	time.Sleep(100 * time.Millisecond)
	conn.Close()
	events.expectLines(t, pid, "G")
}

// TestFastPathHeldByteHTTP2: a byte held on an accepted socket that then
// sends an HTTP/2 client preface (a tunnel whose roles are reversed) is
// not lost when the fast path turns off for HTTP/2: it goes up before the
// rest of its direction's bytes.
func TestFastPathHeldByteHTTP2(t *testing.T) {
	c := loadFast(t, Fast{})
	events := readEvents(c)
	pid, port := startPythonServer(t, pythonListener+`
import socket
while True:
    c, _ = s.accept()
    c.recv(1)
    c.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    c.recv(27, socket.MSG_WAITALL)
    c.close()
`)
	conn, r := dialDeadline(t, port)
	io.WriteString(conn, "G")
	if _, err := io.ReadFull(r, make([]byte, 24)); err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "ET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	r.ReadByte() // the close
	events.expectLines(t, pid, "PRI * HTTP/2.0", "G", "ET /a HTTP/1.1")
}

// TestVerifierHeadroom: the socket programs, with the fast path, the
// kernel's spans, the Redis drop and the HTTP/2 frame walk on, stay well
// inside the verifier's budget of a million instructions processed. Near
// it, a small change or another kernel's verifier refuses them, and the
// agent falls back to less (the loader retries without the Redis drop,
// the spans, the fast path, the walk, then the syscall hooks): this fails
// first, with the figures. The vectored copies are global functions,
// checked once, and the head scan and the walk work on map values, whose
// fields the verifier does not follow: 318k and 273k on 6.18 (185k and
// 107k before the walk; 766k and 641k before the map values). It logs
// each program's stack depth too: the walk's calls need most of the 512
// bytes a program has.
func TestVerifierHeadroom(t *testing.T) {
	testenv.Privileged(t)
	if !kernelAtLeast(t, 6, 3) {
		testenv.Skip(t, "the socket programs need the socket tracepoints (Linux 6.3+)")
	}
	spec, err := loadCapture()
	if err != nil {
		t.Fatal(err)
	}
	if err := (Fast{HTTP: true, Spans: true, Redis: true, RedisSpans: true, SampleRatio: 0.1, Bounds: testBounds}).set(spec); err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for _, name := range []string{"sock_recv_length", "sock_send_length"} {
		m := regexp.MustCompile(`processed (\d+) insns`).FindStringSubmatch(coll.Programs[name].VerifierLog)
		if m == nil {
			t.Fatalf("%s: no statistics in the verifier's log:\n%s", name, coll.Programs[name].VerifierLog)
		}
		n, _ := strconv.Atoi(m[1])
		stack := regexp.MustCompile(`stack depth ([0-9+]+)`).FindStringSubmatch(coll.Programs[name].VerifierLog)
		t.Logf("%s: %d instructions processed, stack depth of its functions %v", name, n, stack[1:])
		if n > 500_000 {
			t.Errorf("%s: %d of the verifier's 1 000 000 instructions: too little headroom", name, n)
		}
	}
}

// FastMethod, methodWord and methodName agree with fast_method in
// capture.c: 3 to 7 upper-case letters, their bytes in order in a
// little-endian word.
func TestMethodWord(t *testing.T) {
	for m, ok := range map[string]bool{"GET": true, "HEAD": true, "OPTIONS": true, "DELETE": true, "GE": false,
		"get": false, "CONNECTS": false, "M-SEARCH": false, "": false} {
		if FastMethod(m) != ok {
			t.Errorf("FastMethod(%q) = %v", m, !ok)
		}
		if ok && methodName(methodWord(m)) != m {
			t.Errorf("%q: word %x names %q", m, methodWord(m), methodName(methodWord(m)))
		}
	}
	// "GET " as the kernel loads it: the first 8 bytes of the payload,
	// little-endian, masked to the name.
	if w := methodWord("GET"); w != 0x544547 {
		t.Errorf("GET is %x, want 0x544547", w)
	}
}

// earlyByteServer reads a request, then the next request's first byte
// before it answers the first (as Go's background read can, on loopback,
// before the answer's send is seen in the kernel), then the rest.
// Its reads are of exact lengths (the test's requests are 28 bytes), so
// that requests that come together (a slow machine) are read the same way.
const earlyByteServer = pythonListener + `
import socket
while True:
    c, _ = s.accept()
    c.recv(28, socket.MSG_WAITALL)
    while True:
        if not c.recv(1):
            break
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        c.recv(27, socket.MSG_WAITALL)
    c.close()
`

// TestFastPathEarlyByte: the next request's first byte read before the
// kernel's exchange is answered is held, not taken for pipelining that
// ends the fast path: the exchange is the kernel's, and so are the
// requests after it.
func TestFastPathEarlyByte(t *testing.T) {
	c := loadFast(t, Fast{})
	events, pid, conn, r := earlyByteConn(t, c, earlyByteServer)
	for range 4 {
		exchange(t, conn, r, earlyByteGet, 1) // its first byte read before the answer to the one before
	}
	events.expectLines(t, pid)
	// All five, the last taken but not yet answered.
	if stats, _ := c.Stats(); stats.FastRequests != 5 {
		t.Errorf("%d requests measured in the kernel, want 5", stats.FastRequests)
	}
}

// earlyByteSpliceServer is earlyByteServer whose first answer is spliced
// from a pipe: counted, not read.
const earlyByteSpliceServer = pythonListener + `
import os, socket
while True:
    c, _ = s.accept()
    c.recv(28, socket.MSG_WAITALL)
    c.recv(1)
    r, w = os.pipe()
    os.write(w, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    os.splice(r, c.fileno(), 40)
    c.recv(27, socket.MSG_WAITALL)
    c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    c.recv(1)
    c.close()
`

// TestFastPathEarlyByteCounted: when the answer that a held byte waits
// for is counted, not read, the kernel gives its exchange up, and the
// held byte still reaches user space before the rest of its request.
func TestFastPathEarlyByteCounted(t *testing.T) {
	c := loadFast(t, Fast{})
	needSpliceTracepoint(t)
	events, pid, conn, r := earlyByteConn(t, c, earlyByteSpliceServer)
	exchange(t, conn, r, earlyByteGet, 1) // its first byte read before the spliced answer
	readResponses(t, r, nil, 1)
	conn.Close()
	expectEvents(t, events.take(pid), `40 ""`, `1 "G"`, `27 "ET /a HTTP/1.1\r\nHost: x\r\n\r\n"`, `27 "HTTP/1.1 204 No Content\r\n\r\n"`)
}

// TestFastPathEarlyByteMidResponse: a first byte read alone between two
// sends of a response the kernel measures is held, and the second send is
// still that response's: nothing reaches user space, and both requests
// are measured. (The byte used to end the exchange, and the response's
// last bytes went up as a response of their own.)
func TestFastPathEarlyByteMidResponse(t *testing.T) {
	c := loadFast(t, Fast{})
	events, pid, conn, r := earlyByteConn(t, c, earlyByteSplitServer)
	const post = "POST /b HTTP/1.1\r\nHost: x\r\n\r\n"
	if _, err := c.AddRoute(uint32(pid), "POST", "/b", 2); err != nil {
		t.Fatal(err)
	}
	const head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
	buf := make([]byte, len(head))
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != head {
		t.Fatalf("first send: %q, %v", buf, err)
	}
	io.WriteString(conn, post[:1])
	time.Sleep(50 * time.Millisecond) // read alone, between the two sends
	if _, err := io.ReadFull(r, buf[:2]); err != nil || string(buf[:2]) != "ok" {
		t.Fatalf("second send: %q, %v", buf[:2], err)
	}
	io.WriteString(conn, post[1:])
	events.expectLines(t, pid)
	if stats, _ := c.Stats(); stats.FastRequests != 2 {
		t.Errorf("%d requests measured in the kernel, want 2", stats.FastRequests)
	}
}

// earlyByteGet is the request the early-byte servers read, by its length.
const earlyByteGet = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"

// earlyByteConn reads c's events, starts server (earlyByteServer or its
// kin) with its GET /a registered, and sends it a first request, read
// alone. The connection has a deadline: a failure, not a hang.
func earlyByteConn(t *testing.T, c *Capture, server string) (*fastEvents, int, net.Conn, *bufio.Reader) {
	t.Helper()
	if len(earlyByteGet) != 28 {
		t.Fatalf("the server reads 28-byte requests, not %d", len(earlyByteGet))
	}
	events := readEvents(c)
	pid, port := startPythonServer(t, server)
	if _, err := c.AddRoute(uint32(pid), "GET", "/a", 1); err != nil {
		t.Fatal(err)
	}
	conn, r := earlyByteDial(t, port)
	return events, pid, conn, r
}

// earlyByteDial connects to port and sends a first request, read alone.
// The connection has a deadline: a failure, not a hang.
func earlyByteDial(t *testing.T, port int) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, r := dialDeadline(t, port)
	io.WriteString(conn, earlyByteGet)
	time.Sleep(50 * time.Millisecond)
	return conn, r
}

// dialDeadline is dial, with a deadline on the connection: a test that
// waits for the server fails rather than hangs.
func dialDeadline(t *testing.T, port int) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, r := dial(t, port)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, r
}

// expectEvents checks the lengths and captured bytes of events, as
// `len "payload"` (a counted event: `len ""`).
func expectEvents(t *testing.T, events []Event, want ...string) {
	t.Helper()
	var got []string
	for _, ev := range events {
		got = append(got, fmt.Sprintf("%d %q", ev.Len, ev.Payload))
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("user space got %q, want %q", got, want)
	}
}

// needSpliceTracepoint skips where a splice into a socket is not seen by
// the socket hooks.
func needSpliceTracepoint(t *testing.T) {
	t.Helper()
	if !kernelAtLeast(t, 6, 5) {
		testenv.Skip(t, "a splice into a socket passes sock_sendmsg's tracepoint from Linux 6.5")
	}
}

// continueServer reads a request that expects 100 Continue, answers with
// it, reads the one-byte body alone, then answers, and reads the next
// request whole.
const continueServer = pythonListener + `
import socket
while True:
    c, _ = s.accept()
    c.recv(len(b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"), socket.MSG_WAITALL)
    c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    c.recv(1)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.recv(28, socket.MSG_WAITALL)
    c.close()
`

// TestFastPathContinueBody: an interim response does not end the request
// user space has, so its body's first byte, read alone after it ("P"), is
// sent as the body it is, before the final response; held, it went up
// after that response and made the next request "PGET".
func TestFastPathContinueBody(t *testing.T) {
	c := loadFast(t, Fast{})
	events := readEvents(c)
	pid, port := startPythonServer(t, continueServer)
	conn, r := dialDeadline(t, port)
	io.WriteString(conn, "POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
	if line, err := r.ReadString('\n'); err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("%q, %v", line, err)
	}
	r.ReadString('\n')
	io.WriteString(conn, "P")
	readResponses(t, r, nil, 1)
	io.WriteString(conn, earlyByteGet)
	time.Sleep(50 * time.Millisecond)
	events.expectLines(t, pid, "POST /a HTTP/1.1", "HTTP/1.1 100 Continue", "P", "HTTP/1.1 200 OK", "GET /a HTTP/1.1")
}
