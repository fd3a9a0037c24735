package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/internal/testenv"
)

// h2Script runs an HTTP/2 client and a server that reads what it sends,
// in one Python process: on connection A, writes with frames past the
// prefix of every kind the agent reads, a frame header and a header block
// cut by a write's end, and a sendmsg whose vectors cut a frame header;
// on connection B, more frames in one write than the kernel follows, then
// a write it must take up again at; on connection C, more header blocks
// past the prefix than an event has room for. The server reads alternately with
// recv and with recvmsg_into two buffers. It prints the bytes each
// connection sent, in hex, one line each.
const h2Script = `
import socket, struct, sys, threading, time
def frame(typ, flags, stream, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([typ, flags]) + struct.pack('>I', stream) + payload
PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
block = lambda n, c: bytes([c]) * n
a = [PREFACE + frame(4, 0, 0, b'\x00\x03\x00\x00\x00\x64') + frame(1, 4, 1, block(20, 0x82)),
     frame(0, 0, 1, b'd' * 5000) + frame(1, 4, 3, block(40, 0x83)) + frame(0, 8, 3, bytes([5]) + b'p' * 300 + b'\0' * 5) +
     frame(3, 0, 1, struct.pack('>I', 8)) + frame(1, 0, 5, block(30, 0x84)) + frame(9, 4, 5, block(25, 0x85)) +
     frame(7, 0, 0, struct.pack('>II', 5, 0) + b'debug') + frame(4, 0, 0, b'\x00\x04\x00\x01\x00\x00')]
h = frame(1, 4, 7, block(300, 0x86))
a += [frame(0, 0, 3, b'e' * 3000) + h[:5], h[5:] + frame(0, 1, 3, b'f' * 3000)]
big = frame(1, 4, 9, block(3000, 0x87))
a += [frame(0, 0, 9, b'g' * 2000) + big[:100], big[100:] + frame(8, 0, 0, struct.pack('>I', 1000))]
v = frame(0, 0, 11, b'h' * 2000) + frame(1, 5, 11, block(50, 0x88)) + frame(3, 0, 11, struct.pack('>I', 8))
a += [[v[:2013], v[2013:2030], v[2030:]]]
b = [PREFACE + frame(4, 0, 0, b''), b''.join(frame(6, 0, 0, b'12345678') for _ in range(300)),
     frame(1, 4, 1, block(20, 0x89)) + frame(0, 0, 1, b'i' * 5000) + frame(1, 4, 3, block(40, 0x8a))]
c = [PREFACE + frame(4, 0, 0, b'\x00\x03\x00\x00\x00\x0a'), frame(0, 0, 1, b'j' * 2000) + b''.join(frame(1, 4, 2 * i + 3, block(3000, 0x8b)) for i in range(4))]

srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(4)
def serve():
    while True:
        c, _ = srv.accept()
        def read(c=c):
            i = 0
            while True:
                if i % 2:
                    n, _, _, _ = c.recvmsg_into([bytearray(1000), bytearray(65536)])
                else:
                    n = len(c.recv(65536))
                if n == 0:
                    return
                i += 1
        threading.Thread(target=read, daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
for writes in (a, b, c):
    s = socket.create_connection(srv.getsockname())
    for w in writes:
        if isinstance(w, list):
            s.sendmsg(w)
        else:
            s.sendall(w)
        time.sleep(0.05)
    time.sleep(0.1)
    s.close()
    print(b''.join(x if isinstance(x, bytes) else b''.join(x) for x in writes).hex())
time.sleep(0.2)
`

// h2Wanted returns what of an HTTP/2 client stream the agent reads, as
// ranges: every frame header, and the payload of header blocks, of
// RST_STREAM, GOAWAY and SETTINGS (ten of them), and a padded DATA
// frame's pad length.
func h2Wanted(stream []byte) [][2]int {
	var r [][2]int
	for off := 24; off+9 <= len(stream); {
		n := int(stream[off])<<16 | int(stream[off+1])<<8 | int(stream[off+2])
		typ, flags := stream[off+3], stream[off+4]
		want := 0
		switch typ {
		case 0x1, 0x5, 0x9:
			want = n
		case 0x3, 0x7:
			want = min(n, 8)
		case 0x4:
			want = min(n, 60)
		case 0x0:
			if flags&0x8 != 0 {
				want = min(n, 1)
			}
		}
		r = append(r, [2]int{off, off + 9 + want})
		off += 9 + n
	}
	return r
}

// h2Event is an event's capture, copied out of the reader's buffer.
type h2Event struct {
	dir                   Direction
	len                   int
	payload, tail, pieces []byte
	local, remote         uint16
}

// TestHTTP2Frames: on a connection that starts with the HTTP/2 preface,
// the kernel adds to each event the frame headers past the prefix and
// what the agent reads of their payloads, in either direction, for
// write, sendmsg with vectors, recv and recvmsg: the pieces hold the
// bytes sent at their offsets, nothing else (no DATA payload), and
// together with the prefix and the tail every byte the agent reads. A
// direction with more frames in a write than the kernel follows takes
// them up again at the next write that starts with a frame.
func TestHTTP2Frames(t *testing.T) {
	testenv.Privileged(t)
	python := testenv.LookPath(t, "python3")
	if !kernelAtLeast(t, 6, 3) {
		testenv.Skip(t, "the HTTP/2 frame walk is the socket programs' (Linux 6.3+)")
	}
	c, err := Load(Config{CaptureBytes: 64, RingBufferBytes: 1 << 22, Hooks: HooksSocket}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var events []h2Event
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev Event
		for c.Read(&ev) == nil {
			if ev.Type == EventData {
				events = append(events, h2Event{ev.Dir, int(ev.Len), bytes.Clone(ev.Payload), bytes.Clone(ev.Tail), bytes.Clone(ev.Pieces),
					ev.Local.Port(), ev.Remote.Port()})
			}
		}
	}()
	out, err := exec.Command(python, "-c", h2Script).CombinedOutput()
	if err != nil {
		t.Fatalf("script: %v %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	c.Close()
	<-done
	var streams [][]byte
	for _, line := range strings.Fields(string(out)) {
		var b []byte
		if _, err := fmt.Sscanf(line, "%x", &b); err != nil {
			t.Fatalf("script output %q: %v", line, err)
		}
		streams = append(streams, b)
	}
	if len(streams) != 3 {
		t.Fatalf("script output %q", out)
	}

	// Each stream's events in one direction, in order: they are told
	// apart by the client's port, and start with the preface.
	for i, stream := range streams {
		for _, dir := range []Direction{Egress, Ingress} {
			var evs []h2Event
			var port uint16
			for _, e := range events {
				p := e.local
				if dir == Ingress {
					p = e.remote
				}
				if e.dir != dir || (port != 0 && p != port) {
					continue
				}
				if port == 0 {
					if len(e.payload) < 33 || !bytes.HasPrefix(stream, e.payload) {
						continue
					}
					port = p
				}
				evs = append(evs, e)
			}
			if len(evs) == 0 {
				t.Fatalf("stream %d dir %d: no events", i, dir)
			}
			// On B, only the write after the one the walk gave up in is
			// taken up again; what the server reads of it may start
			// anywhere. On C, the pieces stop where the room ends: what
			// they hold must still be right.
			from := 0
			switch i {
			case 1:
				if dir == Ingress {
					continue
				}
				from = len(evs) - 1
			case 2:
				from = len(evs)
			}
			checkH2Pieces(t, fmt.Sprintf("stream %d dir %d", i, dir), stream, evs, from)
		}
	}
}

// checkH2Pieces checks the events of stream from the from-th on (see
// TestHTTP2Frames).
func checkH2Pieces(t *testing.T, name string, stream []byte, evs []h2Event, from int) {
	t.Helper()
	wanted := make([]bool, len(stream))
	for _, r := range h2Wanted(stream) {
		for j := r[0]; j < r[1]; j++ {
			wanted[j] = true
		}
	}
	base, pieces := 0, 0
	for k, e := range evs {
		if base+e.len > len(stream) {
			t.Fatalf("%s: events of %d bytes and more, the stream has %d", name, base+e.len, len(stream))
		}
		seg := stream[base : base+e.len]
		if !bytes.Equal(e.payload, seg[:len(e.payload)]) {
			t.Errorf("%s event %d: prefix is not the bytes sent", name, k)
		}
		covered := make([]bool, e.len)
		for j := range len(e.payload) {
			covered[j] = true
		}
		for j := range len(e.tail) {
			covered[e.len-len(e.tail)+j] = true
		}
		if len(e.payload)+len(e.pieces) >= 8192 {
			t.Errorf("%s event %d: %d bytes of prefix and pieces, more than an event holds", name, k, len(e.payload)+len(e.pieces))
		}
		for rest := e.pieces; len(rest) > 0; {
			off, data, next, ok := NextPiece(rest)
			if !ok || off+len(data) > e.len {
				t.Fatalf("%s event %d: bad pieces %x", name, k, rest)
			}
			if !bytes.Equal(data, seg[off:off+len(data)]) {
				t.Errorf("%s event %d: piece at %d is not the bytes sent", name, k, off)
			}
			for j := off; j < off+len(data); j++ {
				if !wanted[base+j] {
					t.Errorf("%s event %d: piece at %d holds byte %d, which the agent does not read", name, k, off, j)
					break
				}
				covered[j] = true
			}
			pieces++
			rest = next
		}
		if k >= from {
			for j := range e.len {
				if wanted[base+j] && !covered[j] {
					t.Errorf("%s event %d (%d bytes, %d captured): byte %d (stream %d) is read by the agent, not captured", name, k, e.len, len(e.payload), j, base+j)
					break
				}
			}
		}
		base += e.len
	}
	if pieces == 0 {
		t.Errorf("%s: no pieces", name)
	}
}

// NextPiece on a malformed tail of pieces.
func TestNextPiece(t *testing.T) {
	p := binary.LittleEndian.AppendUint32(nil, 70000)
	p = binary.LittleEndian.AppendUint16(p, 3)
	p = append(p, "abc"...)
	off, data, rest, ok := NextPiece(append(p, 1, 2))
	if !ok || off != 70000 || string(data) != "abc" || len(rest) != 2 {
		t.Fatalf("NextPiece = %d %q %v %v", off, data, rest, ok)
	}
	if _, _, _, ok := NextPiece(rest); ok {
		t.Error("a cut piece header taken")
	}
	if _, _, _, ok := NextPiece(p[:8]); ok {
		t.Error("a piece cut short taken")
	}
}
