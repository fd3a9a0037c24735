package tracer

import (
	"net/netip"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/pod"
)

type connKey struct {
	pid  uint32
	sock uint64
}

// maxPending bounds pipelined requests waiting for their responses.
const maxPending = 64

// conn is one TCP connection of one neighbour process: a parser for each
// direction, and the requests waiting for their responses.
type conn struct {
	t       *Tracer
	proc    *pod.Process // nil: the process is not selected
	local   netip.AddrPort
	remote  netip.AddrPort
	in, out http1Stream
	pending []*message
	// requestDir is the direction requests travel; set by the first one.
	requestDir bpf.Direction
	sawRequest bool
	lastSeen   uint64
}

func newConn(t *Tracer, ev *bpf.Event, proc *pod.Process) *conn {
	c := &conn{t: t, proc: proc, local: ev.Local, remote: ev.Remote}
	c.in.onHead = func(m *message) { c.onHead(bpf.Ingress, m) }
	c.out.onHead = func(m *message) { c.onHead(bpf.Egress, m) }
	c.in.onComplete = c.onComplete
	c.out.onComplete = c.onComplete
	if proc == nil {
		c.in.state, c.out.state = stDone, stDone
	}
	return c
}

func (c *conn) feed(dir bpf.Direction, seg *segment) {
	if dir == bpf.Ingress {
		c.in.feed(seg)
	} else {
		c.out.feed(seg)
	}
}

func (c *conn) close(ts uint64) {
	// A body that runs until close ends here; requests still waiting for
	// a response get no span: nothing is invented.
	c.in.closed(ts)
	c.out.closed(ts)
	c.pending = nil
}

func (c *conn) onHead(dir bpf.Direction, m *message) {
	if m.request {
		if c.sawRequest && dir != c.requestDir {
			// Requests both ways: not a plain HTTP/1 client-server talk.
			return
		}
		c.sawRequest, c.requestDir = true, dir
		if len(c.pending) == maxPending {
			c.pending = c.pending[1:]
		}
		c.pending = append(c.pending, m)
		return
	}
	if m.interimResp || len(c.pending) == 0 || dir == c.requestDir {
		return // 100 Continue, or a response to a request we never saw
	}
	m.req = c.pending[0]
	c.pending = c.pending[1:]
	if m.req.method == "HEAD" {
		m.noBody = true
	}
	if m.req.method == "CONNECT" && m.status/100 == 2 {
		m.upgrade = true // a tunnel follows
	}
}

func (c *conn) onComplete(m *message) {
	if m.request || m.req == nil {
		return
	}
	c.t.finish(c, m.req, m)
}
