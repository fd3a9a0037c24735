package tracer

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/pod"
)

type allProcesses struct{}

func (allProcesses) Lookup(pid uint32, comm string) *pod.Process {
	return &pod.Process{PID: int(pid), Name: comm}
}

// harness feeds a tracer with synthetic capture events, as the kernel would
// send them with a capture prefix of `capture` bytes.
type harness struct {
	t       *testing.T
	tracer  *Tracer
	got     []*Request
	now     uint64
	capture int
	// countEvery, when not 0, makes every countEvery-th piece that piece
	// sends counted, not read (bpf: io_uring, splice).
	countEvery int
	pieces     int
}

func newHarness(t *testing.T, capture int) *harness {
	h := &harness{t: t, now: 1_000_000_000, capture: capture}
	wall := func(ns uint64) time.Time { return time.Unix(0, int64(ns)) }
	h.tracer = New(Config{RouteHeuristic: true}, allProcesses{}, wall, func(r *Request) { h.got = append(h.got, r) })
	return h
}

var (
	serverAddr = netip.MustParseAddrPort("10.0.0.1:8080")
	clientAddr = netip.MustParseAddrPort("10.0.0.2:40000")
)

// send delivers one syscall's bytes on connection sock of pid 7, seen from
// the server side (local = server).
func (h *harness) send(sock uint64, dir bpf.Direction, data string) {
	h.sendKernel(sock, dir, data, 0, 0)
}

// idleFor lets d go by, 10 s at a time, with an exchange on another
// connection, sock, at each step: its events drive the idle sweep while
// the connections under test say nothing.
func (h *harness) idleFor(d time.Duration, sock uint64, dir bpf.Direction, request, response string) {
	for range d / (10 * time.Second) {
		h.now += uint64(10 * time.Second)
		h.send(sock, dir, request)
		h.send(sock, 1-dir, response)
	}
}

// sendKernel is send with what the kernel adds: its draw of the trace
// ID's low half, and what it left out before the event.
func (h *harness) sendKernel(sock uint64, dir bpf.Direction, data string, traceLow uint64, flags bpf.EventFlags) {
	ev := h.dataEvent(sock, dir, data)
	ev.TraceLow, ev.Flags = traceLow, flags
	h.tracer.Handle(&ev)
}

// dataEvent is the event of one syscall that moved data, with its prefix
// and tail as the kernel captures them.
func (h *harness) dataEvent(sock uint64, dir bpf.Direction, data string) bpf.Event {
	h.now += 1000
	ev := bpf.Event{Type: bpf.EventData, Dir: dir, EnterNS: h.now, ExitNS: h.now + 500, Conn: sock, PID: 7, Len: uint32(len(data)), Local: serverAddr, Remote: clientAddr}
	copy(ev.Comm[:], "server")
	ev.Payload = []byte(data[:min(len(data), h.capture)])
	if len(data) > h.capture {
		ev.Tail = []byte(data[max(0, len(data)-16):])
	}
	h.now += 500
	return ev
}

func (h *harness) close(sock uint64) {
	h.now += 1000
	h.tracer.Handle(&bpf.Event{Type: bpf.EventClose, ExitNS: h.now, Conn: sock, PID: 7})
}

const (
	in  = bpf.Ingress
	out = bpf.Egress
)

func TestKeepAliveServer(t *testing.T) {
	h := newHarness(t, 512)
	for i := range 3 {
		h.send(1, in, fmt.Sprintf("GET /users/%d?x=1 HTTP/1.1\r\nHost: shop:8080\r\nUser-Agent: curl/8\r\n\r\n", i+40))
		h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
	}
	if len(h.got) != 3 {
		t.Fatalf("got %d requests, want 3", len(h.got))
	}
	r := h.got[2]
	if r.Role != RoleServer || r.Method != "GET" || r.Path != "/users/42" || r.Query != "x=1" || r.StatusCode != 200 ||
		r.Host != "shop" || r.HostPort != 8080 || r.Route != "/users/{id}" || r.UserAgent != "curl/8" || r.ProtocolVersion != "1.1" || r.ResponseSize != 5 {
		t.Errorf("request = %+v", r)
	}
	if !r.End.After(r.Start) {
		t.Errorf("end %v not after start %v", r.End, r.Start)
	}
	if r.ServerAddr() != serverAddr || r.ClientAddr() != clientAddr {
		t.Errorf("server %v client %v", r.ServerAddr(), r.ClientAddr())
	}
}

// TestTLSPlaintext: a TLS connection's handshake (bpf.EventTLS) is no
// request, and its plaintext (bpf.FlagPlaintext) is parsed as any
// connection's bytes, its requests marked TLS; a plain one's are not.
func TestTLSPlaintext(t *testing.T) {
	h := newHarness(t, 512)
	h.tracer.Handle(&bpf.Event{Type: bpf.EventTLS, ExitNS: h.now, Conn: 1, PID: 7, Local: serverAddr, Remote: clientAddr})
	h.sendKernel(1, in, "GET /secure HTTP/1.1\r\nHost: shop\r\n\r\n", 0, bpf.FlagPlaintext)
	h.sendKernel(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, bpf.FlagPlaintext)
	h.send(2, in, "GET /plain HTTP/1.1\r\nHost: shop\r\n\r\n")
	h.send(2, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 2 {
		t.Fatalf("got %d requests, want 2", len(h.got))
	}
	if r := h.got[0]; r.Path != "/secure" || !r.TLS || r.StatusCode != 200 {
		t.Errorf("TLS request = %+v", r)
	}
	if r := h.got[1]; r.Path != "/plain" || r.TLS {
		t.Errorf("plain request = %+v", r)
	}
}

// TestTLSPlaintextLost: plaintext the uprobes could not read (bpf.FlagLost
// with bpf.FlagPlaintext, no bytes) starts the connection's parser
// afresh: a client whose response to /a was not read does not pair the
// response to /b with /a.
func TestTLSPlaintextLost(t *testing.T) {
	h := newHarness(t, 512)
	plain := func(dir bpf.Direction, data string, flags bpf.EventFlags) {
		h.sendKernel(1, dir, data, 0, bpf.FlagPlaintext|flags)
	}
	plain(out, "GET /a HTTP/1.1\r\nHost: shop\r\n\r\n", 0)
	plain(in, "", bpf.FlagLost) // /a's response, read by a call the uprobes missed
	plain(out, "GET /b HTTP/1.1\r\nHost: shop\r\n\r\n", 0)
	plain(in, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 0)
	plain(out, "GET /c HTTP/1.1\r\nHost: shop\r\n\r\n", 0)
	plain(in, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0)
	var got []string
	for _, r := range h.got {
		got = append(got, fmt.Sprintf("%s %d", r.Path, r.StatusCode))
	}
	if want := []string{"/b 404", "/c 200"}; !slices.Equal(got, want) {
		t.Errorf("requests %q, want %q", got, want)
	}
}

// TestCloseLost: a connection whose close never came is over when another
// one's events come on its socket memory (other ends): the new one is
// parsed afresh, not as the old one's (here TLS) stream.
func TestCloseLost(t *testing.T) {
	h := newHarness(t, 512)
	h.sendKernel(1, in, "GET /tls HTTP/1.1\r\nHost: shop\r\n\r\n", 0, bpf.FlagPlaintext)
	h.sendKernel(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, bpf.FlagPlaintext)
	for _, x := range []struct {
		dir  bpf.Direction
		data string
	}{{in, "GET /plain HTTP/1.1\r\nHost: shop\r\n\r\n"}, {out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"}} {
		ev := h.dataEvent(1, x.dir, x.data)
		ev.Remote = netip.MustParseAddrPort("10.0.0.3:41000")
		h.tracer.Handle(&ev)
	}
	if len(h.got) != 2 || h.got[1].Path != "/plain" || h.got[1].StatusCode != 404 || h.got[1].TLS {
		t.Errorf("requests %q, want /tls, then /plain 404 without TLS", describeAll(h.got))
	}
}

func TestByteAtATime(t *testing.T) {
	h := newHarness(t, 512)
	req := "POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
	for i := range len(req) {
		h.send(1, in, req[i:i+1])
	}
	resp := "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
	for i := range len(resp) {
		if len(h.got) != 0 {
			t.Fatalf("request finished early, at response byte %d", i)
		}
		h.send(1, out, resp[i:i+1])
	}
	if len(h.got) != 1 {
		t.Fatalf("got %d requests, want 1", len(h.got))
	}
	if r := h.got[0]; r.Method != "POST" || r.StatusCode != 201 || r.RequestSize != 11 || r.ResponseSize != 11 {
		t.Errorf("request = %+v", r)
	}
}

func TestPipelining(t *testing.T) {
	h := newHarness(t, 1024)
	h.send(1, in, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nHEAD /c HTTP/1.1\r\nHost: x\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") // HEAD: no body follows
	h.send(1, in, "GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
	h.send(1, out, "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
	var got []string
	for _, r := range h.got {
		got = append(got, fmt.Sprintf("%s %s %d", r.Method, r.Path, r.StatusCode))
	}
	want := "GET /a 200,GET /b 404,HEAD /c 200,GET /d 500"
	if strings.Join(got, ",") != want {
		t.Errorf("got %q, want %q", strings.Join(got, ","), want)
	}
}

// Bodies far larger than the capture prefix: the tracer counts the bytes
// it cannot see and stays in step.
func TestLargeBodiesBeyondCapture(t *testing.T) {
	h := newHarness(t, 64)
	body := strings.Repeat("x", 100_000)
	h.send(1, in, "PUT /blob HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
	h.send(1, in, body[:60_000])
	h.send(1, in, body[60_000:])
	h.send(1, out, "HTTP/1.1 204 No Content\r\n\r\n")
	// A chunked response in big writes whose chunk headers are not captured.
	h.send(1, in, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
	h.send(1, out, "2000\r\n"+strings.Repeat("y", 0x2000)+"\r\n")
	h.send(1, out, strings.Repeat("z", 5000)) // a chunk boundary lands where nothing was captured
	h.send(1, out, "3\r\nabc\r\n")
	if len(h.got) != 1 {
		t.Fatalf("chunked response ended early: %d requests", len(h.got))
	}
	h.send(1, out, strings.Repeat("q", 300)+"\r\n0\r\n\r\n")
	h.send(1, in, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 3 {
		t.Fatalf("got %d requests, want 3", len(h.got))
	}
	if r := h.got[0]; r.Method != "PUT" || r.RequestSize != 100_000 || r.StatusCode != 204 {
		t.Errorf("put = %+v", r)
	}
	if r := h.got[1]; r.Path != "/stream" || r.StatusCode != 200 {
		t.Errorf("stream = %+v", r)
	}
	if r := h.got[2]; r.Path != "/next" {
		t.Errorf("next = %+v", r)
	}
}

// A request head longer than the capture prefix still yields its method
// and path, and a truncated flag.
func TestHeadLongerThanCapture(t *testing.T) {
	h := newHarness(t, 64)
	h.send(1, in, "GET /long/path/"+strings.Repeat("a", 30)+" HTTP/1.1\r\nHost: x\r\nCookie: "+strings.Repeat("c", 500)+"\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	h.send(1, in, "GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	if len(h.got) != 2 {
		t.Fatalf("got %d requests, want 2", len(h.got))
	}
	if r := h.got[0]; !r.Truncated || !strings.HasPrefix(r.Path, "/long/path/") || r.StatusCode != 200 {
		t.Errorf("request = %+v", r)
	}
	if r := h.got[1]; r.Truncated || r.Path != "/again" {
		t.Errorf("request = %+v", r)
	}
}

func TestContinue(t *testing.T) {
	h := newHarness(t, 512)
	h.send(1, in, "POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	h.send(1, out, "HTTP/1.1 100 Continue\r\n\r\n")
	h.send(1, in, "data")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 1 || h.got[0].StatusCode != 200 || h.got[0].RequestSize != 4 {
		t.Fatalf("got %+v", h.got)
	}
}

func TestClosedMidRequest(t *testing.T) {
	h := newHarness(t, 512)
	h.send(1, in, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
	h.close(1)
	h.send(2, in, "GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
	h.close(2)
	if len(h.got) != 0 {
		t.Fatalf("spans invented for unanswered requests: %+v", h.got)
	}
	if n := h.tracer.Stats().Connections; n != 0 {
		t.Errorf("%d connections left after close", n)
	}
}

func TestBodyUntilClose(t *testing.T) {
	h := newHarness(t, 512)
	h.send(1, in, "GET / HTTP/1.0\r\n\r\n")
	h.send(1, out, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
	h.send(1, out, "body that runs until close")
	if len(h.got) != 0 {
		t.Fatal("finished before close")
	}
	h.close(1)
	if len(h.got) != 1 || h.got[0].ResponseSize != 26 || h.got[0].ProtocolVersion != "1.0" {
		t.Fatalf("got %+v", h.got)
	}
}

func TestClientAndTraceparent(t *testing.T) {
	h := newHarness(t, 512)
	h.send(1, out, "GET http://api:9000/v1/items/abc123def456?q=1 HTTP/1.1\r\nHost: api:9000\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
	h.send(1, in, "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 1 {
		t.Fatalf("got %d requests", len(h.got))
	}
	r := h.got[0]
	if r.Role != RoleClient || r.Path != "/v1/items/abc123def456" || r.Host != "api" || r.HostPort != 9000 || r.StatusCode != 503 || r.Route != "/v1/items/{id}" {
		t.Errorf("request = %+v", r)
	}
	if r.Parent.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" || r.Parent.SpanID().String() != "b7ad6b7169203331" || !r.Parent.IsSampled() || !r.Parent.IsRemote() {
		t.Errorf("parent = %+v", r.Parent)
	}
	if r.ServerAddr() != clientAddr {
		t.Errorf("client span's server end = %v", r.ServerAddr())
	}
}

// interleave sends two byte streams on connection sock by turns, each in
// pieces of its step (0: all at once), as a conversation split across
// many syscalls; after each turn it calls each, if not nil.
func (h *harness) interleave(sock uint64, aDir bpf.Direction, a []byte, aStep int, bDir bpf.Direction, b []byte, bStep int, each func()) {
	piece := func(dir bpf.Direction, data *[]byte, step int) {
		n := len(*data)
		if step > 0 {
			n = min(step, n)
		}
		if n > 0 {
			h.piece(sock, dir, string((*data)[:n]))
			*data = (*data)[n:]
		}
	}
	for len(a) > 0 || len(b) > 0 {
		piece(aDir, &a, aStep)
		piece(bDir, &b, bStep)
		if each != nil {
			each()
		}
	}
}

// A connection that was open before the agent started: the first bytes
// seen are mid-body. The tracer resyncs at the next message.
func TestJoinMidStream(t *testing.T) {
	h := newHarness(t, 512)
	h.send(1, in, "tail of some body that began before we looked")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	h.send(1, in, "GET /fresh HTTP/1.1\r\nHost: x\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 1 || h.got[0].Path != "/fresh" {
		t.Fatalf("got %+v", h.got)
	}
}

// Bytes that are not HTTP never become HTTP requests: a Redis PING is left
// to the Redis parser, a TLS ClientHello to nobody.
func TestNotHTTP(t *testing.T) {
	h := newHarness(t, 512)
	h.send(1, out, "*1\r\n$4\r\nPING\r\n")
	h.send(1, in, "+PONG\r\n")
	h.send(2, in, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
	if len(h.got) != 1 || h.got[0].Protocol != ProtoRedis || h.got[0].DBOperation != "PING" {
		for _, r := range h.got {
			t.Errorf("got %+v", r)
		}
		t.Fatal("want exactly the Redis PING")
	}
}

func TestUpgrade(t *testing.T) {
	h := newHarness(t, 512)
	h.send(1, in, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	h.send(1, out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
	h.send(1, out, "\x81\x05hello")
	h.send(1, in, "\x81\x85GET / HTTP/1.1")
	if len(h.got) != 1 || h.got[0].StatusCode != 101 {
		t.Fatalf("got %+v", h.got)
	}
}

func TestHeuristicRoute(t *testing.T) {
	for path, want := range map[string]string{
		"/":                  "/",
		"/health":            "/health",
		"/users/42":          "/users/{id}",
		"/users/42/orders/7": "/users/{id}/orders/{id}",
		"/items/550e8400-e29b-41d4-a716-446655440000": "/items/{id}",
		"/static/app.js":       "/static/app.js",
		"/a/b/c/d/e/f/g/h/i/j": "/a/b/c/d/e/f/g/h/*",
		"/a/b/c/d/e/f/g/h":     "/a/b/c/d/e/f/g/h",
		"/a/b/c/d/e/f/g/h/":    "/a/b/c/d/e/f/g/h/*",
		"/a/b/c/d/e/f/g/42":    "/a/b/c/d/e/f/g/{id}",
		"":                     "",
	} {
		if got := heuristicRoute(path); got != want {
			t.Errorf("heuristicRoute(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestTraceparent(t *testing.T) {
	for h, valid := range map[string]bool{
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01":       true,
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00":       true,
		"00-00000000000000000000000000000000-b7ad6b7169203331-01":       false,
		"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01":       false,
		"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01":       false,
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331":          false,
		"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01":       false, // upper case
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g":       false,
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-":      false, // version 00 has nothing after the flags
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later": true,
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01xyz":    false, // a later field comes after a '-'
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01":       true,
		"garbage": false,
	} {
		got := parseTraceparent(h)
		if got.IsValid() != valid {
			t.Errorf("parseTraceparent(%q).IsValid() = %v, want %v", h, got.IsValid(), valid)
		}
		if fromBytes := parseTraceparent([]byte(h)); !fromBytes.Equal(got) {
			t.Errorf("parseTraceparent(%q) from bytes = %v, from a string %v", h, fromBytes, got)
		}
	}
	sc := parseTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03")
	if !sc.IsSampled() || sc.TraceFlags() != 1 || sc.SpanID().String() != "b7ad6b7169203331" || !sc.IsRemote() {
		t.Errorf("flags 03: %+v", sc)
	}
}

// TestNothingCarriedOver: messages and header strings are reused from one
// request of a connection to the next; no field of one request may show up
// in another, also when the server answers before the request body is in.
func TestNothingCarriedOver(t *testing.T) {
	h := newHarness(t, 512)
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	h.send(1, in, "GET /users/1 HTTP/1.1\r\nHost: a:1\r\nUser-Agent: one\r\ntraceparent: "+tp+"\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	h.send(1, in, "GET /users/1 HTTP/1.0\r\n\r\n")
	h.send(1, out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
	// Answered early: the request is still sending its body when the
	// response is complete.
	h.send(1, in, "POST /upload HTTP/1.1\r\nHost: b\r\nContent-Length: 10\r\n\r\n12345")
	h.send(1, out, "HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
	h.send(1, in, "67890")
	h.send(1, in, "PUT /x HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\n\r\n")
	h.send(1, out, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")

	type summary struct {
		method, path, route, host, ua, version string
		status                                 int
		parent                                 bool
	}
	want := []summary{
		{"GET", "/users/1", "/users/{id}", "a", "one", "1.1", 200, true},
		{"GET", "/users/1", "/users/{id}", "", "", "1.0", 404, false},
		{"POST", "/upload", "/upload", "b", "", "1.1", 413, false},
		{"PUT", "/x", "/x", "c", "", "1.1", 201, false},
	}
	if len(h.got) != len(want) {
		t.Fatalf("got %d requests, want %d", len(h.got), len(want))
	}
	for i, r := range h.got {
		got := summary{r.Method, r.Path, r.Route, r.Host, r.UserAgent, r.ProtocolVersion, r.StatusCode, r.Parent.IsValid()}
		if got != want[i] {
			t.Errorf("request %d = %+v, want %+v", i, got, want[i])
		}
	}
	if h.got[0].Parent.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Errorf("parent = %v", h.got[0].Parent)
	}
}

// TestTraceState: a caller's tracestate goes with its traceparent (vendor
// state, the sampling threshold ot=th), over HTTP/1 and HTTP/2; an invalid
// one is dropped and the parent kept, and none without a parent.
func TestTraceState(t *testing.T) {
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	h := newHarness(t, 4096)
	for _, c := range []struct{ headers, want string }{
		{"traceparent: " + tp + "\r\ntracestate: vendor=abc,ot=th:8\r\n", "vendor=abc,ot=th:8"},
		{"tracestate: vendor=abc\r\ntraceparent: " + tp + "\r\n", "vendor=abc"}, // either order
		{"traceparent: " + tp + "\r\ntracestate: NOT VALID\r\n", ""},
		{"tracestate: vendor=abc\r\n", ""},
	} {
		h.got = nil
		h.send(1, in, "GET /x HTTP/1.1\r\nHost: a\r\n"+c.headers+"\r\n")
		h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		if len(h.got) != 1 {
			t.Fatalf("%q: %d requests", c.headers, len(h.got))
		}
		if got := h.got[0].Parent.TraceState().String(); got != c.want {
			t.Errorf("%q: tracestate %q, want %q", c.headers, got, c.want)
		}
	}

	cli, srv := newH2Peer(), newH2Peer()
	h2 := newHarness(t, 4096)
	h2.send(1, in, h2Preface+h2Settings0)
	h2.send(1, out, h2Settings0+h2frame(h2Settings, h2FlagAck, 0, nil))
	h2.send(1, in, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, cli.block(":method", "GET", ":scheme", "http", ":path", "/y", ":authority", "x",
		"traceparent", tp, "tracestate", "vendor=xyz")))
	h2.send(1, out, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, srv.block(":status", "200")))
	if len(h2.got) != 1 || h2.got[0].Parent.TraceState().String() != "vendor=xyz" {
		t.Errorf("HTTP/2: %d requests, tracestate %v", len(h2.got), h2.got)
	}
}

// TestHTTP1ConnectAuthority: a proxy's CONNECT names its tunnel's end in
// the authority form, host:port: a request with no path, and the tunnel
// after its 200 is not HTTP.
func TestHTTP1ConnectAuthority(t *testing.T) {
	for _, host := range []string{"api.example.com", "httpbin.org", "10.0.0.9"} {
		h := newHarness(t, 4096)
		h.send(1, in, "CONNECT "+host+":443 HTTP/1.1\r\nHost: "+host+":443\r\n\r\n")
		h.send(1, out, "HTTP/1.1 200 Connection Established\r\n\r\n")
		h.send(1, in, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") // TLS through the tunnel
		if len(h.got) != 1 {
			t.Fatalf("%s: %d requests, want 1", host, len(h.got))
		}
		if r := h.got[0]; r.Method != "CONNECT" || r.Path != "" || r.Host != host || r.HostPort != 443 || r.StatusCode != 200 {
			t.Errorf("%s: request %+v", host, r)
		}
	}
}

// panicky is a parser with a bug: it panics on the bytes "boom".
type panicky struct{}

func (panicky) feed(_ bpf.Direction, seg *segment) {
	if string(seg.data) == "boom" {
		var m map[string]int
		m["x"]++ // assignment to a nil map
	}
}
func (panicky) closed(uint64) {}

// TestParserPanicContained: a parser that panics loses its own connection,
// counted and described, and nothing else: the tracer goes on with every
// other connection.
func TestParserPanicContained(t *testing.T) {
	h := newHarness(t, 512)
	http := h.tracer.detectors
	h.tracer.detectors = append([]detector{func(_ bpf.Direction, seg *segment, _ emitter) protocolParser {
		if strings.HasPrefix(string(seg.data), "bo") {
			return panicky{}
		}
		return nil
	}}, http...)
	h.send(1, in, "boom")
	h.send(1, in, "boom") // the connection is no longer followed
	h.send(2, in, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
	h.send(2, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	h.close(1)
	h.close(2)
	if len(h.got) != 1 || h.got[0].Path != "/after" {
		t.Fatalf("requests after the panic: %+v", h.got)
	}
	s := h.tracer.Stats()
	if s.ParserFailures != 1 || s.Connections != 0 {
		t.Errorf("stats %+v, want 1 parser failure and no connection left", s)
	}
	if f := h.tracer.LastFailure(); !strings.Contains(f, "tracer.panicky") || !strings.Contains(f, "nil map") {
		t.Errorf("LastFailure = %q", f)
	}
}

// A chunked request body counts the bytes that came, not the sizes its
// chunk lines announce: a server may answer (413) before the body ends,
// and a peer may announce any size, up to 2^63-1, which added to the
// chunks before must not wrap.
func TestChunkedSizeAnnounced(t *testing.T) {
	h := newHarness(t, 1024)
	h.send(1, in, "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7fffffffffffffff\r\nabc")
	h.send(1, out, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	if len(h.got) != 1 {
		t.Fatalf("got %d requests, want 1", len(h.got))
	}
	if r := h.got[0]; r.StatusCode != 413 || r.RequestSize != 8 {
		t.Errorf("status %d, request size %d, want 413 and 8", r.StatusCode, r.RequestSize)
	}
}

// TestRouteIsACopy: a route lives long (metric series, caches), so it
// must not keep the request's target, query and all, alive.
func TestRouteIsACopy(t *testing.T) {
	target := "/api/items?token=" + strings.Repeat("x", 1000)
	path, _, _ := strings.Cut(target, "?")
	r := heuristicRoute(path)
	if r != path || unsafe.StringData(r) == unsafe.StringData(path) {
		t.Errorf("route %q shares the target's memory", r)
	}
}

// A chunked response whose chunk lines lie past the captured prefix ends
// where its last chunk does, also when the client's reads split that
// chunk ("...0\r", then "\n\r\n"); and when its end cannot be seen at all
// (a trailer past the prefix), the next status line after the next
// request starts the next response. Either way later exchanges pair
// right.
func TestHTTP1BlindChunkedEnds(t *testing.T) {
	body := "800\r\n" + strings.Repeat("x", 0x800) + "\r\n800\r\n" + strings.Repeat("y", 0x800) + "\r\n0\r\n"
	for name, end := range map[string]string{"split last chunk": "\r\n", "trailer": "Expires: 0\r\n\r\n"} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, 1024)
			resp := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + end
			cut := len(resp) - 3
			h.send(1, in, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
			h.send(1, out, resp[:cut])
			h.send(1, out, resp[cut:])
			want := map[string]int{"/first": 200, "/second": 201, "/third": 202, "/fourth": 204}
			for _, p := range []string{"/second", "/third", "/fourth"} {
				h.send(1, in, "GET "+p+" HTTP/1.1\r\nHost: x\r\n\r\n")
				h.send(1, out, fmt.Sprintf("HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n", want[p]))
			}
			if len(h.got) != 4 {
				t.Fatalf("%d spans, want 4", len(h.got))
			}
			for _, r := range h.got {
				if want[r.Path] != r.StatusCode {
					t.Errorf("%s paired with %d, want %d", r.Path, r.StatusCode, want[r.Path])
				}
			}
			// Blind, the body is counted with its framing: at least its
			// data, at most all that followed the head.
			first := h.got[0]
			if first.Path != "/first" || first.End.Sub(first.Start) > 5*time.Millisecond ||
				first.ResponseSize < 0x1000 || first.ResponseSize > int64(len(body+end)) {
				t.Errorf("first span %s, lasting %v, body %d bytes (data 4096, sent %d)", first.Path, first.End.Sub(first.Start), first.ResponseSize, len(body+end))
			}
		})
	}
}

// A response head longer than the captured prefix, written alone (long
// cookies, a policy header): its framing may lie past the prefix, so the
// response ends there as far as is known, and the next status line starts
// the next one; its body is not taken to run until the connection closes.
func TestHTTP1TruncatedResponseHead(t *testing.T) {
	h := newHarness(t, 1024)
	big := "HTTP/1.1 200 OK\r\nContent-Security-Policy: " + strings.Repeat("a", 1100) + "\r\nContent-Length: 5\r\n\r\n"
	h.send(1, in, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	h.send(1, out, big)
	h.send(1, out, "hello")
	for range 3 {
		h.send(1, in, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
		h.send(1, out, "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
	}
	if len(h.got) != 4 {
		t.Fatalf("%d spans before the close, want 4", len(h.got))
	}
	if h.got[0].Path != "/a" || h.got[0].StatusCode != 200 || h.got[3].Path != "/b" || h.got[3].StatusCode != 201 {
		t.Errorf("spans %s %d ... %s %d", h.got[0].Path, h.got[0].StatusCode, h.got[3].Path, h.got[3].StatusCode)
	}
	if d := h.got[0].End.Sub(h.got[0].Start); d > time.Millisecond {
		t.Errorf("the first exchange lasted %v", d)
	}
}

// The resynchronisation on a status line is only for a response whose
// end may have gone by unseen, after a request sent since its last bytes:
// not while a pipelining client's requests, all sent before, wait (a
// body's bytes may look like a status line), not in the request
// direction, and not for a response that runs until the close.
func TestHTTP1ResyncOnlyWhenDue(t *testing.T) {
	emb := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	chunk := strings.Repeat("x", 3000) + emb + strings.Repeat("y", 3000)
	body := "7d0\r\n" + strings.Repeat("w", 2000) + "\r\n" + fmt.Sprintf("%x\r\n", len(chunk)) + chunk + "\r\n0\r\n\r\n"

	t.Run("pipelined", func(t *testing.T) {
		h := newHarness(t, 1024)
		h.send(1, in, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
		h.send(1, in, "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
		resp := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
		i := strings.Index(resp, emb)
		h.send(1, out, resp[:i])
		h.send(1, out, resp[i:])
		h.send(1, out, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
		if len(h.got) != 2 || h.got[0].Path != "/1" || h.got[0].StatusCode != 200 || h.got[1].Path != "/2" || h.got[1].StatusCode != 201 {
			t.Errorf("spans %v", h.got)
		}
	})
	t.Run("request", func(t *testing.T) {
		h := newHarness(t, 1024)
		req := "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
		i := strings.Index(req, emb)
		h.send(1, in, req[:i])
		h.send(1, in, req[i:])
		h.send(1, out, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
		if len(h.got) != 1 || h.got[0].RequestSize < int64(len(chunk)) || h.got[0].StatusCode != 201 {
			t.Errorf("spans %v", h.got)
		}
	})
	t.Run("until the close", func(t *testing.T) {
		h := newHarness(t, 1024)
		h.send(1, in, "GET /a HTTP/1.0\r\nHost: x\r\n\r\n")
		h.send(1, out, "HTTP/1.0 200 OK\r\nContent-Security-Policy: "+strings.Repeat("a", 1100)+"\r\n\r\n")
		for range 5 {
			h.send(1, out, strings.Repeat("b", 5000))
		}
		h.close(1)
		if len(h.got) != 1 || h.got[0].ResponseSize != 25000 {
			t.Errorf("spans %v", h.got)
		}
	})
}

// piece delivers data as send does, or counted (countEvery).
func (h *harness) piece(sock uint64, dir bpf.Direction, data string) {
	if h.pieces++; h.countEvery > 0 && h.pieces%h.countEvery == 0 {
		h.counted(sock, dir, len(data))
		return
	}
	h.send(sock, dir, data)
}

// counted delivers n bytes that the kernel counted but could not read
// (io_uring, splice, sendmmsg): a length, no payload.
func (h *harness) counted(sock uint64, dir bpf.Direction, n int) {
	ev := h.dataEvent(sock, dir, "")
	ev.Len = uint32(n)
	h.tracer.Handle(&ev)
}

// TestCountedHoles: bytes the kernel counted but could not read leave a
// hole in a connection's stream; the exchanges after it are paired as they
// are, not with what the hole hid. And a hole that cannot hold a message
// (a stray CRLF), or that follows a head whose framing the capture cut
// off, is no message.
func TestCountedHoles(t *testing.T) {
	req := func(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: shop\r\n\r\n" }
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	post := "POST /upload HTTP/1.1\r\nHost: shop\r\nX-Padding: " + strings.Repeat("x", 80) + "\r\nContent-Length: 2000\r\n\r\n"
	for _, tc := range []struct {
		name string
		feed func(h *harness)
	}{
		{"request counted", func(h *harness) {
			h.counted(1, in, len(req("/hidden")))
			h.send(1, out, "HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno")
			h.send(1, in, req("/seen"))
		}},
		{"response counted", func(h *harness) {
			h.send(1, in, req("/hidden"))
			h.counted(1, out, 200)
			h.send(1, in, req("/seen"))
		}},
		{"pipelined, request counted", func(h *harness) {
			h.send(1, in, req("/a"))
			h.counted(1, in, len(req("/hidden")))
			h.send(1, in, req("/seen"))
			h.send(1, out, "HTTP/1.1 204 No Content\r\n\r\n")
			h.send(1, out, "HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno")
		}},
		{"pipelined, two responses in one counted write", func(h *harness) {
			h.send(1, in, req("/a"))
			h.send(1, in, req("/b"))
			h.counted(1, out, 400)
			h.send(1, in, req("/seen"))
		}},
		{"responses counted in a row", func(h *harness) {
			h.send(1, in, req("/a"))
			h.counted(1, out, 200)
			h.send(1, in, req("/b"))
			h.counted(1, out, 200)
			h.send(1, in, req("/seen"))
		}},
		{"pipelined, a request counted in two reads", func(h *harness) {
			h.send(1, in, req("/a"))
			h.counted(1, in, 200) // a head,
			h.counted(1, in, 200) // its body
			h.send(1, in, req("/seen"))
			h.send(1, out, "HTTP/1.1 204 No Content\r\n\r\n")
			h.send(1, out, "HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno")
		}},
		{"a stray CRLF after a body", func(h *harness) {
			h.send(1, in, "POST /form HTTP/1.1\r\nHost: shop\r\nContent-Length: 100\r\n\r\n"+strings.Repeat("f", 100)+"\r\n")
			h.send(1, out, ok)
			h.send(1, in, req("/seen"))
		}},
		{"a body after a head cut short", func(h *harness) {
			h.send(1, in, post)
			h.counted(1, in, 2000) // its Content-Length was past the capture
			h.send(1, out, ok)
			h.send(1, in, req("/seen"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 64)
			h.send(1, in, req("/first"))
			h.send(1, out, ok)
			tc.feed(h)
			h.send(1, out, "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
			var seen []*Request
			for _, r := range h.got {
				if r.Path == "/seen" || r.StatusCode == 201 {
					seen = append(seen, r)
				}
			}
			if len(seen) != 1 || seen[0].Path != "/seen" || seen[0].StatusCode != 201 {
				for _, r := range h.got {
					t.Logf("request %q status %d", r.Path, r.StatusCode)
				}
				t.Fatalf("the exchange after the hole: want one /seen answered 201")
			}
		})
	}
}

// TestCountedBeforeDetection: transfers counted but not read, before any
// the tracer could recognise, spend none of its tries at recognising the
// connection's protocol.
func TestCountedBeforeDetection(t *testing.T) {
	h := newHarness(t, 512)
	for range maxDetectTries + 2 {
		h.counted(1, in, 1000)
		h.counted(1, out, 1000)
	}
	h.send(1, in, "GET /late HTTP/1.1\r\nHost: shop\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	if len(h.got) != 1 || h.got[0].Path != "/late" {
		t.Fatalf("got %d requests, want /late", len(h.got))
	}
}

// TestRequestRelease: a Request the tracer made is cleared when its
// consumer releases it, to be made again; one made elsewhere (a caller's,
// a test's) is left as it is.
func TestRequestRelease(t *testing.T) {
	r := pooledRequest(Request{Method: "GET", Path: "/a", StatusCode: 200, Process: &pod.Process{PID: 7}})
	r.Release()
	if r.Method != "" || r.Path != "" || r.StatusCode != 0 || r.Process != nil || r.pooled {
		t.Errorf("released request not cleared: %+v", r)
	}
	mine := &Request{Method: "GET", Path: "/a"}
	mine.Release()
	if mine.Method != "GET" || mine.Path != "/a" {
		t.Errorf("a request the tracer did not make was cleared: %+v", mine)
	}
	// Every request the tracer hands over is one Release recycles.
	var got []*Request
	tr := New(Config{}, allProcesses{}, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) }, func(r *Request) { got = append(got, r) })
	ev := bpf.Event{Type: bpf.EventData, Conn: 1, PID: 7, TID: 7, Local: serverAddr, Remote: clientAddr, Role: bpf.RoleServer, Dir: bpf.Ingress}
	ev.Payload = []byte("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	ev.Len = uint32(len(ev.Payload))
	tr.Handle(&ev)
	ev.Dir, ev.Payload = bpf.Egress, []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	ev.Len = uint32(len(ev.Payload))
	tr.Handle(&ev)
	if len(got) != 1 || !got[0].pooled {
		t.Fatalf("requests %+v, want one the tracer made for recycling", got)
	}
}

// selectLater selects no process until selected is set.
type selectLater struct{ selected bool }

func (s *selectLater) Lookup(pid uint32, comm string) *pod.Process {
	if !s.selected {
		return nil
	}
	return &pod.Process{PID: int(pid), Name: comm}
}

// A connection opened before its process was selected (by the port it
// listens on, which it opens after its database pool) is followed once
// the process is, within reselectAfter; before, nothing of it is.
func TestConnectionReselected(t *testing.T) {
	sel := &selectLater{}
	h := newHarness(t, 4096)
	h.tracer = New(Config{RouteHeuristic: true}, sel, h.tracer.wall, h.tracer.emit)
	exchange := func(path string) {
		h.send(1, in, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n")
		h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	}
	exchange("/before")
	sel.selected = true
	exchange("/soon") // selected now, but the connection asks again only later
	h.now += reselectAfter
	exchange("/after")
	if len(h.got) != 1 || h.got[0].Path != "/after" {
		t.Errorf("requests %v, want only /after", describeAll(h.got))
	}
}

// A connection whose peer is one of the agent's own (a collector in the
// pod, receiving the agent's exports) is never followed: each export
// would otherwise make a span for the next to carry. gRPC may tell the
// agent of its end after the collector's first write (its SETTINGS): the
// peer is asked again in the connection's first second.
func TestOwnConnectionNotFollowed(t *testing.T) {
	h := newHarness(t, 4096)
	asked := 0
	own := func(peer netip.AddrPort) bool { asked++; return peer == clientAddr && asked > 1 }
	h.tracer = New(Config{Own: own}, allProcesses{}, h.tracer.wall, h.tracer.emit)
	h.send(1, out, "HTTP/1.1 100 Continue\r\n\r\n") // the collector writes first, before the agent knows its end
	for range 2 {
		h.send(1, in, "GET /export HTTP/1.1\r\nHost: a\r\n\r\n")
		h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		h.now += reselectAfter
	}
	if len(h.got) != 0 {
		t.Errorf("requests %v on the agent's own connection", describeAll(h.got))
	}
}

// servingRecorder is a servingProcesses that keeps the local ports it was
// asked with.
type servingRecorder struct{ ports []uint16 }

func (s *servingRecorder) Lookup(pid uint32, comm string) *pod.Process {
	return s.LookupServing(pid, comm, 0)
}
func (s *servingRecorder) LookupServing(pid uint32, comm string, local uint16) *pod.Process {
	s.ports = append(s.ports, local)
	return &pod.Process{PID: int(pid), Name: comm}
}

// The tracer asks for a new connection's process with the connection's
// local port, which selects a worker serving a selected port.
func TestLookupServingPort(t *testing.T) {
	rec := &servingRecorder{}
	h := newHarness(t, 4096)
	h.tracer = New(Config{}, rec, h.tracer.wall, h.tracer.emit)
	h.send(1, in, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if len(rec.ports) != 1 || rec.ports[0] != serverAddr.Port() {
		t.Errorf("asked with ports %v, want [%d]", rec.ports, serverAddr.Port())
	}
}

// TestCutContentLength: a head longer than the capture, cut inside its
// Content-Length line ("Content-Length: 1" of 1200), is framed as a head
// whose length lay past the capture, not as a body of 1 byte: a response
// runs until the next one, and the exchange after it is paired.
func TestCutContentLength(t *testing.T) {
	const capture = 128
	for _, dir := range []bpf.Direction{out, in} {
		h := newHarness(t, capture)
		body := strings.Repeat("b", 1200)
		var head string
		if dir == out {
			h.send(1, in, "GET /big HTTP/1.1\r\nHost: shop\r\n\r\n")
			head = "HTTP/1.1 200 OK\r\nX-Pad: "
		} else {
			head = "POST /big HTTP/1.1\r\nHost: shop\r\nX-Pad: "
		}
		pad := capture - len(head) - len("\r\nContent-Length: 1")
		head += strings.Repeat("p", pad) + "\r\nContent-Length: 1200\r\n" + "Cache-Control: " + strings.Repeat("c", 200) + "\r\n\r\n"
		if cut := head[:capture]; !strings.HasSuffix(cut, "Content-Length: 1") {
			t.Fatalf("the capture ends %q", cut[len(cut)-20:])
		}
		h.send(1, dir, head) // the head written alone, as a proxy does
		h.send(1, dir, body[:600])
		h.send(1, dir, body[600:])
		if dir == in {
			h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		h.send(1, in, "GET /seen HTTP/1.1\r\nHost: shop\r\n\r\n")
		h.send(1, out, "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
		var seen, big []*Request
		for _, r := range h.got {
			switch r.Path {
			case "/seen":
				seen = append(seen, r)
			case "/big":
				big = append(big, r)
			}
		}
		if len(seen) != 1 || seen[0].StatusCode != 201 || len(big) != 1 || big[0].StatusCode != 200 {
			for _, r := range h.got {
				t.Logf("request %q status %d", r.Path, r.StatusCode)
			}
			t.Errorf("%v: want /big answered 200 and /seen answered 201, once each", dir)
		}
		// The response's size and end come from where the next response
		// begins, not from the cut length; the request's is not the cut
		// length either.
		if dir == out && big[0].ResponseSize != int64(len(body)) {
			t.Errorf("response body size %d, want %d", big[0].ResponseSize, len(body))
		}
		if dir == in && big[0].RequestSize == 1 {
			t.Errorf("request body size 1: the cut Content-Length")
		}
	}
}
