package tracer

import (
	"fmt"
	"testing"
	"time"

	"github.com/podtracer/podtracer/bpf"
)

// BenchmarkHTTP1KeepAlive is the capture loop's cost per request of a
// keep-alive HTTP/1.1 server: one event for the request, one for the
// response, parsed, paired and turned into a Request (what `make bench`'s
// Go workload makes the agent do).
func BenchmarkHTTP1KeepAlive(b *testing.B) {
	var emitted int
	tr := New(Config{RouteHeuristic: true}, allProcesses{}, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) },
		func(*Request) { emitted++ })
	req := []byte("GET /users/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: loadgen\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
	resp := []byte("HTTP/1.1 200 OK\r\nDate: Sun, 22 Nov 2026 08:00:00 GMT\r\nContent-Length: 12\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello world\n")
	ev := bpf.Event{Type: bpf.EventData, Conn: 1, PID: 7, TID: 7, Local: serverAddr, Remote: clientAddr, Role: bpf.RoleServer}
	copy(ev.Comm[:], "hello")
	now := uint64(1_000_000_000)
	b.ReportAllocs()
	for b.Loop() {
		ev.Dir, ev.Payload, ev.Len = bpf.Ingress, req, uint32(len(req))
		ev.EnterNS, ev.ExitNS = now, now+1000
		tr.Handle(&ev)
		ev.Dir, ev.Payload, ev.Len = bpf.Egress, resp, uint32(len(resp))
		ev.EnterNS, ev.ExitNS = now+20_000, now+21_000
		tr.Handle(&ev)
		now += 50_000
	}
	if emitted != b.N {
		b.Fatal(fmt.Sprintf("%d requests for %d exchanges", emitted, b.N))
	}
}
