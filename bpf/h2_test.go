package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/internal/testenv"
)

// h2Script runs an HTTP/2 client and a server, in one Python process. On
// connection A the client writes frames past the prefix of every kind the
// agent reads, a frame header and a header block cut by a write's end,
// a sendmsg whose vectors cut a frame header, and a writev with the same;
// then a header cut by a write's end whose rest comes in a writev after
// eight empty vectors (nothing of it in the prefix), and a writev of forty
// vectors with a header block in the 39th; the server, once it
// has read the preface, answers with frames of its own (the direction
// the preface did not start). On connection B, more
// frames in one write than the kernel follows, then a write it must take
// up again at; on connection C, more header blocks past the prefix than
// an event has room for, then a write it must take up again at. The
// server reads with recv, recvmsg_into two buffers and readv in turn. It
// prints the bytes each connection's client sent, in hex, one line each,
// then those A's server sent.
const h2Script = `
import os, socket, struct, sys, threading, time
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
a += [[v[:2013], v[2013:2030], v[2030:]], ('writev', [v[:2010], v[2010:2012], v[2012:]])]
# A header cut by a write's end, whose rest comes after eight empty vectors:
# none of it in the prefix.
h = frame(1, 4, 17, block(100, 0x92))
a += [frame(0, 0, 15, b'z' * 1000) + h[:3], ('writev', [b''] * 8 + [h[3:] + frame(0, 1, 17, b'z' * 100)])]
# Forty vectors (gRPC-Java's Netty gathers a buffer per frame part): the
# header block after a big DATA frame lies in the 39th.
w = frame(0, 0, 19, b'y' * 3000) + frame(1, 4, 21, block(60, 0x93))
a += [('writev', [w[i * 78:(i + 1) * 78] for i in range(39)] + [w[39 * 78:]])]
# A DATA frame's body in part spliced from a pipe (Linux 6.5+: counted, not
# read): the walk keeps its place in the frame, and finds the header block
# after it.
SPLICE = False
if SPLICE:
    d = frame(0, 0, 23, b's' * 2000) + frame(1, 4, 25, block(40, 0x94))
    a += [d[:1009], ('splice', d[1009:1509]), d[1509:]]
b = [PREFACE + frame(4, 0, 0, b''), b''.join(frame(6, 0, 0, b'12345678') for _ in range(300)),
     frame(1, 4, 1, block(20, 0x89)) + frame(0, 0, 1, b'i' * 5000) + frame(1, 4, 3, block(40, 0x8a))]
c = [PREFACE + frame(4, 0, 0, b'\x00\x03\x00\x00\x00\x0a'), frame(0, 0, 1, b'j' * 2000) + b''.join(frame(1, 4, 2 * i + 3, block(3000, 0x8b)) for i in range(4)),
     frame(1, 4, 13, block(20, 0x8c)) + frame(0, 0, 13, b'k' * 3000) + frame(1, 4, 15, block(40, 0x8d))]
# What A's server answers, in writes.
r = [frame(4, 0, 0, b'\x00\x05\x00\x00\x40\x00') + frame(4, 1, 0, b''),
     frame(1, 4, 1, block(30, 0x90)) + frame(0, 0, 1, b'q' * 6000) + frame(1, 5, 1, block(200, 0x91)) + frame(6, 1, 0, b'87654321'),
     frame(0, 0, 3, b'r' * 4000) + frame(3, 0, 5, struct.pack('>I', 8)) + frame(7, 0, 0, struct.pack('>II', 3, 2))]

srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(4)
answered = []
def serve():
    first = True
    while True:
        c, _ = srv.accept()
        def read(c=c, answer=first):
            i, got = 0, 0
            while True:
                try:
                    if i % 3 == 1:
                        n, _, _, _ = c.recvmsg_into([bytearray(1000), bytearray(65536)])
                    elif i % 3 == 2:
                        n = os.readv(c.fileno(), [bytearray(700), bytearray(65536)])
                    else:
                        n = len(c.recv(65536))
                except OSError:
                    return
                if n == 0:
                    c.close()
                    return
                got += n
                if answer and got >= 24 and not answered:
                    for w in r:
                        c.sendall(w)
                        time.sleep(0.05)
                    answered.append(1)
                i += 1
        first = False
        threading.Thread(target=read, daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
def drain(s):
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
for writes in (a, b, c):
    s = socket.create_connection(srv.getsockname())
    reader = threading.Thread(target=drain, args=(s,), daemon=True)
    reader.start()
    for w in writes:
        if isinstance(w, list):
            s.sendmsg(w)
        elif isinstance(w, tuple) and w[0] == 'splice':
            pr, pw = os.pipe()
            os.write(pw, w[1])
            os.splice(pr, s.fileno(), len(w[1]))
            os.close(pr); os.close(pw)
        elif isinstance(w, tuple):
            os.writev(s.fileno(), w[1])
        else:
            s.sendall(w)
        time.sleep(0.05)
    time.sleep(0.3)
    s.shutdown(socket.SHUT_WR)
    reader.join(2)
    s.close()
    flat = lambda x: x if isinstance(x, bytes) else b''.join(x if isinstance(x, list) else [x[1]] if x[0] == 'splice' else x[1])
    print(b''.join(flat(w) for w in writes).hex())
print(b''.join(r).hex())
time.sleep(0.2)
`

// h2Wanted returns what of an HTTP/2 stream the agent reads, as ranges:
// every frame header, and the payload of header blocks, of RST_STREAM,
// GOAWAY and SETTINGS (ten of them), and a padded DATA frame's pad length.
func h2Wanted(stream []byte) [][2]int {
	var r [][2]int
	off := 0
	if bytes.HasPrefix(stream, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) {
		off = 24
	}
	for off+9 <= len(stream) {
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
	conn                  uint64 // the socket
	closed                bool   // the socket's close, not data
	pid                   uint32 // whose socket
}

// TestHTTP2Frames: on a connection that starts with the HTTP/2 preface,
// the kernel adds to each event the frame headers past the prefix and
// what the agent reads of their payloads, in either direction (the one
// the preface started and the other), for write, sendmsg and writev with
// vectors, recv, recvmsg and readv, with the fast path on: the pieces hold
// the bytes sent at their offsets, nothing else (no DATA payload), and
// together with the prefix and the tail every byte the agent reads. A
// direction with more frames in a write than the kernel follows, or more
// than an event has room for, takes them up again at the next write that
// starts with frames.
func TestHTTP2Frames(t *testing.T) {
	testenv.Privileged(t)
	python := testenv.LookPath(t, "python3")
	if !kernelAtLeast(t, 6, 3) {
		testenv.Skip(t, "the HTTP/2 frame walk is the socket programs' (Linux 6.3+)")
	}
	c, err := Load(Config{CaptureBytes: 64, RingBufferBytes: 1 << 22, Hooks: HooksSocket, Fast: Fast{HTTP: true, Spans: true, Redis: true, SampleRatio: 0.5, Bounds: testBounds}},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.HTTP2Frames() || !c.FastPath() {
		t.Fatalf("HTTP/2 frame walk %v, fast path %v: want both", c.HTTP2Frames(), c.FastPath())
	}
	var events []h2Event
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev Event
		for c.Read(&ev) == nil {
			switch ev.Type {
			case EventData:
				events = append(events, h2Event{ev.Dir, int(ev.Len), bytes.Clone(ev.Payload), bytes.Clone(ev.Tail), bytes.Clone(ev.Pieces),
					ev.Conn, false, ev.PID})
			case EventClose:
				events = append(events, h2Event{conn: ev.Conn, closed: true, pid: ev.PID})
			}
		}
	}()
	script := h2Script
	if kernelAtLeast(t, 6, 5) {
		script = strings.Replace(script, "SPLICE = False", "SPLICE = True", 1)
	}
	cmd := exec.Command(python, "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("script: %v %s", err, out)
	}
	pid := uint32(cmd.Process.Pid)
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
	if len(streams) != 4 {
		t.Fatalf("script output %q", out)
	}

	// Each stream's events in one direction, in order: those of the
	// socket whose first event starts with what the stream starts with, up
	// to its close. (Sockets, not ports: other tests' pods, in network
	// namespaces of their own, may use the same port numbers meanwhile; a
	// socket's address is used again once it is closed.)
	for i, stream := range streams {
		for _, dir := range []Direction{Egress, Ingress} {
			var evs []h2Event
			var conn uint64
			for _, e := range events {
				if e.pid != pid {
					continue // another process's: other tests' gRPC connections start with the preface too
				}
				if e.closed && conn != 0 && e.conn == conn {
					break
				}
				if e.closed || e.dir != dir || (conn != 0 && e.conn != conn) {
					continue
				}
				if conn == 0 {
					if len(e.payload) < 24 || !bytes.HasPrefix(stream, e.payload) {
						continue
					}
					conn = e.conn
				}
				evs = append(evs, e)
			}
			if len(evs) == 0 {
				t.Fatalf("stream %d dir %d: no events", i, dir)
			}
			// On B, the walk gives up in the second write, and takes
			// up again at the third; what the server reads may start
			// anywhere, once it gave up. On C, the pieces stop where the
			// room ends in the second write (what they hold must still be
			// right), and the third is taken up again.
			name := fmt.Sprintf("stream %d dir %d", i, dir)
			switch i {
			case 1, 2:
				if dir == Ingress {
					continue
				}
				if len(evs) != 3 {
					t.Fatalf("%s: %d events, want the 3 writes", name, len(evs))
				}
				if uncovered := checkH2Pieces(t, name, stream, evs, map[int]bool{1: true}); uncovered[1] == 0 {
					t.Errorf("%s: the second write is all captured: it does not test what it should", name)
				}
			default:
				checkH2Pieces(t, name, stream, evs, nil)
			}
		}
	}
}

// checkH2Pieces checks the events of stream (see TestHTTP2Frames); the
// events in partial need not have every byte the agent reads. It returns
// the number of those bytes left out of each event.
func checkH2Pieces(t *testing.T, name string, stream []byte, evs []h2Event, partial map[int]bool) []int {
	t.Helper()
	uncovered := make([]int, len(evs))
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
		for j := range e.len {
			if wanted[base+j] && !covered[j] {
				if uncovered[k]++; uncovered[k] == 1 && !partial[k] {
					t.Errorf("%s event %d (%d bytes, %d captured): byte %d (stream %d) is read by the agent, not captured", name, k, e.len, len(e.payload), j, base+j)
				}
			}
		}
		base += e.len
	}
	if pieces == 0 {
		t.Errorf("%s: no pieces", name)
	}
	return uncovered
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

// quietScript sends, on an HTTP/2 connection, segments of window updates
// and pings alone between the others, one write each, read one by one;
// then, after 9 quiet seconds, one more.
const quietScript = `
import socket, struct, sys, time
def frame(typ, flags, stream, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([typ, flags]) + struct.pack('>I', stream) + payload
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)
c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
window, ping = frame(8, 0, 0, struct.pack('>I', 1000)), frame(6, 0, 0, b'12345678')
headers = lambda stream: frame(1, 4, stream, b'\x82\x86\x84')
for w in [b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + frame(4, 0, 0, b''), window + ping, headers(1), frame(6, 1, 0, b'12345678'),
          ping + headers(3), window + frame(0, 0, 1, b'data'), 9, window + ping]:
    if w == 9:
        time.sleep(9)
        continue
    c.sendall(w)
    time.sleep(0.05)
    a.recv(4096)
sys.stdout.write("ok\n")
`

// TestHTTP2Quiet: segments of HTTP/2 window updates and pings alone, which
// the agent does not read, are not sent; a segment with any other frame
// is, and so is one of them after the connection sent nothing for 8.6 s
// (the agent, which keeps an idle connection's HPACK tables 30 minutes,
// sees it live).
func TestHTTP2Quiet(t *testing.T) {
	testenv.Privileged(t)
	if !kernelAtLeast(t, 6, 3) {
		testenv.Skip(t, "the HTTP/2 frame walk is the socket programs' (Linux 6.3+)")
	}
	c, err := Load(Config{CaptureBytes: 256, RingBufferBytes: 1 << 20, Hooks: HooksSocket}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cmd := exec.Command(testenv.LookPath(t, "python3"), "-c", quietScript)
	var got []string // per direction, the frame types of each segment sent
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev Event
		for c.Read(&ev) == nil {
			if ev.Type != EventData || cmd.Process == nil || ev.PID != uint32(cmd.Process.Pid) {
				continue
			}
			types, off := "", 0
			if bytes.HasPrefix(ev.Payload, []byte("PRI * HTTP/2.0")) {
				types, off = "preface ", 24
			}
			for off+9 <= len(ev.Payload) {
				types += fmt.Sprint(ev.Payload[off+3])
				off += 9 + (int(ev.Payload[off])<<16 | int(ev.Payload[off+1])<<8 | int(ev.Payload[off+2]))
			}
			got = append(got, fmt.Sprintf("%d:%s", ev.Dir, types))
		}
	}()
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("script: %v %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	stats, _ := c.Stats()
	c.Close()
	<-done
	for _, dir := range []Direction{Egress, Ingress} {
		var segs []string
		for _, g := range got {
			if strings.HasPrefix(g, fmt.Sprint(dir)+":") {
				segs = append(segs, strings.TrimPrefix(g, fmt.Sprint(dir)+":"))
			}
		}
		// The preface and SETTINGS, HEADERS, PING and HEADERS,
		// WINDOW_UPDATE and DATA; after the pause, WINDOW_UPDATE and PING.
		if want := []string{"preface 4", "1", "61", "80", "86"}; !slices.Equal(segs, want) {
			t.Errorf("direction %d: segments of frame types %q, want %q", dir, segs, want)
		}
	}
	// At least the script's four, two each way (the counter is the
	// capture's: other tests' gRPC connections run beside).
	if stats.H2Quiet < 4 {
		t.Errorf("%d quiet segments counted, want at least 4", stats.H2Quiet)
	}
}
