package tracer

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/podtracer/podtracer/bpf"
)

// h2Kernel adds to each event of one direction of an HTTP/2 connection
// the pieces the kernel adds (bpf/capture.c, h2_follow): what the agent
// reads of the frames past the captured prefix.
type h2Kernel struct {
	stream []byte // the direction's bytes so far
	sent   int    // of which in events already
}

// pieces returns the pieces of the next event, data, with a prefix of
// capture bytes.
func (k *h2Kernel) pieces(data string, capture int) []byte {
	base := len(k.stream)
	k.stream = append(k.stream, data...)
	var pieces []byte
	for off := 0; off+9 <= len(k.stream); {
		if off == 0 && strings.HasPrefix(string(k.stream), h2Preface) {
			off = len(h2Preface)
			continue
		}
		f := parseH2Frame(k.stream[off:])
		want := 0
		switch f.typ {
		case h2Headers, h2PushPromise, h2Continuation:
			want = int(f.length)
		case h2RSTStream, h2GoAway:
			want = min(int(f.length), 8)
		}
		// A header the prefix cuts goes up whole, and the payload
		// wanted with it.
		from, to := max(off, base), min(off+9+want, len(k.stream))
		if off+9 <= base+capture {
			from = max(off+9, base+capture)
		}
		if from < to && to > base {
			pieces = binary.LittleEndian.AppendUint32(pieces, uint32(from-base))
			pieces = binary.LittleEndian.AppendUint16(pieces, uint16(to-from))
			pieces = append(pieces, k.stream[from:to]...)
		}
		off += 9 + int(f.length)
	}
	return pieces
}

// sendPieces is send with the kernel's pieces.
func (h *harness) sendPieces(sock uint64, dir bpf.Direction, data string, pieces []byte) {
	ev := h.dataEvent(sock, dir, data)
	ev.Pieces = pieces
	h.tracer.Handle(&ev)
}

// With the kernel's pieces, an HTTP/2 connection keeps its place in the
// frames through writes whose frames go on past the prefix: big messages
// in either direction, and header blocks after them whose fields enter the
// HPACK tables, so that later calls that refer to those entries still
// decode. Without the pieces the same bytes lose it (the control).
func TestHTTP2PiecesKeepPlace(t *testing.T) {
	for _, withPieces := range []bool{true, false} {
		cli, srv := newH2Peer(), newH2Peer()
		h := newHarness(t, 64)
		var kin, kout h2Kernel
		send := func(dir bpf.Direction, data string) {
			k := &kin
			if dir == out {
				k = &kout
			}
			p := k.pieces(data, h.capture)
			if !withPieces {
				p = nil
			}
			h.sendPieces(1, dir, data, p)
		}
		send(in, h2Preface+h2Settings0)
		send(out, h2Settings0+h2frame(h2Settings, h2FlagAck, 0, nil))
		big := []byte(strings.Repeat("x", 3000))
		call := func(id uint32) string {
			// Each call's :path, once inserted, is an index into the
			// client's table; the response's fields into the server's.
			return h2frame(h2Headers, h2FlagEndHeaders, id, cli.block(":method", "POST", ":scheme", "http", ":path", "/demo.Echo/Say",
				":authority", "x", "content-type", "application/grpc", "x-call", strings.Repeat("c", int(id)))) +
				h2frame(h2Data, h2FlagEndStream, id, big)
		}
		reply := func(id uint32) string {
			return h2frame(h2Headers, h2FlagEndHeaders, id, srv.block(":status", "200", "content-type", "application/grpc")) +
				h2frame(h2Data, 0, id, big) +
				h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, id, srv.block("grpc-status", "0", "x-reply", strings.Repeat("r", int(id))))
		}
		// Two calls per write each way: the second's frames lie past the
		// prefix.
		for _, id := range []uint32{1, 5} {
			send(in, call(id)+call(id+2))
			send(out, reply(id)+reply(id+2))
		}
		got, lost := describeAll(h.got), h.tracer.Stats().HTTP2Lost
		if withPieces {
			if want := slices.Repeat([]string{"server grpc demo.Echo/Say grpc=0"}, 4); !slices.Equal(got, want) || lost != 0 {
				t.Errorf("with pieces: got %q, %d directions lost; want %q, none lost", got, lost, want)
			}
		} else if lost == 0 || len(got) == 4 {
			t.Errorf("without pieces: got %q, %d directions lost; want the place lost", got, lost)
		}
	}
}

// pieceHeaderLen is a piece's offset and length (bpf.NextPiece).
const pieceHeaderLen = 6

// capturedAt finds bytes in the prefix, the pieces and the tail, and
// segCaptured joins them where they run on from one into the next.
func TestSegCapturedPieces(t *testing.T) {
	piece := func(off int, s string) []byte {
		p := binary.LittleEndian.AppendUint32(nil, uint32(off))
		p = binary.LittleEndian.AppendUint16(p, uint16(len(s)))
		return append(p, s...)
	}
	full := []byte(strings.Repeat(".", 100))
	copy(full[0:], "0123456789")
	copy(full[10:], "ABCDE")
	copy(full[40:], "fghij")
	copy(full[50:], "klmno")
	copy(full[84:], "TAIL-0123456789!")
	seg := &segment{data: full[:10], total: 100, tail: full[84:],
		pieces: slices.Concat(piece(8, "89ABCDE"), piece(40, "fghij"), piece(50, "klmno"), piece(80, "....TA"))}
	for _, c := range []struct {
		off, n int
		want   string
		ok     bool
	}{
		{0, 15, "0123456789ABCDE", true}, // prefix and the piece after it
		{8, 5, "89ABC", true},            // the piece that holds all of it, not the prefix's two
		{12, 3, "CDE", true},
		{40, 5, "fghij", true},
		{50, 5, "klmno", true},
		{41, 2, "gh", true}, // again after a later one: searched from the start
		{44, 7, "", false},  // a gap between two pieces
		{52, 3, "mno", true},
		{86, 14, "IL-0123456789!", true},
		{80, 10, "....TAIL-0", true}, // a piece that runs into the tail
		{8, 9, "", false},
		{60, 4, "", false},
		{99, 2, "", false}, // past the transfer
	} {
		b, ok := segCaptured(seg, c.off, c.n)
		if ok != c.ok || string(b) != c.want {
			t.Errorf("segCaptured(%d, %d) = %q %v, want %q %v", c.off, c.n, b, ok, c.want, c.ok)
		}
	}
	if b := segCapturedPrefix(seg, 5, 20); string(b) != "56789ABCDE" {
		t.Errorf("segCapturedPrefix(5, 20) = %q", b)
	}
	if b := segCapturedPrefix(seg, 99, 20); string(b) != "!" {
		t.Errorf("segCapturedPrefix(99, 20) = %q", b)
	}
	// A header the prefix cuts, whole in a piece: no copy.
	if b, ok := segCaptured(seg, 8, 5); ok && &b[0] != &seg.pieces[pieceHeaderLen] {
		t.Error("segCaptured(8, 5) copied what a piece holds")
	}
}
