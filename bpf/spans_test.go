package bpf

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// spanServer answers by path, each response in one send but /split's (head
// and body apart); /vec and /vecchunked write the head and the body as two
// vectors of one writev, as nginx does; it reads every other request's
// first byte alone, as Go's server sometimes does, and closes the
// connection on /close without an answer.
const spanServer = pythonListener + `
import os, time
while True:
    c, _ = s.accept()
    n = 0
    while True:
        n += 1
        data = c.recv(1) if n % 2 else b""
        data += c.recv(4096)
        if not data:
            break
        path = data.split(b" ")[1] if data.count(b" ") > 1 else b""
        if path == b"/close":
            break
        if path == b"/split":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            time.sleep(0.02)
            c.sendall(b"ok")
        elif path == b"/chunked":
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        elif path == b"/vec":
            os.writev(c.fileno(), [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"])
        elif path == b"/vecchunked":
            os.writev(c.fileno(), [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"2\r\nok\r\n0\r\n\r\n"])
        elif path == b"/empty":
            c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == b"/missing":
            c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found")
        elif data.startswith(b"HEAD"):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.close()
`

// TestKernelSpans: with the kernel's spans on and nearly every request
// picked (a ratio just under 1, so that the kernel draws trace IDs), a
// request whose head the agent registered is not sent;
// its exchange comes as one EventHTTP record when the response goes out
// whole in one send, and otherwise as an EventHTTPRequest standing for
// the request, then the response's bytes. A head not registered goes up
// whole, with its hash; the hash is the same whether its first byte was
// read alone or not.
func TestKernelSpans(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 1 - 1e-9})
	if !c.KernelSpans() {
		t.Fatal("kernel spans not on")
	}
	events := readEventsOf(c, true)
	pid, port := startPythonServer(t, spanServer)
	conn, r := dial(t, port)
	// The server reads the first byte of the connection's odd requests
	// alone: held by the kernel, and sent on its own when the request goes
	// up whole.
	sent := 0
	send := func(raw string, responses int) {
		t.Helper()
		sent++
		exchange(t, conn, r, raw, responses)
	}
	requestLines := func(raw string) []string {
		line, _, _ := strings.Cut(raw, "\r\n")
		if sent%2 == 1 {
			return []string{line[:1], line[1:]}
		}
		return []string{line}
	}
	get := func(path string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: x\r\nUser-Agent: spans-test/1.0\r\n\r\n"
	}
	// full sends raw and expects it up whole with its response: the
	// payloads' first lines, and the request's head hash.
	full := func(raw string, response ...string) uint64 {
		t.Helper()
		if len(response) == 0 {
			// Closed on, unanswered.
			send(raw, 0)
			if _, err := r.ReadByte(); err != io.EOF {
				t.Fatalf("read after %q: %v, want EOF", raw, err)
			}
		} else {
			send(raw, 1)
		}
		want := append(requestLines(raw), response...)
		var hash uint64
		var lines []string
		for _, ev := range events.take(pid) {
			if ev.Type == EventClose {
				continue
			}
			if ev.Type != EventData {
				t.Errorf("event of type %d, want data", ev.Type)
				continue
			}
			line, _, _ := strings.Cut(string(ev.Payload), "\r\n")
			lines = append(lines, line)
			if ev.Dir == Ingress && ev.HeadHash != 0 {
				if hash != 0 && hash != ev.HeadHash {
					t.Errorf("two head hashes for one request")
				}
				hash = ev.HeadHash
				if ev.TraceLow == 0 {
					t.Errorf("request %q without the kernel's draw", line)
				}
			}
		}
		if strings.Join(lines, "|") != strings.Join(want, "|") {
			t.Errorf("user space got %q, want %q", lines, want)
		}
		if hash == 0 {
			t.Fatalf("%q: no head hash", raw)
		}
		if mine := HeadHash([]byte(raw[:strings.Index(raw, "\r\n\r\n")+4])); mine != hash {
			t.Errorf("%q: HeadHash %x, the kernel's %x", raw, mine, hash)
		}
		return hash
	}
	// Not registered: whole, twice (the first byte alone, then not), with
	// the same hash.
	h := full(get("/a"), "HTTP/1.1 200 OK")
	if h2 := full(get("/a"), "HTTP/1.1 200 OK"); h2 != h {
		t.Fatalf("hash %x, then %x for the same head", h, h2)
	}
	if other := full(strings.Replace(get("/a"), "1.0", "1.1", 1), "HTTP/1.1 200 OK"); other == h {
		t.Fatal("another User-Agent, the same hash")
	}
	// Lines longer than a step of the kernel's scan, a body.
	full("GET /a?q=1 HTTP/1.1\r\nHost: x\r\nCookie: "+strings.Repeat("c", 200)+"\r\nAccept: */*\r\n\r\n", "HTTP/1.1 200 OK")
	full("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.1 200 OK")
	if err := c.AddHead(h); err != nil {
		t.Fatal(err)
	}

	// Registered: a record per exchange, whichever way the first byte came.
	for i := 0; i < 4; i++ {
		before := time.Now()
		send(get("/a"), 1)
		evs := events.take(pid)
		if len(evs) != 1 || evs[0].Type != EventHTTP {
			t.Fatalf("exchange %d: events %+v, want one record", i, evs)
		}
		ev := evs[0]
		if ev.HeadHash != h || ev.Status != 200 || ev.Body != 2 || ev.TraceLow == 0 || len(ev.Payload) != 0 {
			t.Errorf("record %+v", ev)
		}
		if ev.ExitNS < ev.EnterNS || c.WallTime(ev.EnterNS).Before(before.Add(-time.Second)) {
			t.Errorf("record times %d, %d", ev.EnterNS, ev.ExitNS)
		}
		if ev.Local.Port() != uint16(port) || !ev.Remote.Addr().IsLoopback() || ev.PID != uint32(pid) {
			t.Errorf("record's connection %v %v pid %d", ev.Local, ev.Remote, ev.PID)
		}
	}

	// Other heads, once registered: a 404 and a 204 are records too; a
	// response in two sends, a chunked one and a HEAD's (a length and no
	// body) come whole after the request's stand-in.
	for _, p := range []string{"/missing", "/empty", "/split", "/chunked"} {
		hp := full(get(p), responseLines(p)...)
		if err := c.AddHead(hp); err != nil {
			t.Fatal(err)
		}
	}
	record := func(path string, status uint16, body uint32) {
		t.Helper()
		send(get(path), 1)
		evs := events.take(pid)
		if len(evs) != 1 || evs[0].Type != EventHTTP || evs[0].Status != status || evs[0].Body != body {
			t.Errorf("%s: events %+v, want a record of %d with %d body bytes", path, evs, status, body)
		}
	}
	record("/missing", 404, 9)
	record("/empty", 204, 0)
	// Two vectors, nginx's way: whole, a record (the kernel copies the head
	// only); chunked, the stand-in and then both vectors, the chunked
	// body's end included.
	for _, p := range []string{"/vec", "/vecchunked"} {
		hp := full(get(p), "HTTP/1.1 200 OK")
		if err := c.AddHead(hp); err != nil {
			t.Fatal(err)
		}
	}
	record("/vec", 200, 2)
	send(get("/vecchunked"), 1)
	const vecChunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
	if evs := events.take(pid); len(evs) != 2 || evs[0].Type != EventHTTPRequest || evs[1].Type != EventData || string(evs[1].Payload) != vecChunked {
		t.Errorf("/vecchunked: events %+v, want the stand-in, then the response whole", evs)
	}
	standIn := func(raw string, want ...string) {
		t.Helper()
		send(raw, 1)
		evs := events.take(pid)
		if len(evs) == 0 || evs[0].Type != EventHTTPRequest || evs[0].HeadHash == 0 || evs[0].TraceLow == 0 || evs[0].Dir != Ingress {
			t.Fatalf("%q: events %+v, want the request's stand-in first", raw, evs)
		}
		var lines []string
		for _, ev := range evs[1:] {
			line, _, _ := strings.Cut(string(ev.Payload), "\r\n")
			lines = append(lines, line)
		}
		if strings.Join(lines, "|") != strings.Join(want, "|") {
			t.Errorf("%q: then %q, want %q", raw, lines, want)
		}
	}
	standIn(get("/split"), "HTTP/1.1 200 OK", "ok")
	standIn(get("/chunked"), "HTTP/1.1 200 OK")
	head := strings.Replace(get("/a"), "GET", "HEAD", 1)
	hh := full(head, "HTTP/1.1 200 OK")
	if err := c.AddHead(hh); err != nil {
		t.Fatal(err)
	}
	standIn(head, "HTTP/1.1 200 OK")
	// And records again on the same connection.
	record("/a", 200, 2)

	// A request the server closes on, unanswered: its stand-in, then the
	// close.
	newConn := func() {
		conn.Close()
		conn, r = dial(t, port)
		sent = 0
		events.take(pid) // the server's close of the last one
	}
	hc := full(get("/close"))
	newConn()
	if err := c.AddHead(hc); err != nil {
		t.Fatal(err)
	}
	record("/a", 200, 2) // a registered head is every connection's
	io.WriteString(conn, get("/close"))
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("read after /close: %v, want EOF", err)
	}
	var got []EventType
	for _, ev := range events.takeAfter(pid, 2) {
		got = append(got, ev.Type)
	}
	if len(got) != 2 || got[0] != EventHTTPRequest || got[1] != EventClose {
		t.Errorf("events %v, want the stand-in, then the close %s", got, lossNote(c))
	}

	stats, err := c.Stats()
	if err != nil || stats.HTTPSpans != 14 {
		t.Errorf("stats %+v %v: want 14 requests stood for", stats, err)
	}
	if err := c.RemoveHead(h); err != nil {
		t.Fatal(err)
	}
	newConn()
	full(get("/a"), "HTTP/1.1 200 OK")
	full(get("/a"), "HTTP/1.1 200 OK")
}

// responseLines are the first lines of spanServer's response to a GET of
// path, a line per send.
func responseLines(path string) []string {
	switch path {
	case "/missing":
		return []string{"HTTP/1.1 404 Not Found"}
	case "/empty":
		return []string{"HTTP/1.1 204 No Content"}
	case "/split":
		return []string{"HTTP/1.1 200 OK", "ok"}
	}
	return []string{"HTTP/1.1 200 OK"}
}

// TestKernelSpansPipelined: a request read while the kernel owns one for a
// span (the client pipelines, the server reads ahead) sends the owned
// one's stand-in first, then its own bytes; both responses follow as
// data, and the connection's exchanges are user space's from then on.
// Every request is picked (a ratio of 1): the kernel draws no trace ID,
// the agent does.
func TestKernelSpansPipelined(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 1})
	events := readEventsOf(c, false)
	pid, port := startPythonServer(t, readAheadServer)
	const get = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
	pipeline := func() []Event {
		conn, r := dial(t, port)
		io.WriteString(conn, get)
		time.Sleep(50 * time.Millisecond) // the server's first read takes it alone
		exchange(t, conn, r, get, 2)
		conn.Close() // the server goes on to the next connection
		return events.take(pid)
	}
	first := pipeline()
	if len(first) != 4 || first[0].HeadHash == 0 {
		t.Fatalf("events %+v, want two requests and two responses, whole", first)
	}
	if err := c.AddHead(first[0].HeadHash); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range pipeline() {
		if ev.TraceLow != 0 {
			t.Errorf("a trace ID drawn with every request picked: %+v", ev)
		}
		line, _, _ := strings.Cut(string(ev.Payload), "\r\n")
		got = append(got, fmt.Sprintf("%d %s", ev.Type, line))
	}
	want := []string{"4 ", "1 GET /a HTTP/1.1", "1 HTTP/1.1 200 OK", "1 HTTP/1.1 200 OK"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events %q, want %q", got, want)
	}
}

// TestKernelSpansEverySpan: with every request picked (a ratio of 1, the
// agent's default), a registered head's exchange is a record without a
// trace ID draw: the agent draws it.
func TestKernelSpansEverySpan(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 1})
	events := readEvents(c)
	pid, port := startPythonServer(t, spanServer)
	conn, r := dial(t, port)
	const get = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
	exchange(t, conn, r, get, 1)
	first := events.take(pid)
	if len(first) != 3 || first[1].HeadHash == 0 || first[1].TraceLow != 0 {
		t.Fatalf("events %+v, want the request (its first byte alone, then the rest, with its hash and no draw) and the response", first)
	}
	if err := c.AddHead(first[1].HeadHash); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		exchange(t, conn, r, get, 1)
		evs := events.take(pid)
		if len(evs) != 1 || evs[0].Type != EventHTTP || evs[0].Status != 200 || evs[0].Body != 2 || evs[0].TraceLow != 0 {
			t.Fatalf("events %+v, want one record without a draw", evs)
		}
	}
}

// TestKernelSpansTraceparent: a request with a traceparent (every request
// of an instrumented client has its own) is the kernel's too. The value is
// left out of its head's hash, so requests that differ only in it have one
// head, and each record or stand-in carries its request's value; the
// kernel draws no trace ID for it (the parent's is the span's), whatever
// the ratio. A traceparent line of any other form, or a second one, takes
// the request off the fast path: up whole, with no hash.
func TestKernelSpansTraceparent(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 0.5})
	events := readEventsOf(c, true)
	pid, port := startPythonServer(t, spanServer)
	conn, r := dial(t, port)
	n := 0
	value := func() string {
		n++
		return fmt.Sprintf("00-%032x-%016x-01", 0xabc0000+n, 0xdef00+n)
	}
	get := func(path, line string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: x\r\n" + line + "\r\nUser-Agent: spans-test/1.0\r\n\r\n"
	}
	// up sends raw, expects it up whole, and returns its head's hash.
	up := func(raw string, responses int) uint64 {
		t.Helper()
		exchange(t, conn, r, raw, responses)
		var hash uint64
		for _, ev := range events.take(pid) {
			if ev.Type == EventClose {
				continue
			}
			if ev.Type != EventData {
				t.Fatalf("%q: event %+v, want the bytes", raw, ev)
			}
			if ev.Dir == Ingress && ev.HeadHash != 0 {
				hash = ev.HeadHash
			}
			if ev.TraceLow != 0 && strings.Contains(strings.ToLower(raw), "traceparent") {
				t.Errorf("%q: a trace ID drawn for a request with a parent", raw)
			}
		}
		head := raw[:strings.Index(raw, "\r\n\r\n")+4]
		if mine := HeadHash([]byte(head)); mine != hash {
			t.Errorf("%q: HeadHash %x, the kernel's %x", raw, mine, hash)
		}
		return hash
	}

	h := up(get("/a", "traceparent: "+value()), 1)
	if h == 0 {
		t.Fatal("no head hash for a request with a traceparent")
	}
	if h2 := up(get("/a", "traceparent: "+value()), 1); h2 != h {
		t.Errorf("another traceparent value, another hash: %x, %x", h, h2)
	}
	raw := get("/a", "traceparent: "+value())
	if at := HeadParent([]byte(raw)); at != strings.Index(raw, "00-") {
		t.Errorf("HeadParent %d, want %d", at, strings.Index(raw, "00-"))
	}
	// Go's client writes "Traceparent:"; no space is allowed too. The
	// line's form is not in the hash either: the agent's parser reads
	// them alike, and a stand-in takes the registered head's form.
	for _, line := range []string{"Traceparent: ", "traceparent:"} {
		if hash := up(get("/a", line+value()), 1); hash != h {
			t.Errorf("%q: hash %x, want the first form's %x", line, hash, h)
		}
	}
	// Other forms are not the fast path's.
	for _, line := range []string{
		"traceparent:  " + value(),                                // two spaces
		"traceparent: " + value()[:54],                            // short
		"traceparent: " + value() + " ",                           // something after it
		"traceparent: " + value() + "\r\nTraceparent: " + value(), // two
		"traceparent\x1a " + value(),                              // a byte that folds to ':'
		"Traceparent : " + value(),                                // not a header the parser reads
	} {
		if hash := up(get("/a", line), 1); hash != 0 {
			t.Errorf("%q: hashed", line)
		}
	}
	if up(get("/a", "User-Agent: none"), 1) == h {
		t.Fatal("a head without the traceparent line hashes like one with it")
	}

	// Registered: each record carries its own request's value.
	if err := c.AddHead(h); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		v := value()
		exchange(t, conn, r, get("/a", "traceparent: "+v), 1)
		evs := events.take(pid)
		if len(evs) != 1 || evs[0].Type != EventHTTP || evs[0].Status != 200 || evs[0].TraceLow != 0 {
			t.Fatalf("events %+v, want one record without a draw", evs)
		}
		if string(evs[0].Payload) != v {
			t.Errorf("record's payload %q, want the value %q", evs[0].Payload, v)
		}
	}
	// A stand-in carries it too, and the response's bytes after it are
	// whole.
	hs := up(get("/split", "traceparent: "+value()), 1)
	if err := c.AddHead(hs); err != nil {
		t.Fatal(err)
	}
	v := value()
	exchange(t, conn, r, get("/split", "traceparent: "+v), 1)
	evs := events.take(pid)
	if len(evs) != 3 || evs[0].Type != EventHTTPRequest || string(evs[0].Payload) != v {
		t.Fatalf("events %+v, want the stand-in with the value %q, then the response", evs, v)
	}
	if got := string(evs[1].Payload) + string(evs[2].Payload); got != "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" {
		t.Errorf("the response after the stand-in: %q", got)
	}
	// And one closed on before its response.
	hc := up(get("/close", "traceparent: "+value()), 0)
	conn.Close()
	conn, r = dial(t, port)
	events.take(pid)
	if err := c.AddHead(hc); err != nil {
		t.Fatal(err)
	}
	v = value()
	io.WriteString(conn, get("/close", "traceparent: "+v))
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("read after /close: %v, want EOF", err)
	}
	evs = events.takeAfter(pid, 2)
	if len(evs) != 2 || evs[0].Type != EventHTTPRequest || string(evs[0].Payload) != v || evs[1].Type != EventClose {
		t.Errorf("events %+v, want the stand-in with %q, then the close %s", evs, v, lossNote(c))
	}
}

// earlyByteSpanServer starts server (earlyByteServer or its kin) and
// registers the head of its requests, learnt from a first connection.
func earlyByteSpanServer(t *testing.T, c *Capture, server string) (events *fastEvents, pid, port int) {
	t.Helper()
	events = readEventsOf(c, true)
	pid, port = startPythonServer(t, server)
	conn, r := earlyByteDial(t, port)
	exchange(t, conn, r, earlyByteGet, 1)
	conn.Close()
	first := events.take(pid)
	if len(first) == 0 || first[0].Len != uint32(len(earlyByteGet)) || first[0].HeadHash == 0 {
		t.Fatalf("events %+v, want the first request whole, with its head's hash", first)
	}
	if err := c.AddHead(first[0].HeadHash); err != nil {
		t.Fatal(err)
	}
	return events, pid, port
}

// eventLines shows events as "type len payload".
func eventLines(events []Event) []string {
	var lines []string
	for _, ev := range events {
		lines = append(lines, fmt.Sprintf("%d %d %q", ev.Type, ev.Len, ev.Payload))
	}
	return lines
}

// TestKernelSpansEarlyByte: as TestFastPathEarlyByte, for requests owned
// for a span: the next request's first byte, read before the owned
// exchange is answered, is held; the exchange still comes as a record,
// and so do the requests after it.
func TestKernelSpansEarlyByte(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 1})
	events, pid, port := earlyByteSpanServer(t, c, earlyByteServer)
	conn, r := earlyByteDial(t, port)
	for range 4 {
		exchange(t, conn, r, earlyByteGet, 1) // its first byte read before the answer to the one before
	}
	evs := events.take(pid)
	if len(evs) != 4 {
		t.Fatalf("events %q, want four records", eventLines(evs))
	}
	for _, ev := range evs {
		if ev.Type != EventHTTP || ev.Status != 200 || ev.Body != 2 {
			t.Errorf("event %+v, want a record of a 200 with 2 bytes", ev)
		}
	}
}

// earlyBytePipelineServer reads a request, the next one's first byte,
// and the rest of that request before it answers both (the client
// pipelines), then closes; or closes when the rest does not come.
const earlyBytePipelineServer = pythonListener + `
import socket
while True:
    c, _ = s.accept()
    c.recv(28, socket.MSG_WAITALL)
    c.recv(1)
    if c.recv(27, socket.MSG_WAITALL):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 2)
    c.close()
`

// TestKernelSpansEarlyBytePipelined: when the rest of the request whose
// first byte is held comes before the owned request is answered, the
// client pipelines: user space gets the owned request's stand-in, the
// held byte, then the rest, in the order the server read them. So it
// does when the server closes with a request owned and a byte held.
func TestKernelSpansEarlyBytePipelined(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 1})
	events, pid, port := earlyByteSpanServer(t, c, earlyBytePipelineServer)
	standIn, held, closed := `4 0 ""`, `1 1 "G"`, `2 0 ""`
	const earlyByteOK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" // as the server answers

	expectEvents := func(want ...string) {
		t.Helper()
		if got := eventLines(events.take(pid)); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("user space got %q, want %q", got, want)
		}
	}
	conn, r := earlyByteDial(t, port)
	io.WriteString(conn, earlyByteGet[:1])
	time.Sleep(50 * time.Millisecond) // the first byte read alone
	expectEvents()                    // the request owned, the byte held
	exchange(t, conn, r, earlyByteGet[1:], 2)
	expectEvents(standIn, held, fmt.Sprintf("1 27 %q", earlyByteGet[1:]),
		fmt.Sprintf("1 %d %q", 2*len(earlyByteOK), strings.Repeat(earlyByteOK, 2)), closed)

	conn, _ = earlyByteDial(t, port)
	io.WriteString(conn, earlyByteGet[:1])
	time.Sleep(50 * time.Millisecond)
	conn.(*net.TCPConn).CloseWrite() // the server reads nothing more, and closes
	expectEvents(standIn, held, closed)
}

// earlyByteOptionsServer reads a request, the next one's first byte (an
// OPTIONS, a CORS preflight's method, which the fast path does not take),
// answers the first, then reads the rest of the second, answers it and
// closes.
var earlyByteOptionsServer = earlyByteAnswerServer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 31, "HTTP/1.1 204 No Content\r\n\r\n")

// TestKernelSpansEarlyByteOptions: a lone first byte of any method, read
// before the owned request's response is seen, is held. Taken for
// pipelining, as it was for methods the fast path does not take, the
// receive rewrote the connection's state while the response's send could
// be rewriting it on the other CPU (Go's background read), and the
// request and its answer were counted twice or paired with the wrong one.
// Held, the owned exchange ends as its record, and the OPTIONS goes up
// whole, its first byte first.
func TestKernelSpansEarlyByteOptions(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 1})
	events, pid, port := earlyByteSpanServer(t, c, earlyByteOptionsServer)
	const options = "OPTIONS /a HTTP/1.1\r\nHost: x\r\n\r\n"
	if len(options) != 32 {
		t.Fatalf("the server reads a 32-byte OPTIONS, not %d", len(options))
	}
	conn, r := earlyByteDial(t, port)
	io.WriteString(conn, options[:1])
	time.Sleep(50 * time.Millisecond) // read alone, before the first answer
	readResponses(t, r, nil, 1)
	exchange(t, conn, r, options[1:], 1)
	evs := events.takeAfter(pid, 5)
	if len(evs) == 0 || evs[0].Type != EventHTTP || evs[0].Status != 200 {
		t.Fatalf("user space got %q, want the first request's record first", eventLines(evs))
	}
	want := []string{`1 1 "O"`, fmt.Sprintf("1 31 %q", options[1:]), `1 27 "HTTP/1.1 204 No Content\r\n\r\n"`, `2 0 ""`}
	if got := eventLines(evs[1:]); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("after the record user space got %q, want %q", got, want)
	}
}

// earlyByteChunkedServer reads a request and the next one's first byte,
// answers the first with a chunked response (not whole to the kernel),
// then reads the rest of the second, answers it and closes.
var earlyByteChunkedServer = earlyByteAnswerServer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 27,
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

// earlyByteAnswerServer is a server that reads a 28-byte request and the
// next request's first byte, answers the first with first, then reads the
// rest bytes of the second, answers it with second (if they came) and
// closes.
func earlyByteAnswerServer(first string, rest int, second string) string {
	return pythonListener + fmt.Sprintf(`
import socket
while True:
    c, _ = s.accept()
    c.recv(28, socket.MSG_WAITALL)
    c.recv(1)
    c.sendall(%s)
    if c.recv(%d, socket.MSG_WAITALL):
        c.sendall(%s)
    c.close()
`, pythonBytes(first), rest, pythonBytes(second))
}

// pythonBytes is s as a Python bytes literal.
func pythonBytes(s string) string {
	var b strings.Builder
	b.WriteString(`b"`)
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, `\x%02x`, s[i])
	}
	b.WriteString(`"`)
	return b.String()
}

// TestKernelSpansEarlyByteChunked: when the response of the request owned
// for a span is not whole (more of it may follow in other sends), the byte
// held goes up with the stand-in, before the response, and the fast path
// ends on the connection: the rest of the byte's request, read after, is
// not taken for a request of its own.
func TestKernelSpansEarlyByteChunked(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 1})
	events, pid, port := earlyByteSpanServer(t, c, earlyByteChunkedServer)
	conn, r := earlyByteDial(t, port)
	exchange(t, conn, r, earlyByteGet, 2) // its first byte read before the first answer
	const chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	want := []string{`4 0 ""`, `1 1 "G"`, fmt.Sprintf("1 %d %q", len(chunked), chunked),
		fmt.Sprintf("1 27 %q", earlyByteGet[1:]), fmt.Sprintf("1 %d %q", len(ok), ok), `2 0 ""`}
	if got := eventLines(events.take(pid)); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("user space got %q, want %q", got, want)
	}
}

// earlyByteSplitServer answers a request in two sends, and reads the next
// request's first byte (a POST's) between them, as a Go server can on
// loopback when the client's next request beats the last send's
// tracepoint (or its client pipelines); then it reads the rest and
// closes.
const earlyByteSplitServer = pythonListener + `
import socket
while True:
    c, _ = s.accept()
    c.recv(28, socket.MSG_WAITALL)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    c.recv(1)
    c.sendall(b"ok")
    c.recv(28, socket.MSG_WAITALL)
    c.close()
`

// TestKernelSpansEarlyByteSplitResponse: a byte read between the sends of
// a response user space has waits for the rest of its request, and goes
// up with it, after the response: the request's head is hashed whole
// ("POST /b", not "OST /b"), so the agent can register it.
func TestKernelSpansEarlyByteSplitResponse(t *testing.T) {
	c := loadFast(t, Fast{Spans: true, SampleRatio: 1})
	events := readEventsOf(c, true)
	pid, port := startPythonServer(t, earlyByteSplitServer)
	const post = "POST /b HTTP/1.1\r\nHost: x\r\n\r\n"
	conn, r := earlyByteDial(t, port) // read, and the response's first send gone
	io.WriteString(conn, post[:1])    // read between the two sends
	readResponses(t, r, nil, 1)
	io.WriteString(conn, post[1:])
	time.Sleep(50 * time.Millisecond)
	evs := events.take(pid)
	want := []string{fmt.Sprintf("1 28 %q", earlyByteGet), `1 38 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"`, `1 2 "ok"`,
		`1 1 "P"`, fmt.Sprintf("1 %d %q", len(post)-1, post[1:]), `2 0 ""`}
	if got := eventLines(evs); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("user space got %q, want %q", got, want)
	}
	if evs[4].HeadHash != HeadHash([]byte(post)) {
		t.Errorf("the request's head hashed as %x, want %x (its whole head's)", evs[4].HeadHash, HeadHash([]byte(post)))
	}
}
