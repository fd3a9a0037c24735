package tracer

import (
	"bytes"
	"net/netip"
	"slices"
	"strconv"

	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/bpf"
)

// segment is what one syscall moved in one direction: a captured prefix of
// the bytes, how many there were in all, and the last few of them.
type segment struct {
	data  []byte // captured prefix
	total int    // bytes transferred; len(data) <= total
	tail  []byte // last bytes transferred, when total > len(data)
	// pieces are more captured bytes past data (bpf.Event.Pieces), and
	// pieceAt and pieceOff where capturedAt's last search left them: the
	// byte index of a piece in pieces, and the offset its search passed.
	pieces   []byte
	pieceAt  int
	pieceOff int
	enter    uint64 // kernel timestamps, CLOCK_BOOTTIME ns
	exit     uint64
	// traceLow is the trace ID's low half the kernel drew (bpf.Event.TraceLow).
	traceLow uint64
	flags    bpf.EventFlags // what the kernel left out before it
	// headHash is the kernel's hash of the request head in the segment
	// (bpf.Event.HeadHash), 0 when none.
	headHash uint64
}

// message is one HTTP/1.x request or response head, and what is known of its
// body so far.
type message struct {
	request bool

	// Request line.
	method, target string
	// Status line.
	status int

	minor        byte // HTTP/1.<minor>
	host         string
	userAgent    string
	forwardedFor netip.AddrPort    // the original client, from Forwarded or X-Forwarded-For (forwardedClient)
	origin       origin            // the host and scheme the client asked for, as proxies say (forwardedOrigin)
	parent       trace.SpanContext // from the traceparent header
	contentLen   int64             // -1 when absent
	chunked      bool
	bodySize     int64
	truncated    bool // the head was longer than what was captured
	start, end   uint64
	startEnter   uint64 // entry time of the first segment
	traceLow     uint64 // the kernel's draw for a request's trace ID
	completed    bool
	noBody       bool     // set by the pairing for responses that cannot have one
	upgrade      bool     // 101 Switching Protocols
	h2c          bool     // an Upgrade header that offers (request) or picks (101) h2c
	interimResp  bool     // 1xx other than 101
	unseen       bool     // a request that went by where nothing of it was captured
	req          *message // for a response: the request it answers
}

type streamState uint8

const (
	stIdle         streamState = iota // at a message boundary
	stHeaders                         // inside a message head
	stBody                            // inside a Content-Length body
	stChunked                         // inside a chunked body, in sync
	stChunkedBlind                    // inside a chunked body, chunk boundaries lost
	stUntilClose                      // body runs until the connection closes
	stLost                            // out of sync: wait for a segment that starts a message
	stDone                            // not HTTP/1 (any more): ignore the stream
)

// maxHeadBytes bounds the bytes buffered for a message head split over
// several reads; heads longer than that are parsed from what was kept.
const maxHeadBytes = 16 << 10

// http1Stream parses one direction of an HTTP/1.x connection from the
// segments the kernel captured. It keeps its place in the byte stream even
// where only a prefix of a segment was captured, using the transferred
// length to skip bodies and the tail to find where a chunked body ends.
type http1Stream struct {
	state     streamState
	head      []byte // head bytes buffered across segments
	msg       *message
	bodyLeft  int64
	chunkLeft int64  // data bytes left in the current chunk, then its CRLF
	chunkLine []byte // a chunk-size line split across segments
	inTrailer bool
	// blindTail holds the stream's last bytes while blind in a chunked
	// body: its last chunk may come split over two segments.
	blindTail []byte
	// newerRequest tells whether the other direction has sent a request
	// after the given time (nil: never).
	newerRequest func(after uint64) bool

	seen seenStrings // the last head's strings, reused when repeated
	// free holds messages done with, for new ones to reuse (shared by the
	// connection's two streams; nil: always allocate).
	free *[]*message

	// heads learns the request heads the kernel hashed (the kernel's
	// spans); nil without them.
	heads *heads

	// upgradedAt is where, in the segment just fed, the protocol that a
	// 101 switched to begins (-1: nowhere in it).
	upgradedAt int

	// Callbacks into the connection that pairs requests and responses.
	onHead     func(m *message)
	onComplete func(m *message)
	// onUnseen is told that a message started in seg where none of it was
	// captured: past the captured prefix of a long transfer (pipelining),
	// or in a transfer the kernel counted but could not read (io_uring,
	// splice). again says that seg is counted whole right after such a
	// message, and may be more of it.
	onUnseen func(seg *segment, again bool)
	// guessed is set while the stream's place rests on a head cut short
	// by the capture (its framing headers may have been in what was not
	// captured), until a message is seen starting: bytes after such a head
	// may be its body, not a message.
	guessed bool
	// lostUnseen is set while the stream is lost after a message that
	// started unseen: transfers counted whole after it are told too
	// (onUnseen, again).
	lostUnseen bool
}

// feed consumes one segment.
func (s *http1Stream) feed(seg *segment) {
	if s.state == stDone {
		return
	}
	if s.state == stLost {
		if len(seg.data) == 0 && s.lostUnseen && seg.total >= minMessageBytes {
			s.onUnseen(seg, true)
			return
		}
		s.state, s.lostUnseen = stIdle, false
		if !startsMessage(seg.data) {
			s.state = stLost
			return
		}
	}
	if s.resyncs(seg) {
		// Blind in a response whose end went by unseen: a status line
		// after a request sent since its last bytes starts the next
		// response. The old one ended with its last segment (msg.end).
		m := s.msg
		m.completed = true
		s.state, s.msg = stIdle, nil
		s.onComplete(m)
	}
	pos := 0 // position in the segment's bytes, captured or not
	captured := len(seg.data)
	s.upgradedAt = -1
	for pos < seg.total && s.state != stDone {
		switch s.state {
		case stIdle:
			if pos >= captured || !(startsMessage(seg.data[pos:]) || mayStartMessage(seg, pos)) {
				// A message starts where we cannot see it, or the bytes are
				// not HTTP/1: wait for a segment that starts a message.
				if pos >= captured && seg.total-pos >= minMessageBytes && !s.guessed && s.onUnseen != nil {
					s.onUnseen(seg, false)
					s.lostUnseen = true
				}
				s.state = stLost
				return
			}
			s.guessed = false
			s.msg = s.newMessage(seg)
			s.head = s.head[:0]
			s.state = stHeaders
		case stHeaders:
			pos = s.feedHead(seg, pos)
		case stBody:
			n := min(s.bodyLeft, int64(seg.total-pos))
			s.bodyLeft -= n
			s.msg.bodySize += n
			pos += int(n)
			if s.bodyLeft == 0 {
				s.complete(seg)
			}
		case stChunked:
			pos = s.feedChunked(seg, pos)
		case stChunkedBlind:
			s.msg.bodySize += int64(seg.total - pos)
			s.msg.end = seg.exit
			pos = seg.total
			if s.blindEnds(seg) {
				s.complete(seg)
			}
		case stUntilClose:
			s.msg.bodySize += int64(seg.total - pos)
			s.msg.end = seg.exit
			pos = seg.total
		case stLost:
			return
		}
	}
}

// newMessage starts a message whose first bytes are in seg.
func (s *http1Stream) newMessage(seg *segment) *message {
	var m *message
	if s.free != nil && len(*s.free) > 0 {
		free := *s.free
		m = free[len(free)-1]
		free[len(free)-1] = nil
		*s.free = free[:len(free)-1]
		*m = message{}
	} else {
		m = new(message)
	}
	m.start, m.startEnter, m.contentLen, m.traceLow = seg.exit, seg.enter, -1, seg.traceLow
	return m
}

// closed ends a body that runs until the connection closes.
func (s *http1Stream) closed(ts uint64) {
	if s.state == stUntilClose && s.msg != nil {
		s.msg.end = max(s.msg.end, ts)
		s.msg.completed = true
		s.onComplete(s.msg)
	}
	s.msg = nil
	s.state = stDone
}

func (s *http1Stream) feedHead(seg *segment, pos int) int {
	captured := len(seg.data)
	if pos < captured {
		chunk := seg.data[pos:]
		searchFrom := max(0, len(s.head)-3)
		room := maxHeadBytes - len(s.head)
		if len(chunk) > room {
			chunk = chunk[:room]
		}
		s.head = append(s.head, chunk...)
		if i := bytes.Index(s.head[searchFrom:], crlfcrlf); i >= 0 {
			end := searchFrom + i + 4
			consumed := end - (len(s.head) - len(chunk))
			s.head = s.head[:end]
			s.endHead(seg, false)
			if s.state == stDone {
				s.upgradedAt = pos + consumed
			}
			return pos + consumed
		}
		if len(chunk) < len(seg.data[pos:]) {
			// Over maxHeadBytes: parse what we kept, then resync.
			s.endHead(seg, true)
			s.state = stLost
			return seg.total
		}
	}
	if captured < seg.total {
		// The head goes on past the captured prefix. If the segment ends
		// with the blank line, so does the head; otherwise we cannot know
		// where the next message starts.
		endsHead := bytes.Equal(lastBytes(seg, 4), crlfcrlf)
		s.endHead(seg, true)
		if !endsHead && s.state != stDone {
			if s.msg != nil {
				s.complete(seg)
			}
			s.state = stLost
		}
		return seg.total
	}
	return seg.total // all of it buffered; the head continues in the next segment
}

// minMessageBytes is the least an HTTP/1 message takes ("GET / HTTP/1.1",
// CRLF twice): fewer bytes left where a message would start are no message
// (a client's stray CRLF after a body).
const minMessageBytes = 18

// endHead parses the buffered head and decides how the body is framed.
func (s *http1Stream) endHead(seg *segment, truncated bool) {
	m := s.msg
	m.truncated = truncated
	s.guessed = truncated
	if !parseHead(s.head, m, &s.seen) {
		s.state = stLost
		s.msg = nil
		return
	}
	if m.request && seg.headHash != 0 && !truncated && s.heads != nil {
		s.heads.learn(seg.headHash, s.head, m, seg.exit)
	}
	s.onHead(m)
	switch {
	case m.upgrade:
		// Another protocol follows (WebSocket, h2c): stop parsing.
		m.end = seg.exit
		m.completed = true
		s.onComplete(m)
		s.state = stDone
		return
	case m.interimResp:
		// 100 Continue and friends: the final response follows.
		s.state = stIdle
		return
	case m.noBody:
		s.complete(seg)
	case m.chunked:
		s.state = stChunked
		s.chunkLeft = 0
		s.chunkLine = s.chunkLine[:0]
		s.inTrailer = false
	case m.contentLen > 0:
		s.bodyLeft = m.contentLen
		s.state = stBody
	case m.contentLen == 0 || m.request:
		// Requests without framing have no body (RFC 9112 6.3).
		s.complete(seg)
	default:
		// Until the close; or, when the head was cut (a long head
		// written alone: cookies, a policy) and its framing may have
		// been past the prefix, until the next response (resyncs).
		s.state = stUntilClose
		m.end = seg.exit
	}
}

func (s *http1Stream) complete(seg *segment) {
	m := s.msg
	m.end = seg.exit
	m.completed = true
	s.state = stIdle
	s.msg = nil
	s.onComplete(m)
}

// feedChunked walks chunk-size lines and chunk data.
func (s *http1Stream) feedChunked(seg *segment, pos int) int {
	captured := len(seg.data)
	for pos < seg.total {
		if s.chunkLeft > 0 {
			n := min(s.chunkLeft, int64(seg.total-pos))
			s.chunkLeft -= n
			// Counted as the bytes come, as in a Content-Length body: a
			// chunk line may announce any size (up to 2^63-1, which added
			// to the chunks before would wrap), and the message may be
			// reported before its chunk ends (a server answering early).
			s.msg.bodySize += n
			pos += int(n)
			continue
		}
		if pos >= captured {
			// The next chunk-size line is beyond the captured prefix: we
			// no longer know where chunks start, only where the body may end.
			s.enterBlind(seg)
			s.msg.bodySize += int64(seg.total - pos) // what follows, framing and all, as blind
			if s.blindEnds(seg) {
				s.complete(seg)
			}
			return seg.total
		}
		nl := bytes.IndexByte(seg.data[pos:], '\n')
		if nl < 0 {
			if len(s.chunkLine)+captured-pos > 1024 {
				s.state = stLost
				return seg.total
			}
			s.chunkLine = append(s.chunkLine, seg.data[pos:]...)
			pos = captured
			if captured < seg.total {
				s.enterBlind(seg)
				s.msg.bodySize += int64(seg.total - pos)
				if s.blindEnds(seg) {
					s.complete(seg)
				}
				return seg.total
			}
			continue
		}
		line := seg.data[pos : pos+nl]
		if len(s.chunkLine) > 0 {
			line = append(s.chunkLine, line...)
			s.chunkLine = s.chunkLine[:0]
		}
		pos += nl + 1
		line = bytes.TrimRight(line, "\r")
		if s.inTrailer {
			if len(line) == 0 {
				s.complete(seg)
				return pos
			}
			continue
		}
		if len(line) == 0 {
			continue // the CRLF that ends a chunk's data
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || size < 0 {
			s.state = stLost
			return seg.total
		}
		if size == 0 {
			s.inTrailer = true
			continue
		}
		s.chunkLeft = size
	}
	return pos
}

var (
	crlfcrlf     = []byte("\r\n\r\n")
	lastChunk    = []byte("0\r\n\r\n")
	http1Version = []byte("HTTP/1.")
)

// resyncs tells whether seg, a status line, starts a new response while
// this stream is blind in one whose end may have gone by unseen: a
// chunked body past the prefix, or a body whose framing was in the part of
// its head not captured. Only after a request sent since the blind
// response's last bytes: a pipelining client's requests came before, and a
// body's bytes may look like a status line.
func (s *http1Stream) resyncs(seg *segment) bool {
	blind := s.state == stChunkedBlind || (s.state == stUntilClose && s.msg != nil && s.msg.truncated)
	return blind && s.msg != nil && !s.msg.request && s.newerRequest != nil && s.newerRequest(s.msg.end) &&
		startsStatusLine(seg.data)
}

// enterBlind goes blind in a chunked body at seg, where its bytes are
// last known to go.
func (s *http1Stream) enterBlind(seg *segment) {
	s.state = stChunkedBlind
	s.blindTail = s.blindTail[:0]
	s.msg.end = seg.exit
}

// blindEnds tells whether, blind in a chunked body, the stream ends its
// body with seg: with the segments before, when seg is shorter than the
// last chunk ("...0\r", then "\n\r\n").
func (s *http1Stream) blindEnds(seg *segment) bool {
	n := len(lastChunk) + 2
	s.blindTail = append(s.blindTail, lastBytes(seg, n)...)
	if len(s.blindTail) > n {
		s.blindTail = s.blindTail[len(s.blindTail)-n:]
	}
	return bytes.HasSuffix(s.blindTail, lastChunk)
}

// clone copies seg, whose bytes the next event reuses, to be fed later.
func (seg *segment) clone() *segment {
	c := *seg
	c.data, c.tail, c.pieces = slices.Clone(seg.data), slices.Clone(seg.tail), slices.Clone(seg.pieces)
	c.pieceAt, c.pieceOff = 0, 0
	return &c
}

// lastBytes returns up to n of the last bytes the segment transferred.
// from is the rest of the segment from byte off on.
func (seg *segment) from(off int) *segment {
	rest := &segment{total: seg.total - off, tail: seg.tail, enter: seg.enter, exit: seg.exit}
	if off < len(seg.data) {
		rest.data = seg.data[off:]
	}
	if len(rest.tail) > rest.total {
		rest.tail = rest.tail[len(rest.tail)-rest.total:]
	}
	return rest
}

func lastBytes(seg *segment, n int) []byte {
	if len(seg.data) == seg.total {
		return seg.data[max(0, len(seg.data)-n):]
	}
	return seg.tail[max(0, len(seg.tail)-n):]
}

// startsMessage tells whether b starts an HTTP/1.x request line or status
// line, from its first bytes.
func startsMessage(b []byte) bool {
	if bytes.HasPrefix(b, http1Version) {
		return len(b) < 9 || b[7] == '0' || b[7] == '1'
	}
	_, ok := requestMethod(b)
	return ok
}

// startsStatusLine tells whether b starts with a status line's
// "HTTP/1.x NNN ".
func startsStatusLine(b []byte) bool {
	return len(b) >= 13 && bytes.HasPrefix(b, http1Version) && (b[7] == '0' || b[7] == '1') && b[8] == ' ' &&
		b[9] >= '1' && b[9] <= '5' && b[10] >= '0' && b[10] <= '9' && b[11] >= '0' && b[11] <= '9' && b[12] == ' '
}

// mayStartMessage tells whether the segment ends with the first few bytes
// of what may become a message start ("GE", "HTTP/"): a peer may send a
// request a few bytes at a time. parseHead decides once the head is whole.
func mayStartMessage(seg *segment, pos int) bool {
	b := seg.data[pos:]
	if len(seg.data) != seg.total || len(b) >= 21 {
		return false
	}
	if len(b) <= len(http1Version) && bytes.HasPrefix(http1Version, b) {
		return true
	}
	for _, c := range b {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// requestMethod recognises "METHOD /target" or "METHOD *" or "METHOD http://",
// and "CONNECT host:port" (the authority form of a proxy's tunnel).
func requestMethod(b []byte) (int, bool) {
	i := 0
	for i < len(b) && i < 20 && b[i] >= 'A' && b[i] <= 'Z' {
		i++
	}
	if i < 3 || i+1 >= len(b) || b[i] != ' ' {
		return 0, false
	}
	switch c := b[i+1]; {
	case c == '/', c == '*', c == 'h':
		return i, true
	case string(b[:i]) == "CONNECT" && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '['):
		return i, true
	}
	return 0, false
}

// parseHead parses a request or status line and the headers that matter.
// It accepts a head cut short (truncated), keeping what it could read.
//
// Strings are copied out of head (its bytes are reused), except where seen
// already holds the same text: the header values a connection repeats in
// every request (method, host, user agent, often the target) then cost no
// allocation. seen is updated; nil keeps nothing.
func parseHead(head []byte, m *message, seen *seenStrings) bool {
	if seen == nil {
		seen = new(seenStrings)
	}
	line, rest, _ := bytes.Cut(head, []byte("\n"))
	line = bytes.TrimRight(line, "\r")
	if bytes.HasPrefix(line, http1Version) {
		// HTTP/1.1 200 OK
		if len(line) < 12 || line[8] != ' ' {
			return false
		}
		m.minor = line[7]
		code, err := strconv.Atoi(string(line[9:12]))
		if err != nil || code < 100 || code > 999 {
			return false
		}
		m.status = code
		m.upgrade = code == 101
		m.interimResp = code >= 100 && code < 200 && code != 101
		m.noBody = code < 200 || code == 204 || code == 304
	} else {
		n, ok := requestMethod(line)
		if !ok {
			return false
		}
		m.request = true
		m.method = seen.method.of(line[:n])
		target := line[n+1:]
		sp := bytes.LastIndexByte(target, ' ')
		if sp >= 0 && bytes.HasPrefix(target[sp+1:], http1Version) && len(target) >= sp+9 {
			m.minor = target[sp+8]
			target = target[:sp]
		} else if !m.truncated || sp >= 0 {
			return false
		}
		m.target = seen.target.of(target)
	}
	var state []byte                    // the tracestate header's value
	var forwarded, xff, xfh, xfp []byte // the proxies' headers naming the client and what it asked for
	for len(rest) > 0 {
		var whole bool
		line, rest, whole = bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		value = bytes.TrimSpace(value)
		// The last line of a head the capture cut short may be cut too:
		// an address in it would be another one ("shop.ex", a port of
		// ":84"), a length another ("1" of "1200"), so the headers that
		// name hosts or frame the body are not read from it.
		cut := !whole && m.truncated
		switch {
		case cut && (equalFold(name, "host") || equalFold(name, "forwarded") || len(name) > 12 && equalFold(name[:12], "x-forwarded-") ||
			equalFold(name, "content-length") || equalFold(name, "transfer-encoding")):
		case equalFold(name, "host"):
			m.host = seen.host.of(value)
		case equalFold(name, "content-length"):
			if n, err := strconv.ParseInt(string(value), 10, 64); err == nil && n >= 0 {
				m.contentLen = n
			}
		case equalFold(name, "transfer-encoding"):
			m.chunked = bytes.HasSuffix(bytes.ToLower(value), []byte("chunked"))
		case equalFold(name, "traceparent"):
			m.parent = parseTraceparent(value)
		case equalFold(name, "tracestate"):
			state = value
		case equalFold(name, "user-agent"):
			m.userAgent = seen.userAgent.of(value)
		case equalFold(name, "upgrade"):
			m.h2c = hasToken(value, "h2c")
		case equalFold(name, "forwarded"):
			if forwarded == nil { // a list, whose first element is in the first line
				forwarded = value
			}
		case equalFold(name, "x-forwarded-for"):
			if xff == nil {
				xff = value
			}
		case equalFold(name, "x-forwarded-host"):
			if xfh == nil {
				xfh = value
			}
		case equalFold(name, "x-forwarded-proto"):
			if xfp == nil {
				xfp = value
			}
		}
	}
	if m.request && (forwarded != nil || xff != nil) {
		m.forwardedFor = forwardedClient(string(forwarded), string(xff))
	}
	if m.request && (forwarded != nil || xfh != nil || xfp != nil) {
		m.origin = seen.origin.of(forwarded, xfh, xfp)
	}
	if state != nil && m.parent.IsValid() {
		m.parent = m.parent.WithTraceState(seen.traceState.of(state))
	}
	if m.request && m.method == "CONNECT" {
		m.noBody = true
	}
	return true
}

// seenStrings holds the strings of the last message head a stream parsed.
type seenStrings struct {
	method, target, host, userAgent lastString
	traceState                      lastTraceState
	origin                          lastOrigin
}

// lastString is the last string made from some bytes.
type lastString struct{ s string }

// of returns b as a string: the last one if it has the same text (the
// comparison does not allocate), else a copy, kept as the new last.
func (l *lastString) of(b []byte) string {
	if string(b) != l.s {
		l.s = string(b)
	}
	return l.s
}

// lastTraceState is the last tracestate parsed, kept while the value repeats.
type lastTraceState struct {
	raw   string
	state trace.TraceState
}

// of returns the W3C tracestate of value, empty when it is not valid (the
// specification: an invalid tracestate is discarded, the parent kept).
func (l *lastTraceState) of(value []byte) trace.TraceState {
	if string(value) != l.raw {
		l.raw = string(value)
		l.state, _ = trace.ParseTraceState(l.raw)
	}
	return l.state
}

// hasToken tells whether the comma-separated header value lists token.
func hasToken(value []byte, token string) bool {
	for len(value) > 0 {
		var item []byte
		item, value, _ = bytes.Cut(value, []byte(","))
		if equalFold(bytes.TrimSpace(item), token) {
			return true
		}
	}
	return false
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
