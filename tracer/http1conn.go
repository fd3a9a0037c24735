package tracer

import (
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/podtracer/podtracer/bpf"
)

// maxPending bounds pipelined requests waiting for their responses.
const maxPending = 64

// maxEarlyH2 bounds the client's HTTP/2 segments kept for the 101 that
// they came before (http1Conn.early), and maxEarlyWait how long they wait
// for it (by the kernel's clock).
const (
	maxEarlyH2   = 8
	maxEarlyWait = uint64(time.Second)
)

// http1Conn pairs the requests and responses of an HTTP/1.x connection: a
// stream parser for each direction, and the requests waiting for their
// responses (pipelining answers them in order).
type http1Conn struct {
	in, out http1Stream
	pending []*message
	free    []*message // messages done with, for the streams to reuse
	emit    emitter
	routes  bool // fill Route by heuristicRoute
	route   lastRoute
	h2c     bool           // follow upgrades to h2c (the http2 parser is enabled)
	h2Lost  *atomic.Uint64 // the h2c successor's count of lost places
	// requestDir is the direction requests travel; set by the first one.
	requestDir bpf.Direction
	sawRequest bool
	// next takes the connection over after an upgrade to h2c.
	next protocolParser
	// early is what the client sent in HTTP/2 before the server's 101
	// reached the tracer. On loopback the client can read the 101 and send
	// its preface before the send of the 101 is seen (the send's
	// tracepoint runs after the bytes were delivered), so the server's
	// read of the preface can come first. It waits for the 101, then goes
	// to the HTTP/2 parser; read as HTTP/1.1, the preface was lost to it.
	early        []*segment
	earlyDropped bool // more came than early keeps: the HTTP/2 parser has lost its place
}

// detectHTTP1 recognises a request line or status line at the start of the
// segment, or its first bytes when a peer sends them piecemeal.
func detectHTTP1(routes, h2c bool, heads *heads, h2Lost *atomic.Uint64) detector {
	return func(dir bpf.Direction, seg *segment, emit emitter) protocolParser {
		if !startsMessage(seg.data) && !mayStartMessage(seg, 0) {
			return nil
		}
		c := &http1Conn{emit: emit, routes: routes, h2c: h2c, h2Lost: h2Lost}
		c.in.onHead = func(m *message) { c.onHead(bpf.Ingress, m) }
		c.out.onHead = func(m *message) { c.onHead(bpf.Egress, m) }
		c.in.onComplete = c.onComplete
		c.out.onComplete = c.onComplete
		c.in.onUnseen = func(seg *segment, again bool) { c.onUnseen(bpf.Ingress, seg, again) }
		c.out.onUnseen = func(seg *segment, again bool) { c.onUnseen(bpf.Egress, seg, again) }
		c.in.free, c.out.free = &c.free, &c.free
		c.in.heads, c.out.heads = heads, heads
		// A response stream knows when the client has sent another
		// request: pending holds those not yet answered, in the order
		// they came, the one being answered taken out of it.
		newer := func(after uint64) bool { n := len(c.pending); return n > 0 && c.pending[n-1].start > after }
		c.in.newerRequest, c.out.newerRequest = newer, newer
		return c
	}
}

func (c *http1Conn) feed(dir bpf.Direction, seg *segment) {
	if c.beforeUpgrade(dir, seg) {
		if len(c.early) < maxEarlyH2 {
			c.early = append(c.early, seg.clone())
		} else {
			c.earlyDropped = true
		}
		return
	}
	s := &c.out
	if dir == bpf.Ingress {
		s = &c.in
	}
	s.feed(seg)
	if c.next != nil && s.upgradedAt >= 0 && s.upgradedAt < seg.total {
		// The 101 and the first HTTP/2 frames came in one write.
		c.next.feed(dir, seg.from(s.upgradedAt))
	}
	if c.next != nil && len(c.early) > 0 {
		for _, e := range c.early {
			c.next.feed(c.requestDir, e)
		}
		if h2, ok := c.next.(*http2Conn); ok && c.earlyDropped {
			h2.dirs[c.requestDir].lose() // bytes are missing: it resyncs
		}
		c.early, c.earlyDropped = nil, false
	}
}

// beforeUpgrade tells whether seg, moved in direction dir, is the client's
// HTTP/2 before the 101 that switches to it (see early): the preface, or
// what follows it, while a request that offers h2c waits for its answer.
func (c *http1Conn) beforeUpgrade(dir bpf.Direction, seg *segment) bool {
	if !c.h2c || c.next != nil || !c.sawRequest || dir != c.requestDir {
		return false
	}
	waiting := len(c.pending) > 0 && c.pending[len(c.pending)-1].h2c
	if len(c.early) > 0 && (!waiting || seg.enter > c.early[0].enter+maxEarlyWait) {
		// The request they waited with is gone, or its 101 did not come
		// (lost, or never sent): they are dropped.
		c.early, c.earlyDropped = nil, false
		return false
	}
	return waiting && (len(c.early) > 0 || isH2Preface(seg))
}

// successor is the parser that continues the connection after an upgrade
// to h2c, nil until then.
func (c *http1Conn) successor() protocolParser { return c.next }

func (c *http1Conn) closed(ts uint64) {
	// A body that runs until close ends here; requests still waiting for
	// a response get no span: nothing is invented.
	c.in.closed(ts)
	c.out.closed(ts)
	c.pending = nil
	c.early = nil
}

func (c *http1Conn) onHead(dir bpf.Direction, m *message) {
	if m.request {
		if c.sawRequest && dir != c.requestDir {
			// Requests both ways: not a plain HTTP/1 client-server talk.
			return
		}
		c.sawRequest, c.requestDir = true, dir
		if len(c.pending) == maxPending {
			c.popPending()
		}
		// In the order they came: the kernel's stand-in for a request
		// (bpf.EventHTTPRequest) is sent with its response, and a request
		// read after that response on another CPU may reach the ring
		// buffer before it.
		i := len(c.pending)
		for i > 0 && c.pending[i-1].start > m.start {
			i--
		}
		c.pending = slices.Insert(c.pending, i, m)
		return
	}
	if m.interimResp || len(c.pending) == 0 || dir == c.requestDir {
		return // 100 Continue, or a response to a request we never saw
	}
	m.req = c.popPending()
	if m.req.method == "HEAD" {
		m.noBody = true
	}
	if m.req.method == "CONNECT" && m.status/100 == 2 {
		m.upgrade = true // a tunnel follows
	}
}

// onUnseen keeps the pairing in step over a message that started unseen in
// seg, in direction dir (again: seg was counted whole right after one). An
// unseen request takes its place in the queue, so that its response
// answers it and not the request after it; what is counted right after it
// is taken for more of it (a body read apart), not for another. An unseen
// response may be more than one (pipelined, in one write, or one counted
// write each): every request that had come before it is taken as
// answered, without a span (their statuses are not known), rather than one
// left to be paired with the next response, and every one after it off by
// one. Before the first request the direction is not known, and nothing is
// pending either.
func (c *http1Conn) onUnseen(dir bpf.Direction, seg *segment, again bool) {
	if !c.sawRequest {
		return
	}
	if dir == c.requestDir {
		if again {
			return
		}
		m := c.in.newMessage(seg)
		m.request, m.unseen, m.completed = true, true, true
		c.onHead(dir, m)
		return
	}
	for len(c.pending) > 0 && c.pending[0].start <= seg.enter {
		c.recycle(c.popPending())
	}
}

// popPending takes the oldest request waiting for its response. It shifts
// the rest down rather than reslicing, so that the queue's array, usually
// holding one request, serves the connection's whole life.
func (c *http1Conn) popPending() *message {
	m := c.pending[0]
	n := copy(c.pending, c.pending[1:])
	c.pending[n] = nil
	c.pending = c.pending[:n]
	return m
}

func (c *http1Conn) onComplete(m *message) {
	if m.request || m.req == nil {
		return
	}
	req := m.req
	if req.unseen {
		c.recycle(m)
		c.recycle(req)
		return
	}
	if c.h2c && m.upgrade && m.status == 101 && m.h2c && req.h2c {
		// h2c by Upgrade (RFC 7540 3.2): this request is HTTP/2 stream 1,
		// answered there; the connection goes on in HTTP/2.
		start := req.start
		if c.requestDir == bpf.Egress {
			start = req.startEnter
		}
		next := newHTTP2Upgraded(c.emit, c.routes, c.requestDir, req, start)
		next.lost = c.h2Lost
		c.next = next
		return
	}
	if req.h2c {
		// Not an upgrade: a preface sent before it (a broken client) is
		// dropped, and HTTP/1.1 goes on.
		c.early, c.earlyDropped = nil, false
	}
	var route *lastRoute
	if c.routes {
		route = &c.route
	}
	r := httpRequest(req, route)
	r.StatusCode, r.ResponseSize = m.status, m.bodySize
	if c.requestDir == bpf.Ingress {
		// Server: from when the request arrived to the last response byte.
		c.emit(r, RoleServer, req.start, m.end)
	} else {
		// Client: from when it began to send the request.
		c.emit(r, RoleClient, req.startEnter, m.end)
	}
	// The request has what it needs from both messages (strings are
	// immutable). A request still sending its body (the server answered
	// early) is its stream's current message: it stays.
	c.recycle(m)
	if req.completed {
		c.recycle(req)
	}
}

// httpRequest is the request side of the exchange of req: its route by
// route, none when nil.
func httpRequest(req *message, route *lastRoute) *Request {
	r := pooledRequest(Request{
		Protocol:        ProtoHTTP,
		Method:          req.method,
		ProtocolVersion: "1.1",
		UserAgent:       req.userAgent,
		ForwardedFor:    req.forwardedFor,
		OriginalHost:    req.origin.host,
		OriginalPort:    req.origin.port,
		OriginalScheme:  req.origin.scheme,
		RequestSize:     req.bodySize,
		Parent:          req.parent,
		TraceIDLow:      req.traceLow,
		Truncated:       req.truncated,
		GRPCStatus:      -1,
		Partition:       -1,
	})
	if req.minor == '0' {
		r.ProtocolVersion = "1.0"
	}
	target, host := req.target, req.host
	if req.method == "CONNECT" && !strings.HasPrefix(target, "/") {
		// The authority form, host:port: the tunnel's end, no path.
		if host == "" {
			host = target
		}
		target = ""
	}
	r.Path, r.Query, r.Host, r.HostPort = splitTarget(target, host)
	if route != nil {
		r.Route = route.of(r.Path)
	}
	return r
}

// maxFree bounds the spare messages a connection keeps.
const maxFree = 4

func (c *http1Conn) recycle(m *message) {
	if m == c.in.msg || m == c.out.msg || len(c.free) == maxFree {
		return
	}
	c.free = append(c.free, m)
}
