package exporter

import (
	"context"
	"net"
	"net/netip"
	"sync"

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
type ownConns struct {
	mu    sync.Mutex
	local map[netip.AddrPort]int // a count: a port may be reused before the old connection's end is told
}

func newOwnConns() *ownConns { return &ownConns{local: make(map[netip.AddrPort]int)} }

type ownConnKey struct{}

// has tells whether peer is the local end of one of the agent's own
// connections.
func (o *ownConns) has(peer netip.AddrPort) bool {
	peer = plainAddrPort(peer)
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.local[peer] > 0
}

func (o *ownConns) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	tcp, ok := info.LocalAddr.(*net.TCPAddr)
	if !ok {
		return ctx
	}
	local := plainAddrPort(tcp.AddrPort())
	o.mu.Lock()
	o.local[local]++
	o.mu.Unlock()
	return context.WithValue(ctx, ownConnKey{}, local)
}

func (o *ownConns) HandleConn(ctx context.Context, s stats.ConnStats) {
	local, ok := ctx.Value(ownConnKey{}).(netip.AddrPort)
	if _, end := s.(*stats.ConnEnd); !end || !ok {
		return
	}
	o.mu.Lock()
	if o.local[local]--; o.local[local] <= 0 {
		delete(o.local, local)
	}
	o.mu.Unlock()
}

// plainAddrPort is ap as the kernel's events have it: IPv4 unmapped, no
// IPv6 zone (Go's addresses of link-local ones carry one).
func plainAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

func (*ownConns) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (*ownConns) HandleRPC(context.Context, stats.RPCStats)                       {}
