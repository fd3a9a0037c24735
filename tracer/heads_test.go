package tracer

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/bpf"
)

// fakeHeads is the kernel's list of registered heads, holding at most max.
type fakeHeads struct {
	max     int
	heads   map[uint64]bool
	added   int
	removed []uint64
}

func (f *fakeHeads) AddHead(hash uint64) error {
	if len(f.heads) >= f.max && !f.heads[hash] {
		return bpf.ErrHeadsFull
	}
	f.heads[hash] = true
	f.added++
	return nil
}

func (f *fakeHeads) RemoveHead(hash uint64) error {
	if !f.heads[hash] {
		return errors.New("no such head")
	}
	delete(f.heads, hash)
	f.removed = append(f.removed, hash)
	return nil
}

// sendHead delivers a request whose head the kernel hashed, as it would.
func (h *harness) sendHead(sock uint64, data string, traceLow uint64) {
	h.sendHashed(sock, data, bpf.HeadHash([]byte(data[:strings.Index(data, "\r\n\r\n")+4])), traceLow)
}

// sendHashed delivers a request the kernel hashed as hash.
func (h *harness) sendHashed(sock uint64, data string, hash, traceLow uint64) {
	h.now += 1000
	ev := bpf.Event{Type: bpf.EventData, Dir: in, EnterNS: h.now, ExitNS: h.now + 500, Conn: sock, PID: 7, Len: uint32(len(data)), Local: serverAddr, Remote: clientAddr,
		TraceLow: traceLow, HeadHash: hash, Payload: []byte(data)}
	copy(ev.Comm[:], "server")
	h.now += 500
	h.tracer.Handle(&ev)
}

// record delivers the kernel's record of an exchange of the head of data.
func (h *harness) record(sock uint64, typ bpf.EventType, data string, status uint16, body uint32, traceLow uint64) {
	h.kernelRecord(sock, typ, bpf.HeadHash([]byte(data)), "", status, body, traceLow)
}

// recordWith is record with the kernel's payload (a traceparent value).
func (h *harness) recordWith(sock uint64, typ bpf.EventType, data, payload string, status uint16, body uint32) {
	h.kernelRecord(sock, typ, bpf.HeadHash([]byte(data)), payload, status, body, 0)
}

// kernelRecord delivers the kernel's record (or stand-in, by typ) of an
// exchange whose request the kernel hashed as hash.
func (h *harness) kernelRecord(sock uint64, typ bpf.EventType, hash uint64, payload string, status uint16, body uint32, traceLow uint64) {
	h.now += 1000
	ev := bpf.Event{Type: typ, Dir: out, EnterNS: h.now, ExitNS: h.now + 2000, Conn: sock, PID: 7, Local: serverAddr, Remote: clientAddr,
		TraceLow: traceLow, HeadHash: hash, Status: status, Body: body, Payload: []byte(payload)}
	if typ == bpf.EventHTTPRequest || typ == bpf.EventRedisRequest {
		ev.Dir, ev.ExitNS = in, ev.EnterNS
	}
	copy(ev.Comm[:], "server")
	h.now += 2000
	h.tracer.Handle(&ev)
}

// The kernel's spans of requests with a traceparent: the heads of an
// instrumented client's requests differ only in its value, which is not
// in their hash, so they are one head; each record and stand-in carries
// its request's value, which becomes the request's parent as parsing its
// bytes would make it.
func TestKernelHeadsTraceparent(t *testing.T) {
	h := newHarness(t, 512)
	kernel := &fakeHeads{max: 8, heads: map[uint64]bool{}}
	h.tracer = New(Config{Heads: kernel}, allProcesses{}, h.tracer.wall, h.tracer.emit)
	head := func(value string) string {
		// With a tracestate, which the kernel's records keep (the head's).
		return "GET /a HTTP/1.1\r\nHost: x\r\nTraceparent: " + value + "\r\nTracestate: vendor=abc\r\nUser-Agent: y\r\n\r\n"
	}
	const v1, v2, v3 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203332-00",
		"00-0af7651916cd43dd8448eb211c80319e-b7ad6b7169203333-01"
	const resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	h.sendHead(1, head(v1), 0)
	h.send(1, out, resp)
	h.sendHead(1, head(v2), 0)
	h.send(1, out, resp)
	if kernel.added != 1 {
		t.Fatalf("%d heads registered after two requests that differ in their traceparent, want 1", kernel.added)
	}
	// The same exchanges again, from records and from a stand-in: the
	// same requests as parsed, each with its own parent.
	h.recordWith(1, bpf.EventHTTP, head(v1), v1, 200, 2)
	h.recordWith(1, bpf.EventHTTP, head(v2), v2, 200, 2)
	h.recordWith(1, bpf.EventHTTPRequest, head(v1), v1, 0, 0)
	h.send(1, out, resp)
	h.sendHead(1, head(v3), 0)
	h.send(1, out, resp)
	if len(h.got) != 6 {
		t.Fatalf("%d requests, want 6", len(h.got))
	}
	for i, want := range []*Request{h.got[0], h.got[1], h.got[0]} {
		got, w := *h.got[2+i], *want
		got.Start, got.End, w.Start, w.End = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("exchange %d from the kernel:\n%+v\nparsed:\n%+v", i, got, w)
		}
	}
	if p := h.got[3].Parent; p.TraceID().String() != v2[3:35] || p.SpanID().String() != v2[36:52] || p.IsSampled() {
		t.Errorf("record's parent %v, want %s", p, v2)
	}
	// The stand-in's bytes were a copy: the registered head keeps its own
	// (the second request's, which registered it).
	if raw := string(h.tracer.cfg.heads.byHash[bpf.HeadHash([]byte(head(v1)))].raw); raw != head(v2) {
		t.Errorf("registered head %q after the stand-in, want %q", raw, head(v2))
	}
	if p := h.got[5].Parent; p.SpanID().String() != v3[36:52] {
		t.Errorf("parent after the stand-in %v, want %s", p, v3)
	}
	// A value the kernel forwards but that is no traceparent: no parent,
	// as the parser reads it.
	h.recordWith(1, bpf.EventHTTP, head(v1), strings.Replace(v1, "-01", "x01", 1), 200, 2)
	if p := h.got[6].Parent; p.IsValid() {
		t.Errorf("an invalid value made the parent %v", p)
	}
}

// The kernel's spans: a head parsed twice is registered; a record of an
// exchange with it becomes the request that parsing the exchange's bytes
// makes; a stand-in is parsed as the request's bytes with the response
// that follows. A head the tracer lacks is counted, not invented.
func TestKernelHeads(t *testing.T) {
	h := newHarness(t, 512)
	kernel := &fakeHeads{max: 2, heads: map[uint64]bool{}}
	h.tracer = New(Config{RouteHeuristic: true, Heads: kernel}, allProcesses{}, h.tracer.wall, h.tracer.emit)
	const post = "POST /users/42?x=1 HTTP/1.1\r\nHost: shop:8080\r\nUser-Agent: curl/8\r\nContent-Length: 5\r\n\r\n"
	const resp = "HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated"
	for i := range 2 {
		h.sendHead(1, post+"hello", 0x1234)
		h.send(1, out, resp)
		if want := i; kernel.added != want {
			t.Fatalf("after %d requests %d heads registered, want %d", i+1, kernel.added, want)
		}
	}
	parsed := *h.got[1]
	h.record(1, bpf.EventHTTP, post, 201, 7, 0x1234)
	h.record(2, bpf.EventHTTP, post, 201, 7, 0x1234) // another connection, new to the tracer
	if len(h.got) != 4 {
		t.Fatalf("%d requests, want 4", len(h.got))
	}
	for _, r := range h.got[2:] {
		got := *r
		if got.End.Sub(got.Start) != 2000 {
			t.Errorf("record's span lasts %v, want 2µs", got.End.Sub(got.Start))
		}
		got.Start, got.End = parsed.Start, parsed.End
		if !reflect.DeepEqual(got, parsed) {
			t.Errorf("from the record:\n%+v\nparsed:\n%+v", got, parsed)
		}
	}

	// A stand-in, then the response's bytes: parsed as if the request's
	// had come.
	h.record(1, bpf.EventHTTPRequest, post, 0, 0, 0x5678)
	h.send(1, out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
	if len(h.got) != 5 || h.got[4].StatusCode != 200 || h.got[4].Path != "/users/42" || h.got[4].RequestSize != 5 || h.got[4].ResponseSize != 2 ||
		h.got[4].TraceIDLow != 0x5678 {
		t.Fatalf("after the stand-in: %+v", h.got[len(h.got)-1])
	}
	// And the connection goes on in step.
	h.send(1, in, "GET /b HTTP/1.1\r\n\r\n")
	h.send(1, out, "HTTP/1.1 204 No Content\r\n\r\n")
	if len(h.got) != 6 || h.got[5].Path != "/b" || h.got[5].StatusCode != 204 {
		t.Fatalf("after the stand-in's exchange: %+v", h.got[len(h.got)-1])
	}

	// A request read after a stand-in's response went out, on another
	// CPU, may reach the ring buffer before the stand-in: each response
	// still pairs with its own request, by when they came.
	h.send(5, in, "GET /c HTTP/1.1\r\n\r\n")
	late := bpf.Event{Type: bpf.EventHTTPRequest, Dir: in, EnterNS: h.now - 800, ExitNS: h.now - 800, Conn: 5, PID: 7, Local: serverAddr, Remote: clientAddr,
		TraceLow: 9, HeadHash: bpf.HeadHash([]byte(post))}
	h.tracer.Handle(&late)
	h.send(5, out, resp)
	h.send(5, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 8 || h.got[6].Path != "/users/42" || h.got[6].StatusCode != 201 || h.got[7].Path != "/c" || h.got[7].StatusCode != 200 {
		t.Fatalf("after a late stand-in: %+v, %+v", h.got[len(h.got)-2], h.got[len(h.got)-1])
	}
	h.got = h.got[:6]

	// Unknown heads: counted, nothing made of them.
	h.record(1, bpf.EventHTTP, "GET /unknown HTTP/1.1\r\n\r\n", 200, 0, 1)
	h.record(1, bpf.EventHTTPRequest, "GET /unknown HTTP/1.1\r\n\r\n", 0, 0, 1)
	if s := h.tracer.Stats(); len(h.got) != 6 || s.HeadMisses != 2 || s.KernelHeads != 1 {
		t.Errorf("%d requests, stats %+v: want 6, 2 misses, 1 head", len(h.got), s)
	}

	// A head whose hash is not the kernel's is not registered.
	h.now += 1000
	bad := bpf.Event{Type: bpf.EventData, Dir: in, ExitNS: h.now, Conn: 3, PID: 7, Len: 18, HeadHash: 99, Payload: []byte("GET /c HTTP/1.1\r\n\r\n"),
		Local: serverAddr, Remote: clientAddr}
	h.tracer.Handle(&bad)
	h.tracer.Handle(&bad)
	if s := h.tracer.Stats(); s.HeadMismatches != 2 || kernel.added != 1 {
		t.Errorf("stats %+v, %d registered: want 2 mismatches, 1 registered", s, kernel.added)
	}

	// The kernel full: a new head waits, until the sweep takes back a head
	// unused for a minute (which stays known for the records on their
	// way); then it is registered.
	heads := []string{"GET /1 HTTP/1.1\r\n\r\n", "GET /2 HTTP/1.1\r\n\r\n"}
	exchange := func(head string) {
		h.sendHead(4, head, 0)
		h.send(4, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	}
	for _, head := range heads {
		exchange(head)
		exchange(head)
	}
	hash := func(head string) uint64 { return bpf.HeadHash([]byte(head)) }
	if !kernel.heads[hash(heads[0])] || kernel.heads[hash(heads[1])] || len(kernel.removed) != 0 {
		t.Fatalf("registered %v, removed %x: want the first new head only", kernel.heads, kernel.removed)
	}
	h.now += uint64(61 * time.Second)
	exchange(heads[0]) // in use: kept; the sweep runs
	if len(kernel.removed) != 1 || kernel.removed[0] != hash(post) {
		t.Errorf("removed %x, want the POST's head, unused for a minute", kernel.removed)
	}
	exchange(heads[1])
	if !kernel.heads[hash(heads[1])] || kernel.added != 3 {
		t.Errorf("registered %v (%d in all): want the second new head now", kernel.heads, kernel.added)
	}
	n := len(h.got)
	h.record(1, bpf.EventHTTP, post, 201, 7, 0x1234)
	if len(h.got) != n+1 {
		t.Errorf("a record of the head just taken back was lost")
	}
	if s := h.tracer.Stats(); s.KernelHeads != 2 || s.KernelRecords != 3 || s.HeadMisses != 2 {
		t.Errorf("stats %+v, want 2 heads, 3 records, 2 misses", s)
	}
}

// sendCommand delivers a server's Redis command, with the kernel's hash of
// its shape, as the kernel would.
func (h *harness) sendCommand(sock uint64, args ...string) {
	h.sendHashed(sock, respCmd(args...), bpf.RedisShape([]byte(args[0]), len(args)), 0)
}

// The kernel's spans of Redis commands: a command's shape (its name and
// its arguments' count) seen twice is registered, unless its span says
// more than its shape; a record of a command of that shape becomes the
// span that parsing the command and its reply makes, in the connection's
// database; a stand-in is parsed as a command of the shape, its reply
// following.
func TestKernelRedisShapes(t *testing.T) {
	h := newHarness(t, 512)
	kernel := &fakeHeads{max: 8, heads: map[uint64]bool{}}
	h.tracer = New(Config{Heads: kernel}, allProcesses{}, h.tracer.wall, h.tracer.emit)
	h.sendCommand(1, "SELECT", "2")
	h.send(1, out, "+OK\r\n")
	h.sendCommand(1, "SELECT", "2")
	h.send(1, out, "+OK\r\n")
	h.sendCommand(1, "GET", "user:1")
	h.send(1, out, "$2\r\nv1\r\n")
	h.sendCommand(1, "GET", "user:2")
	h.send(1, out, "$-1\r\n")
	if kernel.added != 1 || !kernel.heads[bpf.RedisShape([]byte("GET"), 2)] {
		t.Fatalf("registered %v, want GET's shape alone (SELECT changes the connection)", kernel.heads)
	}
	parsed := *h.got[len(h.got)-1]
	if parsed.DBOperation != "GET" || parsed.DBQuery != "GET ?" || parsed.DBNamespace != "2" {
		t.Fatalf("parsed %+v", parsed)
	}
	get := bpf.RedisShape([]byte("GET"), 2)
	kernelEvent := func(sock uint64, typ bpf.EventType, shape uint64) { h.kernelRecord(sock, typ, shape, "", 0, 0, 0) }
	n := len(h.got)
	kernelEvent(1, bpf.EventRedis, get)
	if len(h.got) != n+1 {
		t.Fatalf("%d spans after a record, want %d", len(h.got), n+1)
	}
	got := *h.got[n]
	if got.End.Sub(got.Start) != 2000 {
		t.Errorf("record's span lasts %v, want 2µs", got.End.Sub(got.Start))
	}
	got.Start, got.End = parsed.Start, parsed.End
	if !reflect.DeepEqual(got, parsed) {
		t.Errorf("from the record:\n%+v\nparsed:\n%+v", got, parsed)
	}
	// A stand-in, then an error reply: the error is the span's.
	kernelEvent(1, bpf.EventRedisRequest, get)
	h.send(1, out, "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
	if len(h.got) != n+2 || h.got[n+1].DBQuery != "GET ?" || h.got[n+1].ErrorCode != "WRONGTYPE" || h.got[n+1].DBNamespace != "2" {
		t.Fatalf("after the stand-in: %+v", h.got[len(h.got)-1])
	}
	// And the connection goes on in step.
	h.sendCommand(1, "SET", "k", "v")
	h.send(1, out, "+OK\r\n")
	if len(h.got) != n+3 || h.got[n+2].DBQuery != "SET ? ?" {
		t.Fatalf("after the stand-in's exchange: %+v", h.got[len(h.got)-1])
	}
	// In a transaction whose MULTI the kernel did not see (it came behind
	// another command in one read), a record's command is queued: one
	// span, the transaction's, as parsed.
	h.send(1, in, respCmd("PING")+respCmd("MULTI"))
	h.send(1, out, "+PONG\r\n+OK\r\n")
	kernelEvent(1, bpf.EventRedis, get)
	h.send(1, in, respCmd("EXEC"))
	h.send(1, out, "*1\r\n$1\r\nv\r\n")
	if len(h.got) != n+5 || h.got[n+4].DBOperation != "MULTI GET" || h.got[n+4].DBQuery != "GET ?" {
		t.Fatalf("transaction: %d spans, the last %+v; want PING, then MULTI GET", len(h.got)-n-3, h.got[len(h.got)-1])
	}
	n += 2
	// A record on a connection the agent has not seen: its database is
	// not known, as for a command parsed there.
	kernelEvent(2, bpf.EventRedis, get)
	if len(h.got) != n+4 || h.got[n+3].DBOperation != "GET" || h.got[n+3].DBNamespace != "" {
		t.Fatalf("record on a new connection: %+v", h.got[len(h.got)-1])
	}
	// A hash of the other kind, or unknown: counted, nothing made.
	kernelEvent(1, bpf.EventHTTP, get)
	kernelEvent(1, bpf.EventRedis, 12345)
	if s := h.tracer.Stats(); len(h.got) != n+4 || s.HeadMisses != 2 {
		t.Errorf("%d spans, stats %+v: want no more spans, 2 misses", len(h.got)-n, s)
	}
	// With keys in the query text, nothing is registered.
	h2 := newHarness(t, 512)
	kernel2 := &fakeHeads{max: 8, heads: map[uint64]bool{}}
	h2.tracer = New(Config{Heads: kernel2, RedisKeys: true}, allProcesses{}, h2.tracer.wall, h2.tracer.emit)
	for range 3 {
		h2.sendCommand(1, "GET", "user:1")
		h2.send(1, out, "$2\r\nv1\r\n")
	}
	if kernel2.added != 0 {
		t.Errorf("%d shapes registered with keys in the query text", kernel2.added)
	}
}

// A connection closing (softirq, one CPU) while its owned request's
// response is sent (another CPU): both the close and the send may see the
// request owned, and each send what stands for it, in either order with
// the other's events. Per-socket state has no atomics to stop that (the
// programs are built for BPF v1), so the tracer must: a request stood for
// twice never makes two spans. The close's stand-in, and its close event
// after it, race the send's record, or its stand-in and the response's
// bytes after that.
func TestKernelCloseRace(t *testing.T) {
	const get = "GET /race HTTP/1.1\r\nHost: shop\r\n\r\n"
	const resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	redisGet := bpf.RedisShape([]byte("GET"), 2)
	type event struct {
		name string
		send func(h *harness)
	}
	closeStandIn := func(typ bpf.EventType, hash uint64) event {
		return event{"close's stand-in", func(h *harness) { h.kernelRecord(9, typ, hash, "", 0, 0, 0) }}
	}
	closed := event{"close", func(h *harness) { h.close(9) }}
	// The close event forgets the connection: when it lands between the
	// send's stand-in and the response, the response has no request, and
	// the exchange is lost (not doubled). Otherwise one span.
	standInSpans := func(order []string) int {
		if c := slices.Index(order, "close"); slices.Index(order, "send's stand-in") < c && c < slices.Index(order, "response") {
			return 0
		}
		return 1
	}
	for _, tc := range []struct {
		name  string
		learn func(h *harness)
		// closing and sending: each side's events, in order
		closing, sending []event
		spans            func(order []string) int // expected
		check            func(t *testing.T, r *Request)
	}{{
		name: "HTTP record",
		learn: func(h *harness) {
			h.sendHead(1, get, 0)
			h.send(1, out, resp)
		},
		closing: []event{closeStandIn(bpf.EventHTTPRequest, bpf.HeadHash([]byte(get))), closed},
		sending: []event{{"record", func(h *harness) { h.record(9, bpf.EventHTTP, get, 200, 2, 0) }}},
		spans:   func([]string) int { return 1 },
		check: func(t *testing.T, r *Request) {
			if r.Path != "/race" || r.StatusCode != 200 || r.ResponseSize != 2 {
				t.Errorf("span %+v", r)
			}
		},
	}, {
		name: "HTTP stand-in",
		learn: func(h *harness) {
			h.sendHead(1, get, 0)
			h.send(1, out, resp)
		},
		closing: []event{closeStandIn(bpf.EventHTTPRequest, bpf.HeadHash([]byte(get))), closed},
		sending: []event{
			{"send's stand-in", func(h *harness) { h.record(9, bpf.EventHTTPRequest, get, 0, 0, 0) }},
			{"response", func(h *harness) { h.send(9, out, resp) }},
		},
		spans: standInSpans,
		check: func(t *testing.T, r *Request) {
			if r.Path != "/race" || r.StatusCode != 200 {
				t.Errorf("span %+v", r)
			}
		},
	}, {
		name: "Redis record",
		learn: func(h *harness) {
			h.sendCommand(1, "GET", "k")
			h.send(1, out, "$1\r\nv\r\n")
		},
		closing: []event{closeStandIn(bpf.EventRedisRequest, redisGet), closed},
		sending: []event{{"record", func(h *harness) { h.kernelRecord(9, bpf.EventRedis, redisGet, "", 0, 0, 0) }}},
		spans:   func([]string) int { return 1 },
		check: func(t *testing.T, r *Request) {
			if r.DBQuery != "GET ?" || r.ErrorCode != "" {
				t.Errorf("span %+v", r)
			}
		},
	}, {
		name: "Redis stand-in",
		learn: func(h *harness) {
			h.sendCommand(1, "GET", "k")
			h.send(1, out, "$1\r\nv\r\n")
		},
		closing: []event{closeStandIn(bpf.EventRedisRequest, redisGet), closed},
		sending: []event{
			{"send's stand-in", func(h *harness) { h.kernelRecord(9, bpf.EventRedisRequest, redisGet, "", 0, 0, 0) }},
			{"response", func(h *harness) { h.send(9, out, "*2\r\n$1\r\na\r\n$1\r\nb\r\n") }},
		},
		spans: standInSpans,
		check: func(t *testing.T, r *Request) {
			if r.DBQuery != "GET ?" {
				t.Errorf("span %+v", r)
			}
		},
	}} {
		// Every interleaving of the two sides, each side in its order.
		var orders [][]event
		var interleave func(done []event, a, b []event)
		interleave = func(done []event, a, b []event) {
			if len(a) == 0 && len(b) == 0 {
				orders = append(orders, slices.Clone(done))
				return
			}
			if len(a) > 0 {
				interleave(append(done, a[0]), a[1:], b)
			}
			if len(b) > 0 {
				interleave(append(done, b[0]), a, b[1:])
			}
		}
		interleave(nil, tc.closing, tc.sending)
		for _, order := range orders {
			var names []string
			for _, e := range order {
				names = append(names, e.name)
			}
			t.Run(tc.name+": "+strings.Join(names, ", "), func(t *testing.T) {
				h := newHarness(t, 512)
				kernel := &fakeHeads{max: 8, heads: map[uint64]bool{}}
				h.tracer = New(Config{Heads: kernel}, allProcesses{}, h.tracer.wall, h.tracer.emit)
				tc.learn(h)
				tc.learn(h)
				if kernel.added != 1 {
					t.Fatalf("%d heads registered, want 1", kernel.added)
				}
				n := len(h.got)
				for _, e := range order {
					e.send(h)
				}
				spans := h.got[n:]
				if want := tc.spans(names); len(spans) != want {
					t.Fatalf("%d spans, want %d", len(spans), want)
				}
				for _, r := range spans {
					tc.check(t, r)
				}
			})
		}
	}
}
