package tracer

import (
	"testing"

	"github.com/podtracer/podtracer/bpf"
)

// FuzzHTTP1 feeds arbitrary bytes, cut into arbitrary segments (some of
// them counted, not read, when capture's top bits say so), both ways on
// one connection: the tracer must neither panic nor emit a request without
// a status.
func FuzzHTTP1(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), uint8(7), uint16(64))
	f.Add([]byte("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), []byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No\r\n\r\n"), uint8(3), uint16(16))
	f.Add([]byte("GET /x HTTP/1.0\r\n\r\n"), []byte("HTTP/1.0 200 OK\r\n\r\nbody"), uint8(1), uint16(4096))
	f.Add([]byte("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 No\r\n\r\n"), uint8(5), uint16(3<<12|64))
	f.Fuzz(func(t *testing.T, reqs, resps []byte, cut uint8, capture uint16) {
		h := newHarness(&testing.T{}, int(capture%4096)+1)
		h.countEvery = int(capture >> 12)
		step := int(cut%32) + 1
		for len(reqs) > 0 || len(resps) > 0 {
			n := min(step, len(reqs))
			if n > 0 {
				h.piece(1, bpf.Ingress, string(reqs[:n]))
				reqs = reqs[n:]
			}
			n = min(step+3, len(resps))
			if n > 0 {
				h.piece(1, bpf.Egress, string(resps[:n]))
				resps = resps[n:]
			}
		}
		h.close(1)
		for _, r := range h.got {
			if r.StatusCode < 100 || r.Method == "" {
				t.Fatalf("emitted a request without method or status: %+v", r)
			}
		}
		if s := h.tracer.Stats(); s.ParserFailures != 0 {
			t.Fatalf("a parser failed (panicked) %d times: the tracer recovers, but it is a bug", s.ParserFailures)
		}
		if h.tracer.Stats().Connections != 0 {
			t.Fatal("connection kept after close")
		}
	})
}
