package tracer

import (
	"fmt"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/pod"
)

type connKey struct {
	pid  uint32
	sock uint64
}

// maxDetectTries is how many segments a connection may show before its
// protocol is known; after that it is ignored. A few are allowed because a
// connection older than the agent may first show the middle of a message.
const maxDetectTries = 8

// conn is one TCP connection of one neighbour process, and the parser of
// the protocol it speaks once that is known.
type conn struct {
	t        *Tracer
	proc     *pod.Process // nil: the process is not selected
	local    netip.AddrPort
	remote   netip.AddrPort
	parser   protocolParser
	tries    int
	ignored  bool
	lastSeen uint64
	asked    uint64 // when the process was last looked up (reselect)
	born     uint64 // its first event's time
	own      bool   // its peer is the agent's own connection (Config.Own): never followed
	tls      bool   // its bytes are a TLS connection's plaintext (bpf.FlagPlaintext)
}

// ownGrace is how long a new connection's peer is asked again whether it
// is the agent's own (Config.Own): gRPC tells the agent of its
// connection's local end after it connects, and a collector in the pod
// may write its SETTINGS before that.
const ownGrace = uint64(time.Second)

// reselectAfter is how often a connection whose process was not
// selected asks again: a process selected by its listening port
// (PODTRACER_OPEN_PORTS) opens its database pool, its Kafka and Redis
// clients, before it listens, and those connections live for hours.
const reselectAfter = uint64(5 * time.Second)

func newConn(t *Tracer, ev *bpf.Event, proc *pod.Process) *conn {
	c := &conn{t: t, proc: proc, local: ev.Local, remote: ev.Remote, ignored: proc == nil, asked: ev.ExitNS, born: ev.ExitNS}
	c.checkOwn(ev)
	return c
}

// checkOwn asks, in the connection's first ownGrace, whether its peer is
// one of the agent's own connections; once it is, it is not followed.
func (c *conn) checkOwn(ev *bpf.Event) {
	if !c.own && c.t.cfg.Own != nil && ev.ExitNS-c.born < ownGrace && c.t.cfg.Own(c.remote) {
		c.own, c.ignored = true, true
	}
}

// reselect looks the connection's process up again, at most every
// reselectAfter, while it is not selected; once it is, the connection is
// followed from the event at hand (the parsers find their place in a
// stream joined midway).
func (c *conn) reselect(ev *bpf.Event) {
	if c.proc != nil || c.own || ev.ExitNS-c.asked < reselectAfter {
		return
	}
	c.asked = ev.ExitNS
	if c.proc = c.t.lookup(ev); c.proc != nil {
		c.ignored = false
	}
}

func (c *conn) feed(dir bpf.Direction, seg *segment) {
	if c.ignored {
		return
	}
	defer c.recoverParser()
	if c.parser == nil {
		if len(seg.data) == 0 {
			return // counted, not read (io_uring, splice): nothing to detect, no try spent
		}
		for _, detect := range c.t.detectors {
			if c.parser = detect(dir, seg, c.emit); c.parser != nil {
				break
			}
		}
		if c.parser == nil {
			if c.tries++; c.tries >= maxDetectTries {
				c.ignored = true
			}
			return
		}
	}
	c.parser.feed(dir, seg)
	if s, ok := c.parser.(successor); ok {
		if next := s.successor(); next != nil {
			c.parser = next
		}
	}
}

// startTLS takes the connection's bytes as its TLS plaintext from now on
// (bpf.FlagPlaintext): its parser goes on if the protocol asked for TLS
// itself (tlsStarter), else the plaintext is detected afresh (what the
// parser saw, PostgreSQL's SSLRequest or nothing, is not the protocol's
// stream any more).
func (c *conn) startTLS() {
	c.tls = true
	if s, ok := c.parser.(tlsStarter); ok && s.startTLS() {
		return
	}
	c.parser, c.tries = nil, 0
	c.ignored = c.proc == nil || c.own
}

// lostPlaintext forgets the connection's parser: bytes it did not see
// came before (bpf.FlagLost with bpf.FlagPlaintext). The next bytes are
// detected afresh; the requests waiting for their responses get no span.
func (c *conn) lostPlaintext() {
	c.parser, c.tries = nil, 0
}

func (c *conn) close(ts uint64) {
	if c.parser != nil && !c.ignored {
		defer c.recoverParser()
		c.parser.closed(ts)
	}
}

// recoverParser contains a parser's panic, a bug met on bytes nobody
// foresaw: the connection is no longer followed, and the tracer counts and
// keeps the failure for the log. Every other connection, and the agent, go
// on.
func (c *conn) recoverParser() {
	if p := recover(); p != nil {
		c.t.parserFailed(fmt.Sprintf("%T: %v\n%s", c.parser, p, debug.Stack()))
		c.ignored, c.parser = true, nil
	}
}

// emit completes a finished exchange with what the connection knows and
// hands it on.
func (c *conn) emit(r *Request, role Role, start, end uint64) {
	r.Role = role
	r.Process = c.proc
	r.Local, r.Remote = c.local, c.remote
	r.TLS = c.tls
	r.Start = c.t.wall(start)
	r.End = c.t.wall(max(start, end))
	c.t.requests.Add(1)
	c.t.emit(r)
}
