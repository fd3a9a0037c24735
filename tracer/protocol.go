package tracer

import (
	"slices"

	"github.com/podtracer/podtracer/bpf"
)

// A protocolParser follows one connection that speaks one protocol. It is
// fed both directions' segments in the order the kernel saw them, and
// reports each finished exchange (request and response paired) through the
// emitter it was made with. It must never panic on any input, and must keep
// bounded state whatever it is fed.
type protocolParser interface {
	feed(dir bpf.Direction, seg *segment)
	// closed is called once when the connection closes: finish what can
	// be finished, emit nothing invented.
	closed(ts uint64)
}

// emitter receives finished exchanges from a protocolParser. r carries the
// protocol fields; the connection fills in the process, the addresses and
// the wall-clock times from start and end (kernel CLOCK_BOOTTIME ns).
type emitter func(r *Request, role Role, start, end uint64)

// A detector recognises its protocol from the first captured bytes of a
// connection, seen in direction dir (Ingress: the observed process received
// them). It returns nil when the bytes are not its protocol. The parser it
// returns is then fed that same first segment, and everything after.
type detector func(dir bpf.Direction, seg *segment, emit emitter) protocolParser

// registered lists the protocols the tracer can detect, in the order their
// detectors are tried. Each protocol's file adds itself in an init func,
// so that adding a protocol touches no other file.
var registered []registration

type registration struct {
	name     string
	priority int // lower is tried first
	detector func(Config) detector
}

// registerProtocol adds a protocol; called from init funcs only.
func registerProtocol(name string, priority int, d func(Config) detector) {
	registered = append(registered, registration{name, priority, d})
	slices.SortStableFunc(registered, func(a, b registration) int { return a.priority - b.priority })
}

// Protocols lists the names of every protocol the tracer knows, in
// detection order.
func Protocols() []string {
	names := make([]string, len(registered))
	for i, r := range registered {
		names[i] = r.name
	}
	return names
}

// detectors returns the detectors of the protocols cfg enables (all when
// cfg.Protocols is empty).
func detectors(cfg Config) []detector {
	var ds []detector
	for _, r := range registered {
		if cfg.enabled(r.name) {
			ds = append(ds, r.detector(cfg))
		}
	}
	return ds
}

// enabled tells whether the protocol registered as name is parsed.
func (cfg Config) enabled(name string) bool {
	return len(cfg.Protocols) == 0 || slices.Contains(cfg.Protocols, name)
}

// A stateful parser holds what it cannot learn again mid-stream, such as
// the database a connection uses or the statements it prepared. Pools
// keep such connections idle for long (HikariCP 10 minutes, pgx and
// go-redis 30), and a Redis connection may look idle while the kernel
// drops what it carries (bpf.Fast.Redis), so the tracer keeps it idle for
// longer (statefulIdle times IdleTimeout, 30 minutes by default) before it
// forgets it. The kernel reports closes; this bounds what a missed one
// (a process's exit under the syscall hooks) holds.
type stateful interface {
	stateful() bool
}

const statefulIdle = 15

// A successor is a parser that hands its connection over to another, as
// HTTP/1.1 does after an upgrade to h2c. The connection asks after each
// segment; nil means not (yet).
type successor interface {
	successor() protocolParser
}

// A tlsStarter is a parser of a protocol that asks for TLS inside itself
// (MySQL's SSL request): when the connection's plaintext starts coming
// (bpf.FlagPlaintext), startTLS tells whether it goes on from where the
// request left it. Any other parser gives way to detection, as on a new
// connection.
type tlsStarter interface {
	startTLS() bool
}

func init() {
	registerProtocol(ProtoHTTP, 10, func(cfg Config) detector {
		return detectHTTP1(cfg.RouteHeuristic, cfg.enabled("http2"), cfg.heads, cfg.h2Lost)
	})
}
