package tracer

import (
	"encoding/binary"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http2/hpack"

	"github.com/podtracer/podtracer/bpf"
)

// HTTP/2 (RFC 9113) in cleartext, with prior knowledge: the connection
// starts with the client preface, or, for a connection older than the agent,
// is recognised from plausible frame headers. gRPC is HTTP/2 whose requests
// have content-type application/grpc*.
//
// Each direction is a sequence of frames, followed by counting the bytes
// each syscall moved, so that frames beyond the captured prefix are skipped
// by their length. Their headers, and what is read of their payloads, are
// read from the kernel's pieces (bpf.Event.Pieces: on a connection that
// started with the preface, the kernel follows the frames too), or from
// the last 16 bytes (the segment's tail), which often hold a response's
// trailers.
// Header blocks (HEADERS or PUSH_PROMISE, then CONTINUATION) are decoded
// with one HPACK decoder per direction, since each direction has its own
// dynamic table.
//
// What cannot be known is not guessed:
//   - A connection joined mid-stream has a dynamic table we never saw.
//     Fields that refer to it are unknown; fields from the static table,
//     literals, and entries inserted since we joined decode exactly (see
//     hpackPartial). A request whose :method or :path is unknown gives no
//     span; nor does a plain HTTP/2 response whose :status is unknown.
//     A gRPC response whose grpc-status is unknown gives a span with
//     GRPCStatus -1.
//   - A header block not fully captured yields the fields before the cut
//     (pseudo-header fields come first, so usually :method and :path), and
//     the request is marked Truncated; from then on that direction's table
//     is only partly known, as for a connection joined mid-stream. It never
//     becomes "fully known" again, but as the peers insert new entries, more
//     and more fields decode.
//   - When the frame boundaries of a direction are lost (a frame header
//     lay where nothing was captured: on the syscall hooks, on a connection
//     older than the agent, past the frames the kernel follows in one
//     segment), the direction waits for a segment
//     that starts with plausible frames. Streams whose end passed unseen
//     are dropped when the stream table is full, never emitted.
//
// A span starts with the request's first frame (the client: when it began
// sending; the server: when it had read it) and ends with the response's
// END_STREAM. A stream reset by RST_STREAM before that ends the span too,
// as a failure: gRPC maps the HTTP/2 error code to a status as grpc-go and
// the gRPC spec do (CANCEL is CANCELLED, REFUSED_STREAM is UNAVAILABLE,
// ...); plain HTTP/2 gets ErrorCode set to the error code's name
// ("CANCEL") and keeps the status code it had, if any. A stream still open
// when the connection closes, or refused by GOAWAY, gives no span.

const (
	h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	// h2MaxStreams bounds the open streams followed per connection.
	h2MaxStreams = 256
	// h2MaxHeaderBlock bounds the bytes of one header block kept for
	// decoding; a longer block is decoded from its start, as if cut.
	h2MaxHeaderBlock = 64 << 10
	// h2MaxTableSize bounds the HPACK dynamic table kept per direction,
	// whatever SETTINGS_HEADER_TABLE_SIZE the peers agreed.
	h2MaxTableSize = 64 << 10
	// h2DefaultMaxFrame is SETTINGS_MAX_FRAME_SIZE until a peer says more.
	h2DefaultMaxFrame = 16384
	// h2MaxValue bounds the header values copied into a Request.
	h2MaxValue = 2048
)

// Frame types and flags.
const (
	h2Data         = 0x0
	h2Headers      = 0x1
	h2Priority     = 0x2
	h2RSTStream    = 0x3
	h2Settings     = 0x4
	h2PushPromise  = 0x5
	h2Ping         = 0x6
	h2GoAway       = 0x7
	h2WindowUpdate = 0x8
	h2Continuation = 0x9

	h2FlagEndStream  = 0x1
	h2FlagAck        = 0x1
	h2FlagEndHeaders = 0x4
	h2FlagPadded     = 0x8
	h2FlagPriority   = 0x20
)

// h2Flags are the flags each frame type defines; detection wants no others.
var h2Flags = [...]uint8{
	h2Data:         h2FlagEndStream | h2FlagPadded,
	h2Headers:      h2FlagEndStream | h2FlagEndHeaders | h2FlagPadded | h2FlagPriority,
	h2Priority:     0,
	h2RSTStream:    0,
	h2Settings:     h2FlagAck,
	h2PushPromise:  h2FlagEndHeaders | h2FlagPadded,
	h2Ping:         h2FlagAck,
	h2GoAway:       0,
	h2WindowUpdate: 0,
	h2Continuation: h2FlagEndHeaders,
}

type h2Frame struct {
	length uint32
	typ    uint8
	flags  uint8
	stream uint32
}

func parseH2Frame(b []byte) h2Frame {
	return h2Frame{
		length: uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:    b[3],
		flags:  b[4],
		stream: binary.BigEndian.Uint32(b[5:9]) & 0x7fffffff,
	}
}

// valid applies the rules of RFC 9113 section 6 that a receiver checks
// from the frame header alone; strict also wants no reserved bit, no
// undefined flag and no extension type, as a real peer sends.
func (f h2Frame) valid(maxFrame uint32, strict bool) bool {
	if f.length > maxFrame {
		return false
	}
	if int(f.typ) >= len(h2Flags) {
		return !strict // extension frames are ignored
	}
	if strict && f.flags&^h2Flags[f.typ] != 0 {
		return false
	}
	switch f.typ {
	case h2Data, h2Headers, h2Continuation:
		return f.stream != 0
	case h2Priority:
		return f.stream != 0 && f.length == 5
	case h2RSTStream:
		return f.stream != 0 && f.length == 4
	case h2PushPromise:
		return f.stream != 0 && f.length >= 4
	case h2Settings:
		return f.stream == 0 && f.length%6 == 0 && (f.flags&h2FlagAck == 0 || f.length == 0)
	case h2Ping:
		return f.stream == 0 && f.length == 8
	case h2GoAway:
		return f.stream == 0 && f.length >= 8
	case h2WindowUpdate:
		return f.length == 4
	}
	return true
}

// h2Plausible tells whether a segment starts with HTTP/2 frames: each
// frame header it can see is valid and strict, and they chain to the
// segment's end, or run past what was captured after at least two.
func h2Plausible(seg *segment, maxFrame uint32) bool {
	off, frames := 0, 0
	for off < seg.total {
		b, ok := segCaptured(seg, off, 9)
		if !ok {
			return frames >= 2
		}
		f := parseH2Frame(b)
		if !f.valid(maxFrame, true) {
			return false
		}
		frames++
		off += 9 + int(f.length)
	}
	return frames > 0 && off == seg.total
}

func init() {
	// Before HTTP/1 (10): its detector takes "PRI * HTTP/2.0" for a request
	// line. Frame headers never look like HTTP/1 text, and a segment must
	// hold a chain of valid frames to be taken for HTTP/2.
	registerProtocol("http2", 5, func(cfg Config) detector { return detectHTTP2(cfg.RouteHeuristic, cfg.h2Lost) })
}

func detectHTTP2(routes bool, lost *atomic.Uint64) detector {
	return func(dir bpf.Direction, seg *segment, emit emitter) protocolParser {
		switch {
		case isH2Preface(seg):
			// Both directions from their start; feed sees the preface.
			c := newHTTP2Conn(emit, routes)
			c.lost = lost
			return c
		case h2Plausible(seg, h2DefaultMaxFrame):
			// Mid-stream, or a server that speaks first (its SETTINGS):
			// the other direction shows its frames, or the preface, later.
			c := newHTTP2Conn(emit, routes)
			c.dirs[1-dir].lost = true
			c.lost = lost
			return c
		}
		return nil
	}
}

// isH2Preface tells whether the segment starts with the client preface,
// or is its first bytes sent on their own.
func isH2Preface(seg *segment) bool {
	if len(seg.data) >= len(h2Preface) {
		return string(seg.data[:len(h2Preface)]) == h2Preface
	}
	return len(seg.data) == seg.total && len(seg.data) >= 4 && strings.HasPrefix(h2Preface, string(seg.data))
}

// http2Conn pairs the requests and responses of one HTTP/2 connection.
type http2Conn struct {
	emit    emitter
	routes  bool
	route   lastRoute
	dirs    [2]*h2Dir // by bpf.Direction
	streams map[uint32]*h2Stream
	// lost counts the directions that lost their place in the frames
	// (Stats.HTTP2Lost); nil: not counted.
	lost *atomic.Uint64
	// free holds streams finished, for new ones: a stream is three
	// header blocks' worth of fields, allocated per call otherwise.
	free []*h2Stream
	// clientDir is the direction requests travel, once known: from the
	// preface, or from the first header block that says.
	clientDir   bpf.Direction
	clientKnown bool
}

// stateful: an HTTP/2 connection's HPACK tables hold what its later header
// blocks refer to by index (a gRPC channel's every call, its method's
// path). Forgotten while idle, the connection would be taken up again
// mid-stream, its calls without their methods for the rest of its life: it
// is kept as long as the pools keep such connections idle (grpc-go's
// channel 30 minutes).
func (c *http2Conn) stateful() bool {
	for _, d := range c.dirs {
		if d.tableGen > 0 || d.table.size > 0 {
			return true
		}
	}
	return false
}

func newHTTP2Conn(emit emitter, routes bool) *http2Conn {
	c := &http2Conn{emit: emit, routes: routes, streams: make(map[uint32]*h2Stream)}
	for _, dir := range []bpf.Direction{bpf.Ingress, bpf.Egress} {
		c.dirs[dir] = &h2Dir{c: c, dir: dir, maxFrame: h2DefaultMaxFrame, table: hpackPartial{max: 4096}}
	}
	return c
}

// newHTTP2Upgraded continues an HTTP/1.1 connection that switched to h2c
// by Upgrade (RFC 7540 3.2). Both directions start afresh, the client's
// with the preface and the server's with its SETTINGS, so both dynamic
// tables are known; the upgrade request is stream 1, sent in full, and its
// response comes in HTTP/2.
func newHTTP2Upgraded(emit emitter, routes bool, clientDir bpf.Direction, req *message, start uint64) *http2Conn {
	c := newHTTP2Conn(emit, routes)
	c.onPreface(c.dirs[clientDir])
	s := c.newStream(1)
	s.req = h2Head{method: req.method, path: req.target, authority: req.host,
		parent: req.parent, userAgent: req.userAgent, forwardedFor: req.forwardedFor, origin: req.origin, grpcStatus: -1}
	s.start = start
	s.reqBytes = req.bodySize
	s.reqEnded = true
	return c
}

// onPreface: direction d starts with the client preface, so the connection
// is new. d is the client's, and the dynamic tables of both directions are
// known (empty) unless a header block passed already, which a server does
// not send before the preface.
func (c *http2Conn) onPreface(d *h2Dir) {
	c.clientDir, c.clientKnown = d.dir, true
	d.preface, d.lost = len(h2Preface), false
	for _, x := range c.dirs {
		if x.blocks == 0 && x.dec == nil && !x.lost {
			x.dec = hpack.NewDecoder(4096, x.onField)
			x.dec.SetMaxStringLength(h2MaxHeaderBlock)
			x.dec.SetAllowedMaxDynamicTableSize(uint32(x.table.max))
		}
	}
}

func (c *http2Conn) feed(dir bpf.Direction, seg *segment) {
	if dir > bpf.Egress {
		return
	}
	c.dirs[dir].feed(seg)
}

func (c *http2Conn) closed(uint64) {
	// Streams still open get no span: nothing is invented.
	clear(c.streams)
}

// h2Dir follows the frames of one direction.
type h2Dir struct {
	c       *http2Conn
	dir     bpf.Direction
	lost    bool // frame boundaries unknown: wait for plausible frames
	seen    bool // a segment went this way
	preface int  // preface bytes still to skip
	blocks  int  // header blocks decoded

	hdr     [9]byte
	nhdr    int
	fh      h2Frame
	left    int    // payload bytes of the current frame still to come
	keep    int    // payload bytes of the current frame worth keeping
	buf     []byte // the kept payload
	gap     bool   // some of the kept payload was not captured
	fEnter  uint64 // when the current frame started (its segment's syscall)
	fExit   uint64
	bStream uint32 // an open header block: its stream, flags, ...
	bOpen   bool
	bPush   bool
	bEnd    bool // the block's HEADERS had END_STREAM
	bCut    bool // part of the block was not captured
	block   []byte
	bEnter  uint64
	bExit   uint64

	// maxFrame is SETTINGS_MAX_FRAME_SIZE of the receiver, as far as we
	// know: it bounds the frames that may resync a lost direction.
	maxFrame uint32
	// dec decodes while the dynamic table is fully known (the connection
	// was seen from its preface); nil once not, when table takes over.
	dec    *hpack.Decoder
	table  hpackPartial
	fields []hfield // filled by onField
	// indexed remembers the last blocks made of indexed fields alone, and
	// what they decoded to, while the dynamic table stays as it was
	// (tableGen): a gRPC peer repeats a few such blocks (a reply's
	// headers, its trailers) on every call.
	indexed  [h2IndexedBlocks]h2IndexedBlock
	tableGen uint64
	nextIdx  int
}

// h2IndexedBlock is a header block of indexed fields alone and what it
// decoded to, with the dynamic table of generation gen.
type h2IndexedBlock struct {
	block  []byte
	fields []hfield
	gen    uint64
}

const (
	// h2IndexedBlocks is how many all-indexed blocks a direction keeps.
	h2IndexedBlocks = 4
	// h2IndexedMax bounds the blocks kept, and their fields.
	h2IndexedMax = 128
)

// allIndexed tells whether an HPACK header block is made of indexed
// fields alone (RFC 7541 6.1): decoding it leaves the dynamic table as it
// was, so the same bytes decode to the same fields until another block
// changes the table.
func allIndexed(b []byte) bool {
	for i := 0; i < len(b); i++ {
		if b[i]&0x80 == 0 {
			return false
		}
		if b[i]&0x7f == 0x7f {
			// The index goes on in bytes with their high bit set, up
			// to one without.
			for i++; i < len(b) && b[i]&0x80 != 0; i++ {
			}
		}
	}
	return len(b) > 0
}

// forgetIndexed forgets the all-indexed blocks kept, and the header
// values their fields hold. It runs for most header blocks (a grpc-go
// call's, whose grpc-timeout is new every time): what is forgotten
// already is not cleared again.
func (d *h2Dir) forgetIndexed() {
	d.tableGen++
	for i := range d.indexed {
		x := &d.indexed[i]
		if len(x.block) == 0 {
			continue
		}
		clear(x.fields[:cap(x.fields)])
		x.block, x.fields = x.block[:0], x.fields[:0]
	}
}

// decodeKnown decodes d.block with the fully known table into d.fields,
// or takes the fields of the same all-indexed block decoded before, when
// the table has not changed since.
func (d *h2Dir) decodeKnown() error {
	indexed := !d.bCut && len(d.block) <= h2IndexedMax && allIndexed(d.block)
	if indexed {
		for i := range d.indexed {
			if x := &d.indexed[i]; x.gen == d.tableGen && len(x.block) > 0 && string(x.block) == string(d.block) {
				d.fields = append(d.fields[:0], x.fields...)
				return nil
			}
		}
	}
	_, err := d.dec.Write(d.block)
	if err == nil && !d.bCut {
		err = d.dec.Close()
	}
	if err != nil || !indexed {
		d.forgetIndexed() // the table may have changed: what was kept is stale
		return err
	}
	if len(d.fields) <= h2IndexedMax {
		x := &d.indexed[d.nextIdx]
		d.nextIdx = (d.nextIdx + 1) % len(d.indexed)
		x.block = append(x.block[:0], d.block...)
		x.fields = append(x.fields[:0], d.fields...)
		x.gen = d.tableGen
	}
	return nil
}

func (d *h2Dir) peer() *h2Dir { return d.c.dirs[1-d.dir] }

func (d *h2Dir) feed(seg *segment) {
	if !d.seen {
		d.seen = true
		if isH2Preface(seg) {
			d.c.onPreface(d)
		}
	}
	pos := 0
	if d.preface > 0 {
		n := min(d.preface, seg.total)
		d.preface -= n
		pos = n
	}
	if d.lost {
		if pos != 0 || !h2Plausible(seg, d.maxFrame) {
			return
		}
		d.resync()
	}
	for pos < seg.total {
		if d.nhdr < 9 {
			n := min(9-d.nhdr, seg.total-pos)
			b, ok := segCaptured(seg, pos, n)
			if !ok {
				d.lose()
				return
			}
			if d.nhdr == 0 {
				d.fEnter, d.fExit = seg.enter, seg.exit
			}
			copy(d.hdr[d.nhdr:], b)
			d.nhdr += n
			pos += n
			if d.nhdr < 9 {
				continue
			}
			if !d.startFrame() {
				d.lose()
				return
			}
		} else {
			n := min(d.left, seg.total-pos)
			if want := d.keep - len(d.buf); want > 0 && !d.gap {
				b := segCapturedPrefix(seg, pos, min(n, want))
				d.buf = append(d.buf, b...)
				d.gap = len(b) < min(n, want)
			}
			d.left -= n
			pos += n
		}
		if d.left == 0 {
			d.endFrame(seg)
			if d.lost {
				return
			}
		}
	}
}

// lose gives up the frame boundaries, and with them the dynamic table:
// header blocks may pass unseen.
func (d *h2Dir) lose() {
	if !d.lost && d.c.lost != nil {
		d.c.lost.Add(1)
	}
	d.lost = true
	d.nhdr, d.left, d.bOpen = 0, 0, false
	d.buf, d.block = d.buf[:0], d.block[:0]
	d.degrade()
}

func (d *h2Dir) resync() {
	d.lost = false
	d.nhdr, d.left, d.bOpen = 0, 0, false
	d.table.forget()
}

// degrade switches to the partly known table, knowing nothing.
func (d *h2Dir) degrade() {
	d.dec = nil
	d.table.forget()
	d.forgetIndexed()
}

// startFrame checks a frame header and prepares for its payload.
func (d *h2Dir) startFrame() bool {
	f := parseH2Frame(d.hdr[:])
	if !f.valid(1<<24-1, false) {
		return false
	}
	if d.bOpen && (f.typ != h2Continuation || f.stream != d.bStream) {
		return false // a header block must go on with CONTINUATION
	}
	if !d.bOpen && f.typ == h2Continuation {
		return false
	}
	d.fh = f
	d.left = int(f.length)
	d.buf, d.gap = d.buf[:0], false
	d.keep = 0
	switch f.typ {
	case h2Headers, h2PushPromise, h2Continuation:
		d.keep = min(int(f.length), h2MaxHeaderBlock)
	case h2Data:
		if f.flags&h2FlagPadded != 0 {
			d.keep = 1
		}
	case h2RSTStream, h2GoAway:
		d.keep = 8
	case h2Settings:
		d.keep = min(int(f.length), 60)
	}
	return true
}

// endFrame acts on a frame whose last byte has passed.
func (d *h2Dir) endFrame(seg *segment) {
	f := d.fh
	d.nhdr = 0
	defer func() {
		// A rare big header block should not pin its buffers for the
		// connection's life.
		if cap(d.buf) > 16<<10 {
			d.buf = nil
		}
		if cap(d.block) > 16<<10 && !d.bOpen {
			d.block = nil
		}
		// Nor should its fields: a block of one-byte indexed fields
		// decodes to tens of thousands of them (40 bytes each).
		if cap(d.fields) > 512 {
			d.fields = nil
		}
	}()
	switch f.typ {
	case h2Data:
		n := int64(f.length)
		if f.flags&h2FlagPadded != 0 && len(d.buf) > 0 {
			n -= 1 + int64(d.buf[0])
		}
		d.c.onData(d, f.stream, max(n, 0), f.flags&h2FlagEndStream != 0, seg)
	case h2Headers, h2PushPromise:
		frag, ok := d.fragment(f)
		if !ok {
			d.lose()
			return
		}
		d.bOpen, d.bStream, d.bPush = true, f.stream, f.typ == h2PushPromise
		d.bEnd = f.flags&h2FlagEndStream != 0
		d.bCut = d.gap || int(f.length) > h2MaxHeaderBlock
		d.bEnter, d.bExit = d.fEnter, d.fExit
		d.block = append(d.block[:0], frag...)
		if f.flags&h2FlagEndHeaders != 0 {
			d.endBlock(seg)
		}
	case h2Continuation:
		if !d.bCut {
			if len(d.block)+len(d.buf) > h2MaxHeaderBlock {
				d.bCut = true
			} else {
				d.block = append(d.block, d.buf...)
				d.bCut = d.gap
			}
		}
		if f.flags&h2FlagEndHeaders != 0 {
			d.endBlock(seg)
		}
	case h2RSTStream:
		if len(d.buf) >= 4 {
			d.c.onReset(d, f.stream, binary.BigEndian.Uint32(d.buf), seg)
		}
	case h2Settings:
		if f.flags&h2FlagAck == 0 {
			d.settings()
		}
	case h2GoAway:
		// The last stream of a GOAWAY is of those the receiver started:
		// a client's speaks of server pushes, not of its own requests.
		if len(d.buf) >= 4 && !d.c.isRequestDir(d) {
			d.c.onGoAway(binary.BigEndian.Uint32(d.buf) & 0x7fffffff)
		}
	}
}

// fragment strips padding and priority from a HEADERS or PUSH_PROMISE
// payload, as far as it was captured. Its layout is [pad length]
// [priority or promised stream] fragment [padding].
func (d *h2Dir) fragment(f h2Frame) ([]byte, bool) {
	from, pad := 0, 0
	if f.flags&h2FlagPadded != 0 {
		if len(d.buf) == 0 {
			return nil, d.gap // the pad length was not captured
		}
		from, pad = 1, int(d.buf[0])
	}
	if f.typ == h2Headers && f.flags&h2FlagPriority != 0 {
		from += 5
	} else if f.typ == h2PushPromise {
		from += 4
	}
	to := int(f.length) - pad
	if to < from {
		return nil, false // more padding than payload: not HTTP/2
	}
	to = min(to, len(d.buf))
	if to < from {
		return nil, true // the fragment was not captured
	}
	return d.buf[from:to], true
}

// settings applies the sender's SETTINGS to what the other direction
// carries: its encoder's table bound and its frames' size bound.
func (d *h2Dir) settings() {
	p := d.peer()
	for b := d.buf; len(b) >= 6; b = b[6:] {
		v := binary.BigEndian.Uint32(b[2:6])
		switch binary.BigEndian.Uint16(b) {
		case 0x1: // SETTINGS_HEADER_TABLE_SIZE
			v = min(v, h2MaxTableSize)
			if p.dec != nil {
				p.dec.SetAllowedMaxDynamicTableSize(max(v, 4096))
			}
			p.table.max = max(int(v), 4096)
		case 0x5: // SETTINGS_MAX_FRAME_SIZE
			if v >= h2DefaultMaxFrame && v < 1<<24 {
				p.maxFrame = v
			}
		}
	}
}

func (d *h2Dir) onField(f hpack.HeaderField) {
	d.fields = append(d.fields, hfield{name: f.Name, value: f.Value})
}

// endBlock decodes a whole header block and hands on its fields.
func (d *h2Dir) endBlock(seg *segment) {
	d.bOpen = false
	d.blocks++
	d.fields = d.fields[:0]
	if d.dec != nil {
		if err := d.decodeKnown(); err != nil {
			// Garbage, or a peer we do not understand: nothing of the block
			// is trusted, and the table is no longer known.
			d.fields = d.fields[:0]
			d.degrade()
			d.lose()
			return
		}
		if d.bCut {
			d.degrade()
		}
	} else {
		var err error
		d.fields, err = d.table.decode(d.block, d.bCut, d.fields)
		if err != nil {
			d.lose()
			return
		}
	}
	if d.bPush {
		return // a promised request: only the table mattered
	}
	h := readH2Headers(d.fields, d.bCut)
	d.c.onHeaders(d, d.bStream, &h, d.bEnd, seg)
}

// h2Head is what a header block says that matters here.
type h2Head struct {
	method, path, authority, contentType, userAgent string
	forwardedFor                                    netip.AddrPort    // forwardedClient
	origin                                          origin            // forwardedOrigin
	parent                                          trace.SpanContext // from traceparent
	status                                          int               // :status; 0 absent
	grpcStatus                                      int               // -1 absent
	grpcMessage                                     string
	unknown                                         bool // some fields could not be decoded
	cut                                             bool // the block was not fully captured
}

func readH2Headers(fields []hfield, cut bool) h2Head {
	h := h2Head{grpcStatus: -1, cut: cut}
	state := ""
	var forwarded, xff, xfh, xfp string
	for _, f := range fields {
		if f.unknown {
			h.unknown = true
			continue
		}
		v := f.value
		if len(v) > h2MaxValue {
			v = strings.Clone(v[:h2MaxValue]) // not the whole value, kept alive by a substring
		}
		switch f.name {
		case ":method":
			h.method = v
		case ":path":
			h.path = v
		case ":authority":
			h.authority = v
		case ":status":
			if n, err := strconv.Atoi(v); err == nil && n >= 100 && n <= 999 {
				h.status = n
			}
		case "host":
			if h.authority == "" {
				h.authority = v
			}
		case "content-type":
			h.contentType = v
		case "traceparent":
			h.parent = parseTraceparent(v)
		case "tracestate":
			state = v
		case "user-agent":
			h.userAgent = v
		case "forwarded":
			if forwarded == "" { // a list, whose first element is in the first field
				forwarded = v
			}
		case "x-forwarded-for":
			if xff == "" {
				xff = v
			}
		case "x-forwarded-host":
			if xfh == "" {
				xfh = v
			}
		case "x-forwarded-proto":
			if xfp == "" {
				xfp = v
			}
		case "grpc-status":
			if n, err := strconv.Atoi(v); err == nil && n >= 0 && n < 1000 {
				h.grpcStatus = n
			}
		case "grpc-message":
			h.grpcMessage = v
		}
	}
	if state != "" && h.parent.IsValid() {
		if ts, err := trace.ParseTraceState(state); err == nil {
			h.parent = h.parent.WithTraceState(ts)
		}
	}
	if (forwarded != "" || xff != "") && h.method != "" { // a request's
		h.forwardedFor = forwardedClient(forwarded, xff)
	}
	if (forwarded != "" || xfh != "" || xfp != "") && h.method != "" {
		host, port, scheme := forwardedOrigin(forwarded, xfh, xfp)
		h.origin = origin{host: host, port: port, scheme: scheme}
	}
	return h
}

// complete tells whether the block certainly holds every field it had.
func (h *h2Head) complete() bool { return !h.unknown && !h.cut }

// h2Stream is one request and its response.
type h2Stream struct {
	req       h2Head
	resp      h2Head // the final response head
	trailers  h2Head
	respSeen  bool
	trailSeen bool
	start     uint64
	reqBytes  int64
	respBytes int64
	reqEnded  bool
}

func (c *http2Conn) isRequestDir(d *h2Dir) bool { return c.clientKnown && c.clientDir == d.dir }

// onHeaders takes a decoded header block of stream id.
func (c *http2Conn) onHeaders(d *h2Dir, id uint32, h *h2Head, endStream bool, seg *segment) {
	if !c.clientKnown {
		// Learn who the client is from what the block holds.
		switch {
		case h.method != "" || h.path != "":
			c.clientDir, c.clientKnown = d.dir, true
		case h.status != 0:
			c.clientDir, c.clientKnown = 1-d.dir, true
		default:
			return
		}
	}
	s := c.streams[id]
	if c.clientDir == d.dir {
		if s == nil {
			if h.method == "" && h.path == "" && h.status != 0 {
				return // a response where requests go: not a peer we understand
			}
			s = c.newStream(id)
			s.req = *h
			s.start = d.bExit // the server had read the request
			if d.dir == bpf.Egress {
				s.start = d.bEnter // the client began to send it
			}
		}
		if endStream {
			s.reqEnded = true
		}
		return
	}
	if s == nil {
		return // the request passed before we looked
	}
	switch {
	case !s.respSeen:
		if h.status >= 100 && h.status < 200 && !endStream {
			return // 100 Continue and other interim responses
		}
		s.resp, s.respSeen = *h, true
	default:
		s.trailers, s.trailSeen = *h, true
	}
	if endStream {
		c.finish(id, s, seg.exit, 0, false)
	}
}

func (c *http2Conn) newStream(id uint32) *h2Stream {
	if len(c.streams) >= h2MaxStreams {
		// Drop the oldest: most likely its end passed where we could not see.
		// It is looked for among the streams kept only: an id below all of
		// them (ids that go down, from a peer that is not HTTP/2) would
		// otherwise evict nothing and let the table grow.
		var oldest uint32
		first := true
		for k := range c.streams {
			if first || k < oldest {
				oldest, first = k, false
			}
		}
		delete(c.streams, oldest)
	}
	var s *h2Stream
	if n := len(c.free); n > 0 {
		s, c.free = c.free[n-1], c.free[:n-1]
	} else {
		s = new(h2Stream)
	}
	c.streams[id] = s
	return s
}

// h2MaxFree bounds the streams kept for reuse by one connection: a unary
// client's one call at a time needs one, and an idle connection holds no
// more than this (about 640 bytes each).
const h2MaxFree = 2

// release keeps s, finished and out of the table, for a new stream.
func (c *http2Conn) release(s *h2Stream) {
	if len(c.free) < h2MaxFree {
		*s = h2Stream{}
		c.free = append(c.free, s)
	}
}

func (c *http2Conn) onData(d *h2Dir, id uint32, n int64, endStream bool, seg *segment) {
	s := c.streams[id]
	if s == nil || !c.clientKnown {
		return
	}
	if c.clientDir == d.dir {
		s.reqBytes += n
		s.reqEnded = s.reqEnded || endStream
		return
	}
	s.respBytes += n
	if endStream {
		c.finish(id, s, seg.exit, 0, false)
	}
}

func (c *http2Conn) onReset(d *h2Dir, id, code uint32, seg *segment) {
	if s := c.streams[id]; s != nil {
		c.finish(id, s, seg.exit, code, true)
	}
}

func (c *http2Conn) onGoAway(last uint32) {
	// Streams above the last one the sender processed were not: the client
	// retries them elsewhere.
	for id := range c.streams {
		if id > last {
			delete(c.streams, id)
		}
	}
}

// finish emits the request of stream id, if what is known of it is
// certain, and releases s.
func (c *http2Conn) finish(id uint32, s *h2Stream, end uint64, rstCode uint32, reset bool) {
	delete(c.streams, id)
	defer c.release(s)
	q := &s.req
	if q.method == "" || (q.path == "" && q.method != "CONNECT") {
		return // :method or :path unknown, or not a request
	}
	r := pooledRequest(Request{
		Protocol:        ProtoHTTP,
		ProtocolVersion: "2",
		Method:          q.method,
		UserAgent:       q.userAgent,
		ForwardedFor:    q.forwardedFor,
		OriginalHost:    q.origin.host,
		OriginalPort:    q.origin.port,
		OriginalScheme:  q.origin.scheme,
		Parent:          q.parent,
		Truncated:       !q.complete(),
		RequestSize:     s.reqBytes,
		ResponseSize:    s.respBytes,
		StatusCode:      s.resp.status,
		GRPCStatus:      -1,
		Partition:       -1,
	})
	r.Path, r.Query, r.Host, r.HostPort = splitTarget(q.path, q.authority)
	if c.isGRPC(s) {
		r.Protocol = ProtoGRPC
		r.RPCService, r.RPCMethod = splitGRPCPath(r.Path)
		r.GRPCStatus, r.ErrorMessage = grpcStatus(s)
		if reset && r.GRPCStatus < 0 {
			r.GRPCStatus = grpcFromH2Error(rstCode)
		}
		if !reset && r.GRPCStatus < 0 && !s.trailSeen && s.respSeen && s.resp.complete() && s.resp.status == 200 {
			// Ended whole, without trailers, and no grpc-status in what
			// was all decoded: the client's library reports INTERNAL.
			r.GRPCStatus, r.ErrorMessage = 13, "stream ended without trailers (no grpc-status)"
		}
		if r.GRPCStatus <= 0 {
			r.ErrorMessage = ""
		}
	} else {
		if c.routes {
			r.Route = c.route.of(r.Path)
		}
		if !reset && (s.resp.status == 0 || !s.respSeen) {
			r.Release()
			return // the status was in a field we could not decode
		}
	}
	if reset {
		r.ErrorCode = h2ErrorName(rstCode)
		r.ErrorMessage = "stream reset: " + r.ErrorCode
		if r.ErrorCode == h2ErrorOther {
			r.ErrorMessage = "stream reset: error code 0x" + strconv.FormatUint(uint64(rstCode), 16)
		}
	}
	role, start := RoleClient, s.start
	if c.clientDir == bpf.Ingress {
		role = RoleServer
	}
	c.emit(r, role, start, end)
}

// isGRPC tells gRPC from other HTTP/2 requests: by content-type, or a
// grpc-status; when the fields that would say were unknown, by the shape
// of the request (POST /pkg.Service/Method).
func (c *http2Conn) isGRPC(s *h2Stream) bool {
	if strings.HasPrefix(s.req.contentType, "application/grpc-web") || strings.HasPrefix(s.resp.contentType, "application/grpc-web") {
		return false // even a trailers-only error's grpc-status in its headers
	}
	if grpcContentType(s.req.contentType) || grpcContentType(s.resp.contentType) {
		return true
	}
	if s.respSeen && s.resp.grpcStatus >= 0 || s.trailSeen && s.trailers.grpcStatus >= 0 {
		return true
	}
	if s.req.contentType == "" && s.req.unknown && s.req.method == "POST" {
		svc, m := splitGRPCPath(s.req.path)
		return strings.Contains(svc, ".") && m != ""
	}
	return false
}

// grpcContentType tells gRPC's content types (application/grpc,
// application/grpc+proto, application/grpc;charset=...) from gRPC-Web's
// (application/grpc-web+proto), whose status is in the body: taken for
// gRPC, its every call would end without trailers, an error.
func grpcContentType(ct string) bool {
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// splitGRPCPath splits "/pkg.Service/Method".
func splitGRPCPath(path string) (service, method string) {
	p := strings.TrimPrefix(path, "/")
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// grpcStatus is the status of a gRPC call from its trailers (or its
// trailers-only response), or from the HTTP status when the server sent
// none (gRPC's HTTP-to-status mapping); -1 when unknown.
func grpcStatus(s *h2Stream) (int, string) {
	if s.trailSeen && s.trailers.grpcStatus >= 0 {
		return s.trailers.grpcStatus, percentDecode(s.trailers.grpcMessage)
	}
	if s.respSeen && s.resp.grpcStatus >= 0 {
		return s.resp.grpcStatus, percentDecode(s.resp.grpcMessage)
	}
	if s.trailSeen && !s.trailers.complete() || s.respSeen && !s.resp.complete() {
		return -1, "" // it may have been in what we could not decode
	}
	if !s.respSeen || s.trailSeen {
		return -1, ""
	}
	switch s.resp.status {
	case 200:
		return -1, ""
	case 400:
		return 13, "" // INTERNAL
	case 401:
		return 16, "" // UNAUTHENTICATED
	case 403:
		return 7, "" // PERMISSION_DENIED
	case 404:
		return 12, "" // UNIMPLEMENTED
	case 429, 502, 503, 504:
		return 14, "" // UNAVAILABLE
	}
	return 2, "" // UNKNOWN
}

func percentDecode(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// grpcFromH2Error maps the error code of a RST_STREAM to a gRPC status, as
// the gRPC HTTP/2 protocol document does.
func grpcFromH2Error(code uint32) int {
	switch code {
	case 0x7: // REFUSED_STREAM
		return 14 // UNAVAILABLE
	case 0x8: // CANCEL
		return 1 // CANCELLED
	case 0xb: // ENHANCE_YOUR_CALM
		return 8 // RESOURCE_EXHAUSTED
	case 0xc: // INADEQUATE_SECURITY
		return 7 // PERMISSION_DENIED
	}
	return 13 // INTERNAL
}

var h2ErrorNames = [...]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
	"SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL",
	"COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}

// h2ErrorOther names the error codes RFC 9113 does not define. The name
// becomes error.type, a metric attribute: the peer picks the code, any of
// 2^32, so the code itself would make a series per value.
const h2ErrorOther = "_OTHER"

func h2ErrorName(code uint32) string {
	if int(code) < len(h2ErrorNames) {
		return h2ErrorNames[code]
	}
	return h2ErrorOther
}

// segCaptured returns the bytes [off, off+n) of what the segment moved,
// when all of them were captured: in the prefix, the pieces or the tail,
// joined when they run on from one into another.
func segCaptured(seg *segment, off, n int) ([]byte, bool) {
	if off < 0 || n < 0 || off+n > seg.total {
		return nil, false
	}
	if n == 0 {
		return nil, true
	}
	b := seg.capturedAt(off, n)
	if len(b) >= n {
		return b[:n], true
	}
	if b = seg.capturedRun(off, n, b); len(b) < n {
		return nil, false
	}
	return b, true
}

// segCapturedPrefix returns the captured bytes of [off, off+n) of what the
// segment moved, up to the first one that was not captured.
func segCapturedPrefix(seg *segment, off, n int) []byte {
	n = min(n, seg.total-off)
	if off < 0 || n <= 0 {
		return nil
	}
	b := seg.capturedAt(off, n)
	if len(b) >= n {
		return b[:n]
	}
	if len(b) == 0 {
		return nil
	}
	return seg.capturedRun(off, n, b)
}

// capturedRun joins the captured bytes from off on, up to n of them or the
// first that was not captured; first is those capturedAt(off, n) has.
func (seg *segment) capturedRun(off, n int, first []byte) []byte {
	b := append([]byte(nil), first...)
	for len(b) < n {
		next := seg.capturedAt(off+len(b), n-len(b))
		if len(next) == 0 {
			break
		}
		b = append(b, next[:min(len(next), n-len(b))]...)
	}
	return b
}

// capturedAt returns the captured bytes from offset off of what the
// segment moved on, as far as they run in one place: the prefix, a piece
// (bpf.Event.Pieces) or the tail, the first of them that holds n bytes
// (the kernel copies a frame header that the prefix cuts whole, as a
// piece), else the first that holds any; nil when byte off was not
// captured.
func (seg *segment) capturedAt(off, n int) []byte {
	if off < 0 || off >= seg.total {
		return nil
	}
	var first []byte
	if off < len(seg.data) {
		if first = seg.data[off:]; len(first) >= n {
			return first
		}
	}
	if len(seg.data) >= seg.total {
		return first
	}
	if len(seg.pieces) > 0 {
		// Pieces come by offset, and so do the lookups of a walk through
		// the frames: start from the last piece found, unless it lies
		// past off.
		if seg.pieceOff > off {
			seg.pieceAt, seg.pieceOff = 0, 0
		}
		for rest := seg.pieces[seg.pieceAt:]; ; {
			p, data, next, ok := bpf.NextPiece(rest)
			if !ok || p > off {
				break
			}
			if off < p+len(data) {
				if b := data[off-p:]; len(b) >= n || first == nil {
					return b
				}
				break
			}
			seg.pieceAt, seg.pieceOff = len(seg.pieces)-len(next), p+len(data)
			rest = next
		}
	}
	if tailStart := seg.total - len(seg.tail); tailStart >= 0 && off >= tailStart {
		if b := seg.tail[off-tailStart:]; len(b) >= n || first == nil {
			return b
		}
	}
	return first
}
