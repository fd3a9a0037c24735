package tracer

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/podtracer/podtracer/bpf"
)

// Redis serialization protocol, RESP2 and RESP3: the observed process is
// a client or the server. Commands are arrays of bulk strings, or inline
// lines ("PING"); replies pair with commands in order, so pipelined
// commands make a span each, ended by their own reply and carrying their
// own error, as the OpenTelemetry eBPF instrumentation does: the wire does
// not show which commands one client call sent. A transaction (MULTI ...
// EXEC or DISCARD) is one span, named "MULTI" or "MULTI <command>" when
// all its commands are the same, as the semantic conventions say: its
// commands run at EXEC, their replies to the queueing say nothing.
//
// db.operation.name is the command upper-cased, with the subcommand of
// container commands ("CLIENT SETINFO"); db.query.text is the command with
// its arguments replaced by "?". With Config.RedisKeys the first key stays
// in db.query.text ("GET user:42"): keys are unbounded, so they never go
// in db.collection.name, which is a metric attribute. With QueryFull the
// arguments are kept, except passwords. db.namespace is the database index
// once SELECT was seen, or "0" when the connection was seen from its
// handshake (HELLO or AUTH first).

func init() {
	registerProtocol(ProtoRedis, 40, func(cfg Config) detector { return detectRedis(cfg) })
}

const (
	redisMaxPending  = 512  // commands waiting for replies; beyond, they are only counted
	redisMaxArgs     = 32   // arguments kept per command
	redisMaxArgBytes = 128  // bytes kept per argument
	redisMaxLine     = 4096 // a longer line is not RESP (or not captured)
	redisMaxDepth    = 32   // nesting of aggregate replies
	redisMaxTxOps    = 64   // commands kept per transaction
)

// redisConn follows one Redis connection.
type redisConn struct {
	mode   string
	keys   bool
	emit   emitter
	role   Role
	cmdDir bpf.Direction // the direction commands travel
	cmds   redisCmdStream
	reps   redisReplyStream

	pending []*redisCmd
	tx      *redisTx // the transaction being queued
	pubsub  bool     // RESP2 subscriber: messages come that answer nothing
	// The subscriptions the last confirmations counted: channels and
	// patterns (SUBSCRIBE, PSUBSCRIBE and their UNSUBSCRIBEs), and shard
	// channels (SSUBSCRIBE, SUNSUBSCRIBE), which Redis counts apart. The
	// connection leaves pubsub mode when both are 0.
	subs, shardSubs int64
	replyOff        bool // CLIENT REPLY OFF
	skipNext        bool // CLIENT REPLY SKIP
	seen            bool // a command was seen
	db              string
	done            bool
	lastRep         uint64 // exit time of the last reply segment
	heads           *heads // the kernel's spans: the shapes of the commands it stands for
}

// redisShape is the span of every command of a shape (bpf.RedisShape).
type redisShape struct{ op, text string }

// RedisShapeSpans tells whether a Redis command's span is all in its
// shape, its name and its arguments' count, with the agent's query text
// setting (Config.QueryText) and keys (Config.RedisKeys): then the kernel
// may stand for commands whose shape the agent registered.
func RedisShapeSpans(queryText string, keys bool) bool {
	return queryText != QueryFull && !keys
}

// redisShapeOnly tells whether the span of a command named name is all in
// its shape: its op is its name (not a container's subcommand), it is
// answered by one reply, and it changes nothing of what the connection's
// later spans say (its database, a transaction, a subscription).
func redisShapeOnly(name, mode string, keys bool) bool {
	return name != "" && RedisShapeSpans(mode, keys) && !redisContainers[name] && !redisStateful[name] && !redisBlocking[name]
}

// redisBlocking are the commands whose reply may wait for long: a shape
// unused for minutes is taken back from the kernel and forgotten (heads'
// sweep), and so would a record that comes after that.
var redisBlocking = map[string]bool{
	"BLPOP": true, "BRPOP": true, "BLMOVE": true, "BRPOPLPUSH": true, "BLMPOP": true, "BZPOPMIN": true, "BZPOPMAX": true,
	"BZMPOP": true, "XREAD": true, "XREADGROUP": true, "WAIT": true, "WAITAOF": true,
}

// redisStateful are the commands that change how a connection's later
// commands and replies are read, or answer with more than one reply.
// (The kernel takes none of them but UNSUBSCRIBE and its kin, QUIT and
// REPLCONF, which it need not know.)
var redisStateful = map[string]bool{
	"SELECT": true, "MULTI": true, "EXEC": true, "DISCARD": true, "RESET": true, "HELLO": true, "AUTH": true,
	"SUBSCRIBE": true, "PSUBSCRIBE": true, "SSUBSCRIBE": true, "UNSUBSCRIBE": true, "PUNSUBSCRIBE": true,
	"SUNSUBSCRIBE": true, "PSYNC": true, "SYNC": true, "MONITOR": true, "QUIT": true, "REPLCONF": true,
}

// record makes the span of a command of shape, read at start and answered
// at end, not an error: a record of the kernel (bpf.EventRedis). In a
// transaction (its MULTI read behind another command, which the kernel
// does not look at) the command is queued, as parsed, and its span is
// the transaction's.
// It tells whether the command was taken.
func (c *redisConn) record(shape *redisShape, start, end, traceLow uint64) bool {
	if c.done || c.replyOff {
		return false
	}
	c.seen = true
	if c.tx != nil {
		c.tx.queue(shape.op, shape.text)
		return true
	}
	c.report(shape.op, shape.text, c.db, start, start, end, "", "", traceLow)
	return true
}

// redisCmd is a command waiting for its reply.
type redisCmd struct {
	op, text          string
	start, startEnter uint64
	replies           int    // replies it gets: one, or one per channel for SUBSCRIBE
	confirm           string // pubsub confirmation kind: "subscribe", ...
	db                string // the database it runs in
	selectDB          string // SELECT's index
	tx                *redisTx
	txEnd             bool // EXEC or DISCARD
	skip              bool // stands for commands not remembered: no span
	traceLow          uint64
}

// redisTx is a MULTI ... EXEC transaction.
type redisTx struct {
	start, startEnter uint64
	db                string
	ops               []string
	texts             []string
	n                 int  // commands queued
	partial           bool // some of its commands were not captured
	errCode, errMsg   string
}

// queue counts a command queued in the transaction, and keeps its op and
// text while there is room.
func (tx *redisTx) queue(op, text string) {
	tx.n++
	if len(tx.ops) < redisMaxTxOps {
		tx.ops = append(tx.ops, op)
		tx.texts = append(tx.texts, text)
	}
}

// redisReply is what the pairing needs of a complete reply.
type redisReply struct {
	kind      byte   // type of the top-level value
	err       []byte // a top-level error: "ERR unknown command"
	nestedErr []byte // the first error among its elements (EXEC's results)
	first     []byte // its first element, when a string: pubsub kinds
	// count is its third element when that is an integer after a string
	// first, -1 else: a pubsub confirmation's count of subscriptions.
	count int64
}

func detectRedis(cfg Config) detector {
	return func(dir bpf.Direction, seg *segment, emit emitter) protocolParser {
		if !redisCommandStart(seg.data) {
			return nil
		}
		return newRedisConn(cfg, dir, emit)
	}
}

// newRedisConn follows a Redis connection whose commands travel in dir.
func newRedisConn(cfg Config, dir bpf.Direction, emit emitter) *redisConn {
	c := &redisConn{mode: cfg.QueryText, keys: cfg.RedisKeys, emit: emit, cmdDir: dir, role: RoleServer}
	if dir == bpf.Egress {
		c.role = RoleClient
	} else {
		c.heads = cfg.heads
	}
	c.cmds.onCommand = c.onCommand
	c.cmds.onCut = func() {
		if c.tx != nil {
			c.tx.partial = true
		}
	}
	c.reps.onReply = c.onReply
	return c
}

// redisCommandStart recognises the start of a command: an array of bulk
// strings whose first is a command's name ("*2\r\n$3\r\nGET\r\n"), or an
// inline PING. Other inline commands are parsed once the protocol is
// known, but too much text looks like them to start from one. A reply
// can be an array of bulk strings too (SMEMBERS', a pubsub message), and
// is what a connection older than the agent may show first: its first
// string must be a command Redis has (or a module's), and a pubsub
// confirmation, whose count is an integer, is none.
func redisCommandStart(b []byte) bool {
	if len(b) > 0 && b[0] != '*' {
		line, _, ok := bytes.Cut(b, []byte("\n"))
		name, _, _ := bytes.Cut(bytes.TrimRight(line, "\r"), []byte(" "))
		return ok && len(b) <= 512 && bytes.EqualFold(name, []byte("PING"))
	}
	line, rest, ok := bytes.Cut(b, []byte("\r\n"))
	if !ok || len(line) < 2 {
		return false
	}
	count, err := strconv.Atoi(string(line[1:]))
	if err != nil || count < 1 || count > 1<<20 {
		return false
	}
	for i := range count {
		if len(rest) == 0 {
			if i == 0 {
				return false // a bare array header: a reply's as well
			}
			break // the rest is in later segments
		}
		line, after, ok := bytes.Cut(rest, []byte("\r\n"))
		if !ok {
			return i > 0 && rest[0] == '$' // a header cut by the segment
		}
		if len(line) < 2 || line[0] != '$' {
			return false
		}
		n, err := strconv.Atoi(string(line[1:]))
		if err != nil || n < 0 || i == 0 && (n < 1 || n > 64) {
			return false
		}
		if i == 0 && (len(after) < n+2 || after[n] != '\r' || after[n+1] != '\n' || !redisKnownCommand(after[:n])) {
			return false
		}
		if len(after) < n+2 {
			break // a long argument: the rest is in later segments
		}
		rest = after[n+2:]
	}
	return true
}

func redisNameLike(b []byte) bool {
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '|') {
			return false
		}
	}
	return len(b) > 0 && (b[0] >= 'a' && b[0] <= 'z' || b[0] >= 'A' && b[0] <= 'Z')
}

func (c *redisConn) feed(dir bpf.Direction, seg *segment) {
	if c.done {
		return
	}
	if dir == c.cmdDir {
		if c.reps.lost {
			// The client moved on, so the server answered all it was
			// asked, in bytes we could not follow.
			for len(c.pending) > 0 {
				c.answer(redisReply{}, c.lastRep)
			}
			c.reps.reset()
		}
		if seg.flags&bpf.FlagGap != 0 {
			// The kernel dropped a command not picked for a span
			// (bpf.Fast.Redis), and its reply is still to come: the
			// first reply is its.
			c.pending = append(c.pending, &redisCmd{skip: true, replies: 1})
		}
		c.cmds.feed(seg)
		if seg.flags&bpf.FlagLost != 0 {
			// The rest of a dropped command's reply comes first, from
			// where the kernel stopped dropping it: not to be parsed.
			// This command is answered when the client sends the next.
			c.reps.lose()
		}
	} else {
		c.lastRep = seg.exit
		c.reps.feed(seg)
	}
}

func (c *redisConn) closed(uint64) {
	if c.reps.lost {
		// Commands were answered by replies it could not parse (after
		// bpf.FlagLost, or bytes not captured): those a reply came after
		// end with it, as they would have at the next command.
		for len(c.pending) > 0 && c.pending[0].start < c.lastRep {
			c.answer(redisReply{}, c.lastRep)
		}
	}
	c.pending = nil
	c.done = true
}

// stateful: a connection that knows its database (it saw SELECT, or the
// HELLO or AUTH that starts a connection in database 0), or is in a
// transaction or subscribed, would lose that if forgotten while idle in a
// pool, or while the kernel drops a server's commands.
func (c *redisConn) stateful() bool {
	return c.db != "" || c.tx != nil || c.pubsub
}

// redisLines reads CRLF-terminated lines across segments.
type redisLines struct {
	line []byte
}

type lineStatus uint8

const (
	lineOK      lineStatus = iota
	linePartial            // the line goes on in the next segment
	lineLost               // the line runs into bytes not captured, or is too long
)

// read returns the line at pos (without its CRLF) and the position after
// it. The line is valid until the next call. A line that runs into bytes
// not captured is lost, and read returns what was captured of it.
func (l *redisLines) read(seg *segment, pos int) ([]byte, int, lineStatus) {
	captured := len(seg.data)
	if pos >= captured {
		l.line = l.line[:0]
		return nil, pos, lineLost
	}
	i := bytes.IndexByte(seg.data[pos:], '\n')
	if i < 0 {
		if captured < seg.total && len(l.line)+captured-pos <= redisMaxLine {
			prefix := append(l.line, seg.data[pos:]...)
			l.line = prefix[:0]
			return prefix, pos, lineLost
		}
		if len(l.line)+captured-pos > redisMaxLine {
			l.line = l.line[:0]
			return nil, pos, lineLost
		}
		l.line = append(l.line, seg.data[pos:]...)
		return nil, seg.total, linePartial
	}
	line := seg.data[pos : pos+i]
	if len(l.line) > 0 {
		if len(l.line)+len(line) > redisMaxLine {
			l.line = l.line[:0]
			return nil, pos, lineLost
		}
		line = append(l.line, line...)
		l.line = line[:0]
	}
	return bytes.TrimSuffix(line, []byte("\r")), pos + i + 1, lineOK
}

// redisCmdStream parses commands from one direction of the connection.
type redisCmdStream struct {
	lines    redisLines
	state    uint8
	nargs    int // arguments still to come
	bulkLeft int // bytes of the current argument, and its CRLF, still to come
	argLen   int
	keeping  bool // the current argument is kept in args
	args     [][]byte
	total    int // arguments in all
	lost     bool
	enter    uint64 // entry and exit times of the segment the command began in
	exit     uint64
	traceLow uint64 // the kernel's draw for the command's trace ID (segment.traceLow)
	// shape is the kernel's hash of the command's shape (bpf.RedisShape),
	// when it starts its segment; 0 when none.
	shape     uint64
	onCommand func(args [][]byte, total int, enter, exit, traceLow, shape uint64)
	onCut     func() // commands were lost
}

const (
	rcIdle = iota
	rcArray
	rcBulkHeader
	rcBulk
	rcInline
)

func (s *redisCmdStream) reset() {
	s.state, s.nargs, s.bulkLeft, s.lost = rcIdle, 0, 0, false
	s.lines.line = s.lines.line[:0]
	s.args = s.args[:0]
}

func (s *redisCmdStream) feed(seg *segment) {
	if s.lost {
		if !redisCommandStart(seg.data) {
			return
		}
		s.reset()
	}
	captured := len(seg.data)
	pos := 0
	for pos < seg.total {
		switch s.state {
		case rcIdle:
			if pos >= captured {
				s.cut(seg, nil)
				return
			}
			switch seg.data[pos] {
			case '\r', '\n', ' ':
				pos++ // blank inline lines
				continue
			case '*':
				s.state = rcArray
			default:
				s.state = rcInline
			}
			s.enter, s.exit, s.traceLow, s.shape = seg.enter, seg.exit, seg.traceLow, 0
			if pos == 0 {
				s.shape = seg.headHash // the kernel hashes the first command of a read
			}
			s.args, s.total = s.args[:0], 0
		case rcArray, rcBulkHeader, rcInline:
			line, next, st := s.lines.read(seg, pos)
			switch st {
			case linePartial:
				return
			case lineLost:
				s.cut(seg, line)
				return
			}
			pos = next
			if !s.line(line) {
				s.lose()
				return
			}
		case rcBulk:
			n := min(s.bulkLeft, seg.total-pos)
			if s.keeping && pos < captured {
				arg := s.args[len(s.args)-1]
				// Only the argument's bytes, not its CRLF.
				room := min(redisMaxArgBytes, s.argLen) - len(arg)
				if done := s.argLen + 2 - s.bulkLeft; done == len(arg) && room > 0 {
					s.args[len(s.args)-1] = append(arg, seg.data[pos:pos+min(n, room, captured-pos)]...)
				}
			}
			s.bulkLeft -= n
			pos += n
			if s.bulkLeft == 0 {
				s.state = rcBulkHeader
				if s.nargs--; s.nargs == 0 {
					s.complete()
				}
			}
		}
	}
}

// line handles a header line or an inline command; false: not RESP.
func (s *redisCmdStream) line(line []byte) bool {
	switch s.state {
	case rcInline:
		s.args = redisSplitInline(line, s.args[:0])
		s.total = len(s.args)
		if len(s.args) > 0 {
			s.complete()
		}
		s.state = rcIdle
		return true
	case rcArray:
		n, ok := redisInt(line, '*')
		if !ok {
			return false
		}
		if n <= 0 {
			s.state = rcIdle // an empty command: nothing to run
			return true
		}
		s.nargs, s.total, s.state = int(min(n, 1<<30)), int(min(n, 1<<30)), rcBulkHeader
		return true
	case rcBulkHeader:
		n, ok := redisInt(line, '$')
		if !ok || n < 0 || n > 1<<31 {
			return false
		}
		s.argLen, s.bulkLeft, s.state = int(n), int(n)+2, rcBulk
		s.keeping = len(s.args) < redisMaxArgs
		if s.keeping {
			var buf []byte
			if len(s.args) < cap(s.args) {
				buf = s.args[:len(s.args)+1][len(s.args)][:0] // reuse
			}
			s.args = append(s.args, buf)
		}
		return true
	}
	return false
}

func (s *redisCmdStream) complete() {
	s.state = rcIdle
	if len(s.args) > 0 && s.onCommand != nil {
		s.onCommand(s.args, s.total, s.enter, s.exit, s.traceLow, s.shape)
	}
}

// cut handles a command that runs into bytes not captured: it is sent
// with what was seen of it, and the stream loses its place. A segment
// that ends with EXEC (as a pipelined transaction does) sends EXEC too.
func (s *redisCmdStream) cut(seg *segment, prefix []byte) {
	switch {
	case s.state == rcInline && len(prefix) > 0:
		s.line(prefix)
	case s.state == rcBulkHeader && len(s.args) > 0:
		s.total = max(s.total, len(s.args))
		s.complete()
	}
	if s.onCut != nil {
		s.onCut()
	}
	if t := lastBytes(seg, 14); bytes.EqualFold(t, []byte("*1\r\n$4\r\nEXEC\r\n")) && s.onCommand != nil {
		s.onCommand([][]byte{[]byte("EXEC")}, 1, seg.enter, seg.exit, 0, 0)
	}
	s.lose()
}

func (s *redisCmdStream) lose() {
	s.reset()
	s.lost = true
}

// redisInt parses a header line "<kind><integer>".
func redisInt(line []byte, kind byte) (int64, bool) {
	if len(line) < 2 || line[0] != kind || len(line) > 21 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(line[1:]), 10, 64)
	return n, err == nil
}

// redisSplitInline splits an inline command into its arguments, honouring
// double quotes as redis-cli writes them.
func redisSplitInline(line []byte, args [][]byte) [][]byte {
	for len(line) > 0 && len(args) < redisMaxArgs {
		line = bytes.TrimLeft(line, " \t")
		if len(line) == 0 {
			break
		}
		var arg []byte
		if line[0] == '"' || line[0] == '\'' {
			q := line[0]
			i := 1
			for i < len(line) && line[i] != q {
				if line[i] == '\\' && i+1 < len(line) {
					i++
				}
				arg = append(arg, line[i])
				i++
			}
			line = line[min(i+1, len(line)):]
		} else {
			end := bytes.IndexAny(line, " \t")
			if end < 0 {
				end = len(line)
			}
			arg = append(arg, line[:end]...)
			line = line[end:]
		}
		args = append(args, arg[:min(len(arg), redisMaxArgBytes)])
	}
	return args
}

// redisReplyStream parses replies from one direction of the connection.
type redisReplyStream struct {
	lines     redisLines
	stack     []redisFrame
	bulkLeft  int  // bytes of a bulk string, and its CRLF, still to come
	bulkErr   bool // the bulk string is a blob error
	bulkLen   int
	keep      *[]byte // where the bulk string's bytes go, if anywhere
	keepFirst bool    // the bulk string is the first element of the reply
	reply     redisReply
	errBuf    []byte
	firstBuf  []byte
	lost      bool
	onReply   func(r redisReply, exit uint64)
	exit      uint64
}

type redisFrame struct {
	left int  // elements still to come
	seen int  // elements seen
	attr bool // an attribute (RESP3 '|'): not a value of its own
}

func (s *redisReplyStream) reset() {
	s.stack, s.bulkLeft, s.lost, s.keep = s.stack[:0], 0, false, nil
	s.lines.line = s.lines.line[:0]
	s.reply = redisReply{}
}

func (s *redisReplyStream) feed(seg *segment) {
	if s.lost {
		return // until the client sends a command again (redisConn.feed)
	}
	s.exit = seg.exit
	captured := len(seg.data)
	pos := 0
	for pos < seg.total {
		if s.bulkLeft > 0 {
			n := min(s.bulkLeft, seg.total-pos)
			if s.keep != nil && pos < captured {
				done := s.bulkLen + 2 - s.bulkLeft
				if room := min(s.bulkLen, 512) - len(*s.keep); done == len(*s.keep) && room > 0 {
					*s.keep = append(*s.keep, seg.data[pos:pos+min(n, room, captured-pos)]...)
				}
			}
			s.bulkLeft -= n
			pos += n
			if s.bulkLeft == 0 {
				if s.bulkErr {
					s.errorValue(s.errBuf)
				}
				if s.keepFirst {
					s.reply.first = s.firstBuf
				}
				s.keep, s.keepFirst = nil, false
				s.valueDone()
			}
			continue
		}
		line, next, st := s.lines.read(seg, pos)
		switch st {
		case linePartial:
			return
		case lineLost:
			if len(line) > 0 && len(s.stack) == 0 && strings.IndexByte("+-:,#(_", line[0]) >= 0 {
				// A status or an error longer than the capture prefix:
				// it answers, though what follows it is lost.
				s.line(line)
			}
			s.lose()
			return
		}
		pos = next
		if !s.line(line) {
			s.lose()
			return
		}
	}
}

func (s *redisReplyStream) lose() {
	s.reset()
	s.lost = true
}

// line handles one header or simple-value line; false: not RESP.
func (s *redisReplyStream) line(line []byte) bool {
	if len(line) == 0 {
		return false
	}
	t := line[0]
	depth := len(s.stack)
	if depth == 0 {
		s.reply = redisReply{kind: t, count: -1}
	}
	first := depth == 1 && s.stack[0].seen == 0 && !s.stack[0].attr
	switch t {
	case '+', ':', ',', '#', '(', '_':
		if first && t == '+' {
			s.firstBuf = append(s.firstBuf[:0], line[1:min(len(line), 33)]...)
			s.reply.first = s.firstBuf
		}
		if t == ':' && depth == 1 && s.stack[0].seen == 2 && len(s.reply.first) > 0 {
			// The third element after a string: a pubsub confirmation's count.
			if n, err := strconv.ParseInt(string(line[1:]), 10, 64); err == nil {
				s.reply.count = n
			}
		}
		s.valueDone()
	case '-':
		s.errorValue(line[1:])
		s.valueDone()
	case '$', '=', '!':
		n, err := strconv.ParseInt(string(line[1:]), 10, 64)
		if err != nil || n > 1<<31 {
			return false
		}
		if n < 0 {
			s.valueDone() // RESP2 null
			return true
		}
		s.bulkLen, s.bulkLeft, s.bulkErr, s.keep, s.keepFirst = int(n), int(n)+2, t == '!', nil, false
		switch {
		case t == '!':
			s.errBuf = s.errBuf[:0]
			s.keep = &s.errBuf
		case first && t == '$':
			s.firstBuf = s.firstBuf[:0]
			s.keep, s.keepFirst = &s.firstBuf, true
		}
	case '*', '~', '>', '%', '|':
		n, err := strconv.ParseInt(string(line[1:]), 10, 64)
		if err != nil || n > 1<<31 {
			return false
		}
		if t == '%' || t == '|' {
			n *= 2
		}
		if n <= 0 {
			s.valueDone() // empty, or RESP2 null array
			return true
		}
		if depth == redisMaxDepth {
			return false
		}
		s.stack = append(s.stack, redisFrame{left: int(n), attr: t == '|'})
	default:
		return false
	}
	return true
}

// errorValue records an error: the reply's own, or the first among its
// elements.
func (s *redisReplyStream) errorValue(msg []byte) {
	switch len(s.stack) {
	case 0:
		s.reply.err = append([]byte(nil), msg[:min(len(msg), 512)]...)
	case 1:
		if s.reply.nestedErr == nil {
			s.reply.nestedErr = append([]byte(nil), msg[:min(len(msg), 512)]...)
		}
	}
}

// valueDone ends a value, and the aggregates it completes.
func (s *redisReplyStream) valueDone() {
	for {
		if len(s.stack) == 0 {
			if s.reply.kind == '|' {
				return // an attribute: the reply itself follows
			}
			r := s.reply
			s.reply = redisReply{}
			s.onReply(r, s.exit)
			return
		}
		top := &s.stack[len(s.stack)-1]
		top.seen++
		if top.left--; top.left > 0 {
			return
		}
		attr := top.attr
		s.stack = s.stack[:len(s.stack)-1]
		if attr {
			// An attribute is not an element of what holds it.
			if len(s.stack) == 0 {
				s.reply = redisReply{}
			}
			return
		}
	}
}

// redisContainers are the commands whose first argument is a subcommand.
var redisContainers = map[string]bool{
	"ACL": true, "CLIENT": true, "CLUSTER": true, "COMMAND": true, "CONFIG": true, "DEBUG": true,
	"FUNCTION": true, "LATENCY": true, "MEMORY": true, "MODULE": true, "OBJECT": true, "PUBSUB": true,
	"SCRIPT": true, "SLOWLOG": true, "XGROUP": true, "XINFO": true,
}

// redisKeyless are the commands whose first argument is not a key.
var redisKeyless = map[string]bool{
	"PING": true, "ECHO": true, "AUTH": true, "HELLO": true, "SELECT": true, "QUIT": true, "RESET": true,
	"MULTI": true, "EXEC": true, "DISCARD": true, "UNWATCH": true, "INFO": true, "DBSIZE": true,
	"FLUSHDB": true, "FLUSHALL": true, "SAVE": true, "BGSAVE": true, "BGREWRITEAOF": true, "LASTSAVE": true,
	"TIME": true, "SWAPDB": true, "WAIT": true, "WAITAOF": true, "KEYS": true, "SCAN": true, "RANDOMKEY": true,
	"PUBLISH": true, "SPUBLISH": true, "SUBSCRIBE": true, "UNSUBSCRIBE": true, "PSUBSCRIBE": true,
	"PUNSUBSCRIBE": true, "SSUBSCRIBE": true, "SUNSUBSCRIBE": true, "MONITOR": true, "SHUTDOWN": true,
	"REPLICAOF": true, "SLAVEOF": true, "ROLE": true, "LOLWUT": true, "READONLY": true, "READWRITE": true,
	"FAILOVER": true, "SYNC": true, "PSYNC": true, "REPLCONF": true, "EVAL": true, "EVALSHA": true,
	"EVAL_RO": true, "EVALSHA_RO": true, "FCALL": true, "FCALL_RO": true, "XREAD": true, "XREADGROUP": true,
	"LMPOP": true, "BLMPOP": true, "ZMPOP": true, "BZMPOP": true, "SINTERCARD": true, "ZUNION": true,
	"ZINTER": true, "ZDIFF": true, "ZINTERCARD": true,
}

// redisPubsubKinds are the first elements of pubsub messages and
// confirmations.
var redisPubsubKinds = map[string]bool{
	"message": true, "pmessage": true, "smessage": true, "subscribe": true, "unsubscribe": true,
	"psubscribe": true, "punsubscribe": true, "ssubscribe": true, "sunsubscribe": true,
}

func (c *redisConn) onCommand(args [][]byte, total int, enter, exit, traceLow, shape uint64) {
	name := ""
	if redisNameLike(args[0]) && len(args[0]) <= 32 {
		name = strings.ToUpper(string(args[0]))
	}
	op, sub := name, ""
	argStart := 1
	if redisContainers[name] && len(args) > 1 && redisNameLike(args[1]) && len(args[1]) <= 32 {
		sub = strings.ToUpper(string(args[1]))
		op += " " + sub
		argStart = 2
	}
	if !c.seen && (name == "HELLO" || name == "AUTH") && c.db == "" {
		c.db = "0" // the handshake: the connection starts in database 0
	}
	c.seen = true
	switch {
	case name == "PSYNC" || name == "SYNC" || name == "MONITOR":
		c.done = true // a replication stream or a feed of commands follows
		return
	case op == "CLIENT REPLY" && len(args) > 2:
		switch strings.ToUpper(string(args[2])) {
		case "OFF":
			c.replyOff = true
			return
		case "SKIP":
			c.skipNext = true
			return
		case "ON":
			c.replyOff = false
		}
	}
	if c.replyOff {
		return
	}
	if c.skipNext {
		c.skipNext = false
		return
	}
	p := &redisCmd{op: op, text: c.queryText(name, op, args, total, argStart), start: exit, startEnter: enter, replies: 1, db: c.db, traceLow: traceLow}
	if shape != 0 && c.heads != nil && c.role == RoleServer && c.tx == nil && redisShapeOnly(name, c.mode, c.keys) {
		c.heads.learnRedis(shape, args[0], total, p.op, p.text, exit)
	}
	switch name {
	case "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE":
		p.confirm = strings.ToLower(name)
		p.replies = max(1, total-1)
		c.pubsub = true
	case "SELECT":
		if len(args) > 1 {
			if n, err := strconv.Atoi(string(args[1])); err == nil && n >= 0 {
				// Commands sent after it run in that database, unless
				// it fails.
				p.selectDB = strconv.Itoa(n)
				c.db = p.selectDB
			}
		}
	}
	switch {
	case c.tx == nil && name == "MULTI":
		c.tx = &redisTx{start: exit, startEnter: enter, db: c.db}
		p.tx = c.tx
	case c.tx != nil && (name == "EXEC" || name == "DISCARD" || name == "RESET"):
		p.tx, p.txEnd = c.tx, true
		c.tx = nil
	case c.tx != nil:
		p.tx = c.tx
		c.tx.queue(op, p.text)
	}
	if len(c.pending) >= redisMaxPending {
		// Too many in flight to remember: count them, so that their
		// replies still pair with the commands they answer.
		last := c.pending[len(c.pending)-1]
		if !last.skip {
			last = &redisCmd{skip: true}
			c.pending = append(c.pending, last)
		}
		last.replies += p.replies
		return
	}
	c.pending = append(c.pending, p)
}

func (c *redisConn) onReply(r redisReply, exit uint64) {
	if r.kind == '>' || c.pubsub && r.kind == '*' && redisPubsubKinds[strings.ToLower(string(r.first))] {
		// A pubsub message, a client-tracking invalidation, or a
		// confirmation: only the last answer a command.
		kind := strings.ToLower(string(r.first))
		if r.count >= 0 && strings.HasSuffix(kind, "subscribe") {
			// Every confirmation says how many subscriptions are left,
			// also those that answer no command of their own (an
			// UNSUBSCRIBE of all is confirmed once per channel).
			if kind == "ssubscribe" || kind == "sunsubscribe" {
				c.shardSubs = r.count
			} else {
				c.subs = r.count
			}
			if c.subs == 0 && c.shardSubs == 0 {
				// No subscription left: the connection is out of pubsub
				// mode, and a reply whose first element is "message"
				// is an ordinary one again.
				c.pubsub = false
			}
		}
		if len(c.pending) == 0 || c.pending[0].confirm == "" || c.pending[0].confirm != kind {
			return
		}
	}
	if len(c.pending) == 0 {
		return
	}
	if p := c.pending[0]; p.replies > 1 {
		p.replies--
		return
	}
	c.answer(r, exit)
}

// answer ends the oldest command with reply r, and makes its span, or its
// transaction's.
func (c *redisConn) answer(r redisReply, end uint64) {
	p := c.pending[0]
	c.pending = c.pending[1:]
	code, msg := redisError(r.err)
	switch {
	case r.err != nil && p.selectDB != "" && c.db == p.selectDB:
		c.db = p.db
	case r.err == nil && p.op == "RESET":
		c.pubsub, c.db, c.subs, c.shardSubs = false, "0", 0, 0
	}
	if p.skip {
		return
	}
	if tx := p.tx; tx != nil {
		if tx.errMsg == "" && r.err != nil {
			tx.errCode, tx.errMsg = code, msg
		}
		if !p.txEnd {
			return
		}
		if tx.errMsg == "" && r.nestedErr != nil {
			tx.errCode, tx.errMsg = redisError(r.nestedErr)
		}
		op := "MULTI"
		if len(tx.ops) > 0 && len(tx.ops) == tx.n && !tx.partial {
			same := true
			for _, o := range tx.ops {
				same = same && o == tx.ops[0]
			}
			if same {
				op += " " + tx.ops[0]
			}
		}
		text := ""
		if c.mode != QueryOff {
			text = dbText(strings.Join(tx.texts, "; "), dbMaxQueryText)
		}
		c.report(op, text, tx.db, tx.startEnter, tx.start, end, tx.errCode, tx.errMsg, 0)
		return
	}
	c.report(p.op, p.text, p.db, p.startEnter, p.start, end, code, msg, p.traceLow)
}

func (c *redisConn) report(op, text, db string, startEnter, start, end uint64, code, msg string, traceLow uint64) {
	r := newDBRequest(ProtoRedis)
	r.DBOperation, r.DBQuery, r.DBNamespace = op, text, db
	r.TraceIDLow = traceLow
	r.ErrorCode, r.ErrorMessage = code, dbErrorText(msg, c.mode)
	if c.role == RoleClient {
		c.emit(r, RoleClient, startEnter, end)
	} else {
		c.emit(r, RoleServer, start, end)
	}
}

// redisError splits an error reply into its prefix ("ERR", "WRONGTYPE")
// and its message.
func redisError(e []byte) (code, msg string) {
	if e == nil {
		return "", ""
	}
	msg = strings.TrimSpace(dbText(e, 512))
	code, _, _ = strings.Cut(msg, " ")
	if len(code) == 0 || len(code) > 32 || strings.ToUpper(code) != code || !redisNameLike([]byte(code)) {
		code = "ERR"
	}
	return code, msg
}

// queryText is db.query.text for a command: its name and "?" for each
// argument, with the first key when Config.RedisKeys says so, or with
// all arguments but passwords when Config.QueryText is QueryFull.
func (c *redisConn) queryText(name, op string, args [][]byte, total, argStart int) string {
	if c.mode == QueryOff || op == "" {
		return ""
	}
	var b strings.Builder
	b.WriteString(op)
	key := -1
	if c.keys && !redisKeyless[name] && !redisContainers[name] {
		key = argStart
	}
	for i := argStart; i < total; i++ {
		if i-argStart == redisMaxArgs {
			b.WriteString(" ...")
			break
		}
		b.WriteByte(' ')
		switch {
		case i >= len(args) || redisSecret(name, args, i):
			b.WriteByte('?')
		case c.mode == QueryFull || i == key:
			redisWriteArg(&b, args[i])
		default:
			b.WriteByte('?')
		}
	}
	return dbText(b.String(), dbMaxQueryText)
}

// redisSecret tells whether argument i is a password, kept out of
// db.query.text even in full.
func redisSecret(name string, args [][]byte, i int) bool {
	is := func(j int, word string) bool {
		return j > 0 && j < len(args) && strings.EqualFold(string(args[j]), word)
	}
	switch name {
	case "AUTH":
		return true
	case "HELLO":
		return is(i-1, "AUTH") || is(i-2, "AUTH")
	case "MIGRATE":
		return is(i-1, "AUTH") || is(i-1, "AUTH2") || is(i-2, "AUTH2")
	case "ACL":
		return is(1, "SETUSER") && i >= 3
	case "CONFIG":
		return is(1, "SET") && i >= 3 && (is(i-1, "requirepass") || is(i-1, "masterauth") || is(i-1, "masteruser"))
	}
	return false
}

// redisWriteArg writes an argument as redis-cli would show it: bare when
// plain, quoted otherwise.
func redisWriteArg(b *strings.Builder, arg []byte) {
	plain := len(arg) > 0
	for _, c := range arg {
		if c <= ' ' || c >= 0x7f || c == '"' || c == '\'' || c == '\\' {
			plain = false
			break
		}
	}
	if plain {
		b.Write(arg)
	} else {
		b.WriteString(strconv.Quote(string(arg)))
	}
}
