package tracer

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/bpf"
)

// HeadRegistry is the kernel's list of the request heads the agent has
// (bpf.Capture with bpf.Fast.Spans): for a request with a registered head
// the kernel sends a record of its exchange (bpf.EventHTTP) or a stand-in
// for its bytes (bpf.EventHTTPRequest) instead of the bytes.
type HeadRegistry interface {
	AddHead(hash uint64) error
	RemoveHead(hash uint64) error
}

// maxCandidates bounds the hashes of heads seen once, which are
// registered when they come again.
const maxCandidates = 2 * bpf.MaxHeads

// headIdle is how long a registered head may go unused before the tracer
// takes it back from the kernel, and how long after that it keeps its
// bytes for the records already on their way.
const headIdle = time.Minute

// requestHead is a request head the agent parsed, kept by the kernel's hash
// of it: what every request with those same bytes has. A head seen once
// has only its use time. A Redis command's shape (bpf.RedisShape) is one
// too: the command's span is all in its name and its arguments' count.
type requestHead struct {
	raw []byte // the head's bytes, for a stand-in; nil when seen once
	// parent is where raw's traceparent value starts, -1 when it has
	// none: each request's own comes with its record or stand-in.
	parent int
	// request is the request side of every exchange with this head, its
	// body of the head's Content-Length (RequestSize).
	request Request
	// state is the head's tracestate, for each request's own parent.
	state trace.TraceState
	// redis is the span of every command of this shape, nil for an HTTP
	// head; raw is then a command of the shape, its arguments "?".
	redis *redisShape

	registered bool   // with the kernel
	used       uint64 // when last parsed or stood for, kernel ns
}

// heads are the request heads of the kernel's spans. A head parsed twice
// is registered: one that comes once (an id in the path, a changing
// cookie) costs no map update. The kernel holds bpf.MaxHeads; when they
// are all taken, new heads wait until the sweep takes back those unused
// for headIdle, so that a working set larger than the kernel's costs no
// syscall per request. Only the tracer's goroutine uses them.
type heads struct {
	kernel HeadRegistry
	routes bool // fill route by heuristicRoute
	byHash map[uint64]*requestHead
	// full: the kernel refused a head for want of room, since the last
	// sweep took one back; broken: it refused one for another reason (the
	// log has the counters), and no more are registered.
	full, broken bool
	candidates   int // heads seen once
	// registered counts the heads registered; mismatched, the heads whose
	// hash the agent computed unlike the kernel (none, unless they
	// disagree); misses, the records and stand-ins the tracer could not
	// use (Stats.HeadMisses); records, the exchanges made from a record.
	registered, mismatched, misses, records atomic.Int64
}

func newHeads(kernel HeadRegistry, routes bool) *heads {
	if kernel == nil {
		return nil
	}
	return &heads{kernel: kernel, routes: routes, byHash: make(map[uint64]*requestHead)}
}

// learn takes note of request m, whose head (all of it, parsed) the kernel
// hashed as hash. The first time a head comes only its hash is kept; the
// second time, the head, which is registered.
func (hs *heads) learn(hash uint64, head []byte, m *message, now uint64) {
	h := hs.seen(hash, now, func() bool { return bpf.HeadHash(head) == hash })
	if h == nil {
		return
	}
	var route *lastRoute
	if hs.routes {
		route = new(lastRoute)
	}
	r := httpRequest(m, route)
	*h = requestHead{raw: append([]byte(nil), head...), parent: bpf.HeadParent(head), request: *r, used: now}
	r.Release() // copied: the head keeps the request, not the pool's Request
	h.request.pooled = false
	hs.candidates--
	// The head is the request's whole: its body is yet to come, of its
	// length; the parse's draw and parent were that request's, but not
	// its tracestate, whose bytes are the head's.
	h.request.RequestSize, h.request.TraceIDLow, h.request.Parent = max(m.contentLen, 0), 0, trace.SpanContext{}
	h.state = m.parent.TraceState()
	hs.register(hash, h)
}

// learnRedis takes note of a Redis command whose shape the kernel hashed
// as hash: its name, its args (the name's included), and the span every
// command of that shape makes (op and text).
func (hs *heads) learnRedis(hash uint64, name []byte, args int, op, text string, now uint64) {
	h := hs.seen(hash, now, func() bool { return bpf.RedisShape(name, args) == hash })
	if h == nil {
		return
	}
	raw := fmt.Appendf(nil, "*%d\r\n$%d\r\n%s\r\n", args, len(name), name)
	for range args - 1 {
		raw = append(raw, "$1\r\n?\r\n"...)
	}
	*h = requestHead{raw: raw, parent: -1, redis: &redisShape{op: op, text: text}, used: now}
	hs.candidates--
	hs.register(hash, h)
}

// seen takes note of a head of hash, which check tells is the kernel's.
// It returns the head's entry, to fill and register, the second time the
// head comes; nil otherwise (the first time only its hash is kept).
func (hs *heads) seen(hash uint64, now uint64, check func() bool) *requestHead {
	h := hs.byHash[hash]
	if h != nil {
		h.used = now
		if h.registered || hs.full || hs.broken {
			return nil // registered (a request the kernel did not pick, or raced), or no room
		}
		if h.raw != nil {
			hs.register(hash, h) // taken back by the sweep, and back in use
			return nil
		}
	}
	if !check() {
		hs.mismatched.Add(1)
		return nil
	}
	if h == nil {
		if hs.candidates >= maxCandidates {
			hs.shed()
		}
		hs.byHash[hash] = &requestHead{used: now}
		hs.candidates++
		return nil
	}
	return h
}

// register registers h with the kernel.
func (hs *heads) register(hash uint64, h *requestHead) {
	if err := hs.kernel.AddHead(hash); err != nil {
		// The head goes up whole each time: nothing is lost.
		if errors.Is(err, bpf.ErrHeadsFull) {
			hs.full = true
		} else {
			hs.broken = true
		}
		return
	}
	h.registered = true
	hs.registered.Add(1)
}

// shed forgets a quarter of the heads seen once.
func (hs *heads) shed() {
	n := maxCandidates / 4
	for k, h := range hs.byHash {
		if n == 0 {
			return
		}
		if h.raw == nil {
			delete(hs.byHash, k)
			hs.candidates--
			n--
		}
	}
}

// sweep takes back from the kernel the heads unused for headIdle, and
// forgets those taken back a headIdle ago, and the candidates as old.
func (hs *heads) sweep(now uint64) {
	if hs == nil {
		return
	}
	idle := uint64(headIdle)
	for k, h := range hs.byHash {
		if now <= h.used || now-h.used <= idle {
			continue
		}
		switch {
		case h.registered:
			if hs.kernel.RemoveHead(k) == nil {
				h.registered = false
				hs.registered.Add(-1)
				hs.full = false
			}
		case now-h.used > 2*idle || h.raw == nil:
			delete(hs.byHash, k)
			if h.raw == nil {
				hs.candidates--
			}
		}
	}
}

// lookup returns the head of hash, nil (and counted) when it is unknown.
func (hs *heads) lookup(hash uint64, now uint64) *requestHead {
	if hs == nil {
		return nil
	}
	h := hs.byHash[hash]
	if h == nil || h.raw == nil {
		hs.misses.Add(1)
		return nil
	}
	h.used = now
	return h
}

// exchange is the request of a record (bpf.EventHTTP) of a request with
// head h.
func (h *requestHead) exchange(ev *bpf.Event) *Request {
	r := pooledRequest(h.request)
	r.StatusCode, r.ResponseSize, r.TraceIDLow = int(ev.Status), int64(ev.Body), ev.TraceLow
	if h.parent >= 0 {
		// As the parser reads the header (an invalid value is no parent);
		// the tracestate is the head's, whose bytes the kernel matched.
		r.Parent = parseTraceparent(ev.Payload)
		if r.Parent.IsValid() {
			r.Parent = r.Parent.WithTraceState(h.state)
		}
	}
	return r
}

// standIn is the bytes of the request a stand-in (bpf.EventHTTPRequest,
// bpf.EventRedisRequest) is for: h's, or when h has a traceparent a copy in *buf with the value
// the event carries.
func (h *requestHead) standIn(ev *bpf.Event, buf *[]byte) []byte {
	if h.parent < 0 {
		return h.raw
	}
	*buf = append((*buf)[:0], h.raw...)
	value := (*buf)[h.parent : h.parent+bpf.TraceparentLen]
	if len(ev.Payload) == bpf.TraceparentLen {
		copy(value, ev.Payload)
	} else {
		// None came (the kernel always sends it): no parent, rather than
		// the one the head was parsed with.
		for i := range value {
			value[i] = '0'
		}
	}
	return *buf
}
