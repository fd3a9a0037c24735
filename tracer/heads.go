package tracer

import (
	"errors"
	"sync/atomic"

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

// maxHeads bounds the heads the tracer keeps: those registered with the
// kernel (at most bpf.MaxHeads, about 1 kB each at most) and the hashes of
// those seen once, which are registered when they come again.
const maxHeads = 2 * bpf.MaxHeads

// requestHead is a request head the agent parsed, kept by the kernel's hash
// of it: what every request with those same bytes has. A head seen once
// has only its use time.
type requestHead struct {
	raw []byte // the head's bytes, for a stand-in; nil when seen once

	method, path, query, route string
	host                       string
	hostPort                   int
	version, userAgent         string
	bodySize                   int64 // its Content-Length

	registered bool   // with the kernel
	used       uint64 // when last parsed or stood for, kernel ns
}

// heads are the request heads of the kernel's spans. A head parsed twice
// is registered: one that comes once (an id in the path, a changing
// cookie) costs no map update. Only the tracer's goroutine uses them.
type heads struct {
	kernel HeadRegistry
	routes bool // fill route by heuristicRoute
	byHash map[uint64]*requestHead
	// registered counts the heads registered; mismatched, the heads whose
	// hash the agent computed unlike the kernel (none, unless they
	// disagree); misses, the records and stand-ins of a head the tracer
	// did not have.
	registered, mismatched, misses atomic.Int64
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
	h := hs.byHash[hash]
	if h != nil && h.raw != nil {
		// Registered, or taken back to make room.
		h.used = now
		if !h.registered {
			hs.register(hash, h)
		}
		return
	}
	if bpf.HeadHash(head) != hash {
		hs.mismatched.Add(1)
		return
	}
	if h == nil {
		if len(hs.byHash) >= maxHeads {
			hs.shed()
		}
		hs.byHash[hash] = &requestHead{used: now}
		return
	}
	*h = requestHead{raw: append([]byte(nil), head...), method: m.method, userAgent: m.userAgent, version: "1.1", used: now}
	if m.minor == '0' {
		h.version = "1.0"
	}
	if m.contentLen > 0 {
		h.bodySize = m.contentLen
	}
	h.path, h.query, h.host, h.hostPort = splitTarget(m.target, m.host)
	if hs.routes {
		h.route = heuristicRoute(h.path)
	}
	hs.register(hash, h)
}

// register registers h with the kernel; when the kernel holds all it can,
// the head stood for least recently makes room.
func (hs *heads) register(hash uint64, h *requestHead) {
	err := hs.kernel.AddHead(hash)
	if errors.Is(err, bpf.ErrHeadsFull) {
		var oldest uint64
		var victim *requestHead
		for k, o := range hs.byHash {
			if o.registered && (victim == nil || o.used < victim.used) {
				oldest, victim = k, o
			}
		}
		if victim != nil {
			if err = hs.kernel.RemoveHead(oldest); err == nil {
				// It stays known: the kernel may have stood for it just now.
				victim.registered = false
				hs.registered.Add(-1)
				err = hs.kernel.AddHead(hash)
			}
		}
	}
	if err != nil {
		// The head goes up whole each time (and is tried again then):
		// nothing lost.
		return
	}
	h.registered = true
	hs.registered.Add(1)
}

// shed forgets a quarter of the heads not registered.
func (hs *heads) shed() {
	n := maxHeads / 4
	for k, h := range hs.byHash {
		if n == 0 {
			return
		}
		if !h.registered {
			delete(hs.byHash, k)
			n--
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

// request is the exchange of a record (bpf.EventHTTP) of a request with
// head h.
func (h *requestHead) request(ev *bpf.Event) *Request {
	return &Request{
		Protocol:        ProtoHTTP,
		Method:          h.method,
		Path:            h.path,
		Query:           h.query,
		Route:           h.route,
		Host:            h.host,
		HostPort:        h.hostPort,
		StatusCode:      int(ev.Status),
		ProtocolVersion: h.version,
		UserAgent:       h.userAgent,
		RequestSize:     h.bodySize,
		ResponseSize:    int64(ev.Body),
		TraceIDLow:      ev.TraceLow,
		GRPCStatus:      -1,
		Partition:       -1,
	}
}
