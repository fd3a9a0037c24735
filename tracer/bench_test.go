package tracer

import (
	"encoding/binary"
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
		func(r *Request) { emitted++; r.Release() }) // as the exporter does
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

// BenchmarkGRPCUnary is the capture loop's cost per call of a gRPC server
// answering unary calls on one connection, as `make bench`'s gRPC workload
// makes the agent do: the call's HEADERS and DATA in one read, the reply's
// HEADERS, DATA and trailers in one write, every field in the HPACK
// dynamic tables after the first call.
func BenchmarkGRPCUnary(b *testing.B) {
	var emitted int
	tr := New(Config{RouteHeuristic: true}, allProcesses{}, func(ns uint64) time.Time { return time.Unix(0, int64(ns)) },
		func(r *Request) { emitted++; r.Release() }) // as the exporter does
	cli, srv := newH2Peer(), newH2Peer()
	call := func() []byte {
		return []byte(h2frame(h2Headers, h2FlagEndHeaders, 1, cli.block(":method", "POST", ":scheme", "http", ":path", "/demo.Echo/Say",
			":authority", "127.0.0.1:9000", "content-type", "application/grpc", "user-agent", "grpc-go/1.70.0", "te", "trailers")) +
			h2frame(h2Data, h2FlagEndStream, 1, []byte("\x00\x00\x00\x00\x07\x0a\x05hello")))
	}
	reply := func() []byte {
		return []byte(h2frame(h2Headers, h2FlagEndHeaders, 1, srv.block(":status", "200", "content-type", "application/grpc")) +
			h2frame(h2Data, 0, 1, []byte("\x00\x00\x00\x00\x07\x0a\x05hello")) +
			h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, srv.block("grpc-status", "0", "grpc-message", "")))
	}
	// setID writes stream id into every frame of b.
	setID := func(b []byte, id uint32) {
		for len(b) >= 9 {
			binary.BigEndian.PutUint32(b[5:9], id)
			b = b[9+(int(b[0])<<16|int(b[1])<<8|int(b[2])):]
		}
	}
	ev := bpf.Event{Type: bpf.EventData, Conn: 1, PID: 7, TID: 7, Local: serverAddr, Remote: clientAddr, Role: bpf.RoleServer}
	copy(ev.Comm[:], "grpc-echo")
	now := uint64(1_000_000_000)
	feed := func(dir bpf.Direction, data []byte) {
		ev.Dir, ev.Payload, ev.Len = dir, data, uint32(len(data))
		ev.EnterNS, ev.ExitNS = now, now+1000
		tr.Handle(&ev)
		now += 20_000
	}
	feed(bpf.Ingress, []byte(h2Preface+h2Settings0))
	feed(bpf.Egress, []byte(h2Settings0+h2frame(h2Settings, h2FlagAck, 0, nil)))
	feed(bpf.Ingress, call()) // the first call fills the tables
	feed(bpf.Egress, reply())
	req, resp := call(), reply()
	id := uint32(1)
	b.ReportAllocs()
	for b.Loop() {
		id += 2
		setID(req, id)
		setID(resp, id)
		feed(bpf.Ingress, req)
		feed(bpf.Egress, resp)
	}
	if emitted != b.N+1 {
		b.Fatal(fmt.Sprintf("%d calls for %d", emitted, b.N+1))
	}
}
