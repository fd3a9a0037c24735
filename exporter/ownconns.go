package exporter

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/stats"
)

// ownConns keeps the local ends of the agent's own OTLP connections. A
// collector in the pod (the OpenTelemetry Operator's sidecar mode, an
// agent at localhost:4317) is a neighbour like any other: its side of
// those connections would be traced, and every export would make a span
// that the next export carries, for ever. The tracer leaves alone a
// connection whose peer is one of them (Exporter.OwnConnection). It is a
// gRPC stats handler of the exporters' connections: gRPC tells it of each
// connection before the agent writes to it (the collector may write
// first: the tracer asks again in a connection's first second).
//
// has is asked for every event of a connection's first second, in the
// capture loop; the set changes only when the agent connects or
// disconnects. So readers load a map that is never written again, and a
// change writes a new one.
type ownConns struct {
	mu    sync.Mutex                             // serialises changes
	local atomic.Pointer[map[netip.AddrPort]int] // a count: a port may be reused before the old connection's end is told
}

func newOwnConns() *ownConns {
	o := &ownConns{}
	o.local.Store(&map[netip.AddrPort]int{})
	return o
}

type ownConnKey struct{}

// has tells whether peer is the local end of one of the agent's own
// connections.
func (o *ownConns) has(peer netip.AddrPort) bool {
	return (*o.local.Load())[plainAddrPort(peer)] > 0
}

// change adds delta to local's count, in a new map.
func (o *ownConns) change(local netip.AddrPort, delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := maps.Clone(*o.local.Load())
	if m[local] += delta; m[local] <= 0 {
		delete(m, local)
	}
	o.local.Store(&m)
}

func (o *ownConns) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	tcp, ok := info.LocalAddr.(*net.TCPAddr)
	if !ok {
		return ctx
	}
	local := plainAddrPort(tcp.AddrPort())
	o.change(local, 1)
	return context.WithValue(ctx, ownConnKey{}, local)
}

func (o *ownConns) HandleConn(ctx context.Context, s stats.ConnStats) {
	local, ok := ctx.Value(ownConnKey{}).(netip.AddrPort)
	if _, end := s.(*stats.ConnEnd); !end || !ok {
		return
	}
	o.change(local, -1)
}

// plainAddrPort is ap as the kernel's events have it: IPv4 unmapped, no
// IPv6 zone (Go's addresses of link-local ones carry one).
func plainAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

func (*ownConns) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (*ownConns) HandleRPC(context.Context, stats.RPCStats)                       {}
