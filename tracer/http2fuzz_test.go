package tracer

import (
	"testing"

	"github.com/podtracer/podtracer/bpf"
)

// h2FuzzSeeds are the first bytes each way of the captured connections.
func h2FuzzSeeds(f *testing.F) [][2][]byte {
	var seeds [][2][]byte
	for name := range h2CaptureWant {
		var c, s []byte
		for _, r := range loadCapture(f, name) {
			if r.conn != 1 || r.close {
				continue
			}
			// Small seeds: the fuzzer minimizes every new input, and that
			// takes long on big ones.
			if r.fromClient && len(c) < 1024 {
				c = append(c, r.data...)
			} else if !r.fromClient && len(s) < 1024 {
				s = append(s, r.data...)
			}
		}
		seeds = append(seeds, [2][]byte{c, s})
	}
	return seeds
}

// FuzzHTTP2 feeds arbitrary bytes both ways on one connection, cut into
// segments, with the preface or without (a connection joined mid-stream):
// the parser must neither panic nor emit a request without method and path,
// keep its state bounded, and forget the connection on close.
func FuzzHTTP2(f *testing.F) {
	for _, s := range h2FuzzSeeds(f) {
		f.Add(s[0], s[1], uint8(0), uint16(1024))
		f.Add(s[0], s[1], uint8(13), uint16(64))
		f.Add(s[0], s[1], uint8(13), uint16(3<<12|64))
		if len(s[0]) > 24 {
			f.Add(s[0][24:], s[1], uint8(200), uint16(4096))
		}
	}
	f.Fuzz(func(t *testing.T, cli, srv []byte, cut uint8, capture uint16) {
		h := newHarness(&testing.T{}, int(capture%4096)+1)
		h.countEvery = int(capture >> 12) // some pieces counted, not read
		step := int(cut)
		srvStep := 0
		if step > 0 {
			srvStep = step + 5
		}
		h.interleave(1, bpf.Ingress, cli, step, bpf.Egress, srv, srvStep, func() {
			if c := h.tracer.conns[connKey{pid: 7, sock: 1}]; c != nil {
				if p, ok := c.parser.(*http2Conn); ok {
					if len(p.streams) > h2MaxStreams {
						t.Fatalf("%d streams", len(p.streams))
					}
					for _, d := range p.dirs {
						if len(d.block) > h2MaxHeaderBlock || len(d.buf) > h2MaxHeaderBlock || d.table.size > h2MaxTableSize+4096 {
							t.Fatalf("unbounded: block %d buf %d table %d", len(d.block), len(d.buf), d.table.size)
						}
					}
				}
			}
		})
		h.close(1)
		for _, r := range h.got {
			if r.ProtocolVersion != "2" && r.Protocol != ProtoGRPC {
				continue // random bytes may well be another protocol
			}
			if r.Method == "" || (r.Path == "" && r.Method != "CONNECT") {
				t.Fatalf("emitted a request without method or path: %+v", r)
			}
			if r.Protocol == ProtoHTTP && r.StatusCode == 0 && r.ErrorCode == "" && r.ProtocolVersion == "2" {
				t.Fatalf("emitted an HTTP/2 request without status or error: %+v", r)
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

// FuzzHPACKPartial: on any header block sequence that hpack decodes, the
// partial decoder (starting from an empty, hence known, table) decodes the
// same fields; on any other it does not panic.
func FuzzHPACKPartial(f *testing.F) {
	p := newH2Peer()
	f.Add(p.block(":method", "GET", ":path", "/a", "x", "y"), p.block(":method", "GET", ":path", "/a", "x", "z"))
	f.Add([]byte{0x3f, 0xe1, 0x1f}, []byte{0x82, 0xbe})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		checkHPACKDifferential(t, [][]byte{a, b})
		var tbl hpackPartial
		tbl.max = 4096
		tbl.decode(a, true, nil)
		tbl.decode(b, false, nil)
	})
}
