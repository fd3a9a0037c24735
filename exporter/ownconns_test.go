package exporter

import (
	"net/netip"
	"testing"

	"github.com/podtracer/podtracer/internal/otlptest"
)

// The ends of the agent's own OTLP connections, spans' and metrics' alike,
// are its own: the tracer leaves a neighbour's connection to one of them
// alone (a collector in the pod receiving the exports). Another address,
// or the collector's own end, is not.
func TestOwnConnections(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	e.Export(serverReq())
	rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) > 0 })
	rcv.WaitMetric(t, waitFor, func(m []otlptest.MetricPoint) bool { return len(m) > 0 })
	peers := rcv.Peers()
	if len(peers) == 0 {
		t.Fatal("the receiver saw no peer")
	}
	for _, p := range peers {
		if !e.OwnConnection(p) {
			t.Errorf("%v, an export's source, is not the agent's own", p)
		}
		if mapped := netip.AddrPortFrom(netip.AddrFrom16(p.Addr().As16()), p.Port()); !e.OwnConnection(mapped) {
			t.Errorf("%v (IPv4-mapped) is not the agent's own", mapped)
		}
	}
	collector := netip.MustParseAddrPort(rcv.Endpoint())
	if e.OwnConnection(collector) || e.OwnConnection(netip.MustParseAddrPort("127.0.0.1:1")) {
		t.Error("an address the agent did not connect from is its own")
	}
}
