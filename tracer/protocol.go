package tracer

import "github.com/podtracer/podtracer/bpf"

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
