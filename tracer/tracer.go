package tracer

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/pod"
)

// Config tunes the tracer.
type Config struct {
	// RouteHeuristic fills Request.Route from the path with ids replaced
	// (see heuristicRoute); off, Route stays empty.
	RouteHeuristic bool
	// MaxConnections bounds the connections followed at once; beyond it
	// new connections are not followed (and counted).
	MaxConnections int
	// IdleTimeout forgets connections silent for that long, such as those
	// of processes that exited without closing them.
	IdleTimeout time.Duration
	// Protocols names the protocols to parse (see Protocols); empty: all.
	Protocols []string
	// QueryText says what goes in db.query.text: QuerySanitized (the
	// default: literals replaced by "?"), QueryFull or QueryOff.
	QueryText string
	// RedisKeys puts the key of Redis commands on their spans.
	RedisKeys bool
	// Heads, when the kernel stands for requests whose heads the agent
	// has (bpf.Fast.Spans), is where the tracer registers them.
	Heads HeadRegistry
	// Own, when set, tells the agent's own connections by their local
	// end: a neighbour's connection whose peer is one (a collector in the
	// pod, receiving the agent's exports) is not followed.
	Own func(peer netip.AddrPort) bool

	heads  *heads         // made by New from Heads
	h2Lost *atomic.Uint64 // made by New: Stats.HTTP2Lost
}

// Values of Config.QueryText.
const (
	QuerySanitized = "sanitized"
	QueryFull      = "full"
	QueryOff       = "off"
)

// Processes tells the tracer who a neighbour is, and whether it is
// selected: Lookup returns nil for processes that must not be traced.
type Processes interface {
	Lookup(pid uint32, comm string) *pod.Process
}

// servingProcesses is Processes that can select a process by the local
// port of a connection it serves (pod.Registry with PODTRACER_OPEN_PORTS:
// a worker that does not listen itself).
type servingProcesses interface {
	LookupServing(pid uint32, comm string, local uint16) *pod.Process
}

// lookup asks who the process of ev's connection is, and whether it is
// selected.
func (t *Tracer) lookup(ev *bpf.Event) *pod.Process {
	if s, ok := t.procs.(servingProcesses); ok {
		return s.LookupServing(ev.PID, ev.CommString(), ev.Local.Port())
	}
	return t.procs.Lookup(ev.PID, ev.CommString())
}

// livingProcesses is Processes that can tell whether a pid still runs:
// the idle sweep then forgets at once the stateful connections of the
// processes that exited (whose closes the syscall hooks do not see).
type livingProcesses interface {
	Alive(pid uint32) bool
}

// Stats are the tracer's counters.
type Stats struct {
	Requests       uint64 // requests finished and handed on
	Connections    uint64 // connections followed now
	ConnsUntracked uint64 // connections not followed: MaxConnections reached
	// ParserFailures counts connections given up because their parser
	// panicked (see LastFailure).
	ParserFailures uint64
	// KernelHeads are the request heads and Redis command shapes
	// registered with the kernel now; HeadMisses the records and
	// stand-ins the tracer could not use (their requests are lost): of a
	// head or shape it did not have, of the other kind, or a Redis record
	// on a connection that speaks something else; HeadMismatches the
	// requests whose hash the agent computed unlike the kernel (their
	// heads are not registered).
	KernelHeads, HeadMisses, HeadMismatches uint64
	// KernelRecords are the requests and commands made from the kernel's
	// records of their exchanges (bpf.EventHTTP, bpf.EventRedis), without
	// their bytes.
	KernelRecords uint64
	// HTTP2Lost counts the times an HTTP/2 connection's direction lost
	// its place in the frames (a frame header past the captured prefix:
	// a write of several large frames, say). Its header table is then
	// only partly known, and requests whose fields it holds get no span.
	HTTP2Lost uint64
}

// Tracer turns capture events into finished requests. Handle is not safe
// for concurrent use: one goroutine reads the ring buffer and calls it.
type Tracer struct {
	cfg   Config
	procs Processes
	wall  func(bootNS uint64) time.Time
	emit  func(*Request)

	conns     map[connKey]*conn
	lastSweep uint64
	// closed remembers, for lateAfterClose, the connections whose close
	// came: an event of one that comes after it must not take it up
	// again (see late).
	closed map[connKey]closedConn
	// closedSwept is when bury last swept closed.
	closedSwept uint64
	detectors   []detector
	// seg is the segment being fed. Parsers use a segment only during the
	// call that feeds it (its bytes are the event's, reused by the next
	// one), so one serves every event without an allocation.
	seg segment
	// standIn holds the bytes of a stand-in whose head has a traceparent.
	standIn []byte

	requests, untracked atomic.Uint64
	live                atomic.Int64
	failures            atomic.Uint64
	lastFailure         atomic.Pointer[string]
}

// New returns a tracer that hands each finished request to emit. wall
// converts kernel timestamps to wall-clock time.
func New(cfg Config, procs Processes, wall func(uint64) time.Time, emit func(*Request)) *Tracer {
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 65536
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	cfg.heads = newHeads(cfg.Heads, cfg.RouteHeuristic)
	cfg.h2Lost = new(atomic.Uint64)
	t := &Tracer{cfg: cfg, procs: procs, wall: wall, emit: emit, conns: make(map[connKey]*conn), closed: make(map[connKey]closedConn)}
	t.detectors = detectors(cfg)
	return t
}

// Handle consumes one capture event.
func (t *Tracer) Handle(ev *bpf.Event) {
	key := connKey{pid: ev.PID, sock: ev.Conn}
	c := t.conns[key]
	if c != nil && ev.Type != bpf.EventClose && ev.Local.Port() != 0 && (ev.Local != c.local || ev.Remote != c.remote) {
		// Another connection on the socket memory of one whose close
		// was lost: that one is over.
		c.close(c.lastSeen)
		t.forget(key)
		c = nil
	}
	var head *requestHead
	switch ev.Type {
	case bpf.EventClose:
		if c != nil {
			c.close(ev.ExitNS)
			t.forget(key)
		}
		t.bury(key, ev)
		return
	case bpf.EventTLS:
		// A TLS handshake: the bytes that matter come as plaintext
		// (bpf.FlagPlaintext), once the agent has the uprobes in.
		return
	case bpf.EventHTTP, bpf.EventHTTPRequest, bpf.EventRedis, bpf.EventRedisRequest:
		if head = t.cfg.heads.lookup(ev.HeadHash, ev.ExitNS); head == nil {
			return
		}
		if (head.redis != nil) != (ev.Type == bpf.EventRedis || ev.Type == bpf.EventRedisRequest) {
			t.cfg.heads.misses.Add(1) // a hash of the other kind: the kernel's and the agent's hashes disagree
			return
		}
	}
	if c == nil {
		if t.late(key, ev) || ev.Local.Port() == 0 {
			// A closed connection's: the kernel unhashes a socket
			// (its local port 0) when it closes.
			return
		}
		if len(t.conns) >= t.cfg.MaxConnections {
			t.untracked.Add(1)
			return
		}
		c = newConn(t, ev, t.lookup(ev))
		t.conns[key] = c
		t.live.Add(1)
	}
	c.lastSeen = ev.ExitNS
	c.checkOwn(ev)
	c.reselect(ev)
	switch ev.Type {
	case bpf.EventHTTP:
		// A server exchange whose request had this head: the kernel
		// measured it for a span, nothing to parse.
		if !c.ignored {
			t.cfg.heads.records.Add(1)
			c.emit(head.exchange(ev), RoleServer, ev.EnterNS, ev.ExitNS)
		}
	case bpf.EventHTTPRequest, bpf.EventRedisRequest:
		// The request's bytes, as they came (a Redis command's, of its
		// shape: its arguments are not in its span); its response follows.
		t.seg = segment{data: head.standIn(ev, &t.standIn), total: len(head.raw) + int(head.request.RequestSize), enter: ev.EnterNS, exit: ev.EnterNS, traceLow: ev.TraceLow}
		c.feed(bpf.Ingress, &t.seg)
	case bpf.EventRedis:
		// A server's command and its reply, not an error: the span is all
		// in the command's shape, and the connection's database.
		if !c.ignored {
			if c.parser == nil {
				c.parser = newRedisConn(t.cfg, bpf.Ingress, c.emit)
			}
			if rc, ok := c.parser.(*redisConn); ok && rc.role == RoleServer {
				if rc.record(head.redis, ev.EnterNS, ev.ExitNS, ev.TraceLow) {
					t.cfg.heads.records.Add(1)
				}
			} else {
				t.cfg.heads.misses.Add(1) // the connection speaks something else: lost
			}
		}
	default:
		if ev.Flags&bpf.FlagPlaintext != 0 && !c.tls {
			c.startTLS()
		}
		if c.tls && ev.Flags&bpf.FlagPlaintext == 0 {
			// A TLS connection's records that the kernel did not
			// hold back (one older than the agent, first seen in
			// the middle of a record): its plaintext comes apart.
			break
		}
		if ev.Flags&(bpf.FlagPlaintext|bpf.FlagLost) == bpf.FlagPlaintext|bpf.FlagLost {
			// Plaintext the uprobes could not read was received
			// before: what the parser waits for may have been in it.
			// It starts afresh, so that no request is paired with
			// another's response.
			c.lostPlaintext()
			break
		}
		t.seg = segment{data: ev.Payload, total: int(ev.Len), tail: ev.Tail, pieces: ev.Pieces, enter: ev.EnterNS, exit: ev.ExitNS, traceLow: ev.TraceLow, flags: ev.Flags,
			headHash: ev.HeadHash}
		c.feed(ev.Dir, &t.seg)
	}
	if ev.ExitNS > t.lastSweep && ev.ExitNS-t.lastSweep > uint64(10*time.Second) {
		t.sweep(ev.ExitNS)
	}
}

func (t *Tracer) forget(key connKey) {
	delete(t.conns, key)
	t.live.Add(-1)
}

// closedConn is a connection whose close came: its ends as the close
// event had them, and when.
type closedConn struct {
	local, remote netip.AddrPort
	at            uint64
}

// lateAfterClose is how long after its close event a connection's own
// events may still come. The kernel reports the close when the socket's
// state changes, and a send or receive when its syscall is done with the
// socket: a send that a reset ends on its way (on loopback the peer's
// reset comes back inside the send: a server's GOAWAY written to a client
// that closed) reaches user space after the close. Taken for a new
// connection, such an event would leave a parser under the socket's
// identity (connKey) with no close to come, and the kernel gives that
// identity to the next socket it allocates there: a new connection would
// be fed to a parser in the middle of another's stream (an HTTP/2 one
// takes "PRI * HTTP/2.0" or "GET /" for a frame header of megabytes).
const lateAfterClose = uint64(time.Second)

// maxClosed bounds the closes remembered for late: a second's worth on a
// busy server, a few hundred KB.
const maxClosed = 4096

// bury remembers the connection that ev closes, for late.
func (t *Tracer) bury(key connKey, ev *bpf.Event) {
	if len(t.closed) >= maxClosed {
		// At most one sweep per lateAfterClose/10: above maxClosed
		// closes a second, each would walk the map and find little.
		if ev.ExitNS > t.closedSwept && ev.ExitNS-t.closedSwept >= lateAfterClose/10 {
			t.sweepClosed(ev.ExitNS)
			t.closedSwept = ev.ExitNS
		}
		if len(t.closed) >= maxClosed {
			return // more closes a second than that: the rest go unguarded
		}
	}
	t.closed[key] = closedConn{local: ev.Local, remote: ev.Remote, at: ev.ExitNS}
}

// late tells whether ev, of no connection followed, belongs to the
// connection closed last under key: the same ends, soon after its close.
// Anything else is a new connection that the socket's identity went to.
func (t *Tracer) late(key connKey, ev *bpf.Event) bool {
	cc, ok := t.closed[key]
	if !ok {
		return false
	}
	if ev.Local == cc.local && ev.Remote == cc.remote && (ev.ExitNS <= cc.at || ev.ExitNS-cc.at < lateAfterClose) {
		return true
	}
	delete(t.closed, key)
	return false
}

// sweepClosed forgets the closes older than lateAfterClose.
func (t *Tracer) sweepClosed(now uint64) {
	for key, cc := range t.closed {
		if now > cc.at && now-cc.at >= lateAfterClose {
			delete(t.closed, key)
		}
	}
}

// sweep forgets connections idle for longer than IdleTimeout (stateful
// parsers' for longer).
func (t *Tracer) sweep(now uint64) {
	t.lastSweep = now
	t.cfg.heads.sweep(now)
	t.sweepClosed(now)
	idle := uint64(t.cfg.IdleTimeout)
	living, _ := t.procs.(livingProcesses)
	alive := map[uint32]bool{} // per sweep: a process's connections ask once
	for key, c := range t.conns {
		if now <= c.lastSeen || now-c.lastSeen <= idle {
			continue
		}
		if s, ok := c.parser.(stateful); ok && s.stateful() && now-c.lastSeen <= statefulIdle*idle {
			a, asked := alive[key.pid]
			if !asked {
				a = living == nil || living.Alive(key.pid)
				alive[key.pid] = a
			}
			if a {
				continue
			}
		}
		t.forget(key)
	}
}

// Stats returns the tracer's counters; safe from any goroutine.
func (t *Tracer) Stats() Stats {
	s := Stats{Requests: t.requests.Load(), Connections: uint64(t.live.Load()), ConnsUntracked: t.untracked.Load(),
		ParserFailures: t.failures.Load(), HTTP2Lost: t.cfg.h2Lost.Load()}
	if hs := t.cfg.heads; hs != nil {
		s.KernelHeads, s.HeadMisses, s.HeadMismatches = uint64(hs.registered.Load()), uint64(hs.misses.Load()), uint64(hs.mismatched.Load())
		s.KernelRecords = uint64(hs.records.Load())
	}
	return s
}

func (t *Tracer) parserFailed(what string) {
	t.lastFailure.Store(&what)
	t.failures.Add(1)
}

// LastFailure describes the last parser failure: the parser, the panic and
// its stack; "" when there was none. Safe from any goroutine.
func (t *Tracer) LastFailure() string {
	if s := t.lastFailure.Load(); s != nil {
		return *s
	}
	return ""
}

// splitTarget takes the path and query from a request target, in origin
// form ("/a?b") or absolute form ("http://host/a?b", sent to proxies), and
// the host and port from the Host header, or the target's authority.
func splitTarget(target, hostHeader string) (path, query, host string, port int) {
	authority := hostHeader
	if rest, ok := strings.CutPrefix(target, "http://"); ok {
		a, p, found := strings.Cut(rest, "/")
		if authority == "" {
			authority = a
		}
		target = "/"
		if found {
			target = "/" + p
		}
	}
	path, query, _ = strings.Cut(target, "?")
	if i := strings.IndexByte(path, '#'); i >= 0 {
		path = path[:i]
	}
	host, port = splitHostPort(authority)
	return path, query, host, port
}

func splitHostPort(hp string) (string, int) {
	if hp == "" {
		return "", 0
	}
	if hp[0] == '[' { // [::1]:8080
		end := strings.IndexByte(hp, ']')
		if end < 0 {
			return hp, 0
		}
		return hp[1:end], atoiPort(strings.TrimPrefix(hp[end+1:], ":"))
	}
	if i := strings.LastIndexByte(hp, ':'); i >= 0 && strings.Count(hp, ":") == 1 {
		return hp[:i], atoiPort(hp[i+1:])
	}
	return hp, 0
}

func atoiPort(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' || n > 65535 {
			return 0
		}
		n = n*10 + int(s[i]-'0')
	}
	if n > 65535 {
		return 0
	}
	return n
}
