package tracer

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"strings"

	"github.com/podtracer/podtracer/bpf"
)

// MySQL and MariaDB client/server protocol: the observed process is a
// client or the server. COM_QUERY and COM_STMT_EXECUTE make a span each,
// from the command to the end of its response (OK, ERR, or the end of the
// last result set); COM_STMT_PREPARE makes one only when it fails, and
// otherwise remembers the statement for the executions that name its id.
// The database comes from the handshake response, COM_INIT_DB, USE, and
// the schema changes servers report in OK packets.

func init() {
	registerProtocol(ProtoMySQL, 30, func(cfg Config) detector { return detectMySQL(cfg) })
}

// Commands.
const (
	myComQuit            = 0x01
	myComInitDB          = 0x02
	myComQuery           = 0x03
	myComFieldList       = 0x04
	myComStatistics      = 0x09
	myComProcessInfo     = 0x0a
	myComChangeUser      = 0x11
	myComBinlogDump      = 0x12
	myComRegisterSlave   = 0x15
	myComStmtPrepare     = 0x16
	myComStmtExecute     = 0x17
	myComStmtSendLong    = 0x18
	myComStmtClose       = 0x19
	myComStmtFetch       = 0x1c
	myComBinlogDumpGTID  = 0x1e
	myComResetConnection = 0x1f
)

// Capability and status flags.
const (
	myCapConnectWithDB    = 1 << 3
	myCapCompress         = 1 << 5
	myCapProtocol41       = 1 << 9
	myCapSSL              = 1 << 11
	myCapSecureConn       = 1 << 15
	myCapPluginAuthLenenc = 1 << 21
	myCapZstd             = 1 << 26
	myCapQueryAttributes  = 1 << 27

	myStatusMoreResults  = 0x0008
	myStatusCursorExists = 0x0040
	myStatusStateChanged = 0x4000
)

const (
	myMaxPacket     = 0xffffff // a longer payload continues in the next packet
	myMaxPending    = 64
	myMaxStatements = 128
)

type myPhase uint8

const (
	myGreeting  myPhase = iota // the server's greeting comes first
	myHandshake                // the client's handshake response comes next
	myAuth                     // authentication exchanges, until OK
	myCommand                  // commands and responses
)

// myState is where a response is.
type myState uint8

const (
	myFirst         myState = iota // its first packet (or that of the next result set)
	myColumns                      // column definitions
	myColumnsEOF                   // the EOF that may follow the columns
	myRows                         // rows, until EOF, OK or ERR
	myPrepParams                   // COM_STMT_PREPARE: parameter definitions
	myPrepParamsEOF                // their EOF, if any, then the columns
	myPrepColumns                  // COM_STMT_PREPARE: column definitions
	myOK                           // one OK, ERR or EOF packet
	myOnePacket                    // one packet, whatever it holds
	myChangeUser                   // authentication, until OK or ERR
)

// myConn follows one MySQL connection.
type myConn struct {
	mode   string
	last   lastSQL
	emit   emitter
	role   Role
	cliDir bpf.Direction // the direction client packets travel
	cli    dbStream
	srv    dbStream
	phase  myPhase
	caps   uint32 // capabilities both ends have, when the handshake was seen
	system string // Request.DBSystem: "mariadb" when the greeting says so
	done   bool
	// tlsNext: the client asked for TLS (an SSL request); afterTLS: its
	// plaintext comes now, where the handshake response follows with
	// sequence id 2.
	tlsNext, afterTLS bool
	db                string

	stmts    dbStmtCache[uint32] // by statement id
	sqlStmts dbStmtCache[string] // SQL-level PREPARE name FROM '...'
	lastStmt uint32              // the last statement prepared
	lastPrep sqlStatement        // the statement of the last COM_STMT_PREPARE sent (MariaDB's id -1)

	pending []*myCmd
	cliCont bool // the last client packet was full: the next continues it
	srvCont bool
	srvSeq  byte // sequence id of the last server packet
	optEOF  bool // an EOF packet may follow the last response (prepare without CLIENT_DEPRECATE_EOF)
	seg     *segment
	lastSrv uint64 // exit time of the last server segment
}

// myCmd is a command waiting for (the end of) its response.
type myCmd struct {
	com               byte
	stmt              sqlStatement
	known             bool // stmt is known
	span              bool // it makes a span when done (a failed prepare always does)
	start, startEnter uint64
	state             myState
	started           bool   // a packet of its response was seen
	lastExit          uint64 // exit time of the segment of its last packet seen
	left              int    // definitions left to read
	cols              int    // COM_STMT_PREPARE: column definitions after the parameters
	useDB             string
}

func detectMySQL(cfg Config) detector {
	return func(dir bpf.Direction, seg *segment, emit emitter) protocolParser {
		c := &myConn{mode: cfg.QueryText, emit: emit}
		switch {
		case myGreetingPacket(seg):
			// The greeting travels from server to client.
			c.cliDir = bpf.Ingress
			if dir == bpf.Ingress {
				c.cliDir = bpf.Egress
			}
			c.phase = myGreeting
		case myMidStream(seg):
			c.cliDir = dir
			c.phase = myCommand
		default:
			return nil
		}
		c.role = RoleServer
		if c.cliDir == bpf.Egress {
			c.role = RoleClient
		}
		c.stmts.max = myMaxStatements
		c.sqlStmts.max = 16
		c.cli.hdrLen, c.srv.hdrLen = 4, 4
		c.cli.header = func(h []byte) (int, int, bool) { return myHeader(h, dbMaxQueryText+64) }
		c.srv.header = func(h []byte) (int, int, bool) { return myHeader(h, 1024) }
		return c
	}
}

func myHeader(h []byte, keep int) (int, int, bool) {
	return int(h[0]) | int(h[1])<<8 | int(h[2])<<16, keep, true
}

// myGreetingPacket recognises the server's greeting: protocol 10, a
// version string, the packet alone in its segment.
func myGreetingPacket(seg *segment) bool {
	b := seg.data
	if len(b) < 16 {
		return false
	}
	n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	if b[3] != 0 || b[4] != 10 || n < 30 || n+4 != seg.total {
		return false
	}
	v := b[5:min(len(b), 5+64)]
	end := bytes.IndexByte(v, 0)
	if end < 3 || len(b) < 5+end+1+4+8 {
		return false
	}
	for _, ch := range v[:end] {
		if ch < 0x20 || ch > 0x7e {
			return false
		}
	}
	return v[0] >= '0' && v[0] <= '9'
}

// myMidStream recognises a command a client sends on a connection older
// than the agent: COM_QUERY, COM_STMT_PREPARE or COM_STMT_EXECUTE with
// sequence id 0 and a plausible body (after a COM_STMT_CLOSE, which some
// drivers send in the same write).
func myMidStream(seg *segment) bool {
	b := seg.data
	for i := 0; i < 2; i++ {
		if len(b) < 5 {
			return false
		}
		n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
		if b[3] != 0 || n < 1 || n >= myMaxPacket || n+4 > seg.total {
			return false
		}
		body := b[4:min(len(b), 4+n)]
		switch body[0] {
		case myComQuery, myComStmtPrepare:
			text := body[1:]
			if len(text) >= 2 && text[0] == 0 && text[1] == 1 {
				text = text[2:] // query attributes: none
			}
			return n > 1 && sqlTextLike(text)
		case myComStmtExecute:
			return n >= 10 && len(body) >= 10 && body[5] < 0x10 && binary.LittleEndian.Uint32(body[6:]) == 1
		case myComStmtClose:
			if n != 5 || i > 0 || len(b) < 9 {
				return false
			}
			b = b[9:] // what follows must be one of the others
		default:
			return false
		}
	}
	return false
}

// sqlTextLike tells whether b begins like an SQL statement.
func sqlTextLike(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	c := b[0]
	if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '(' || c == '/' || c == '-' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
		return false
	}
	for _, c := range b[:min(len(b), 64)] {
		if c < 0x20 && c != '\t' && c != '\n' && c != '\r' || c == 0x7f {
			return false
		}
	}
	return true
}

// stateful: a connection that knows its database (from its handshake or
// a USE) or has prepared statements would lose them if forgotten while
// idle in a pool.
func (c *myConn) stateful() bool {
	return c.db != "" || len(c.stmts.m) > 0 || len(c.sqlStmts.m) > 0
}

func (c *myConn) feed(dir bpf.Direction, seg *segment) {
	if c.done {
		return
	}
	if dir == c.cliDir {
		c.feedClient(seg)
	} else {
		c.feedServer(seg)
	}
}

// startTLS goes on with the TLS plaintext after the client's SSL request:
// its handshake response comes next.
func (c *myConn) startTLS() bool {
	if !c.tlsNext {
		return false
	}
	c.tlsNext, c.afterTLS, c.done = false, true, false
	c.cli.reset()
	c.srv.reset()
	c.cliCont, c.srvCont = false, false
	return true
}

func (c *myConn) closed(uint64) {
	c.pending = nil
	c.done = true
}

func (c *myConn) feedClient(seg *segment) {
	if c.cli.lost {
		if !myPlausible(seg) {
			return
		}
		c.cli.reset()
		c.cliCont = false
	}
	if c.cli.walk(seg, 0, c.onClient) == dbWalkLost {
		c.cli.reset()
		c.cli.lost = true
	}
}

func (c *myConn) feedServer(seg *segment) {
	c.seg = seg
	defer func() { c.seg = nil }()
	c.lastSrv = seg.exit
	if c.srv.lost {
		if !myPlausible(seg) {
			c.serverLost(seg)
			return
		}
		c.srv.reset()
		c.srvCont = false
	}
	if c.srv.walk(seg, 0, c.onServer) == dbWalkLost {
		c.srv.reset()
		c.srv.lost = true
		if len(c.pending) > 0 {
			switch p := c.pending[0]; p.state {
			case myColumns, myColumnsEOF:
				p.state = myRows // the lost part most likely ran into the rows
			}
		}
		c.serverLost(seg)
	}
}

// serverLost handles a server segment that could not all be followed: if
// it ends with the EOF or OK packet that ends a result set, the oldest
// command is answered and the stream is in step again.
func (c *myConn) serverLost(seg *segment) {
	t := lastBytes(seg, 16)
	for i := 0; i+5 <= len(t); i++ {
		n := int(t[i]) | int(t[i+1])<<8 | int(t[i+2])<<16
		if n < 5 || n >= 9 || i+4+n != len(t) || t[i+4] != 0xfe {
			continue
		}
		status, ok := myEOFStatus(t[i+4:])
		if !ok || status&myStatusMoreResults != 0 {
			return
		}
		if len(c.pending) > 0 {
			c.finish(c.pending[0], "", "", seg.exit)
		}
		c.srv.reset()
		c.srvCont = false
		return
	}
}

// myPlausible tells whether seg starts with MySQL packets: one that fills
// it, or a chain of packets with consecutive sequence ids.
func myPlausible(seg *segment) bool {
	b := seg.data
	pos, n := 0, 0
	var seq byte
	for pos+4 <= len(b) {
		l := int(b[pos]) | int(b[pos+1])<<8 | int(b[pos+2])<<16
		if n > 0 && b[pos+3] != seq+1 {
			return false
		}
		seq = b[pos+3]
		pos += 4 + l
		n++
	}
	return n >= 2 || n == 1 && pos == seg.total
}

// myPacketLen is the payload length in a header.
func myPacketLen(h []byte) int { return int(h[0]) | int(h[1])<<8 | int(h[2])<<16 }

func (c *myConn) onClient(hdr, body []byte, cut bool) bool {
	n := myPacketLen(hdr)
	if c.cliCont {
		c.cliCont = n == myMaxPacket
		return true
	}
	c.cliCont = n == myMaxPacket
	switch c.phase {
	case myHandshake:
		if hdr[3] == 1 || c.afterTLS && hdr[3] == 2 {
			return c.handshakeResponse(body)
		}
		if c.afterTLS && hdr[3] == 0 && len(body) > 0 {
			// The plaintext began after the authentication (the
			// uprobes came in late): joined at this command, as a
			// connection older than the agent is, unless the SSL
			// request asked for compressed packets.
			if c.caps&(myCapCompress|myCapZstd) != 0 {
				c.done = true
				return false
			}
			c.phase = myCommand
			c.command(body[0], body[1:], cut)
		}
	case myCommand:
		if hdr[3] == 0 && len(body) > 0 {
			c.command(body[0], body[1:], cut)
		}
	}
	return true
}

// handshakeResponse reads the client's capabilities and database; an SSL
// request instead means that TLS follows.
func (c *myConn) handshakeResponse(b []byte) bool {
	if len(b) < 4 {
		return true
	}
	caps := binary.LittleEndian.Uint32(b)
	if caps&myCapSSL != 0 && len(b) == 32 {
		// The capabilities are those of the handshake response that
		// follows in TLS, should its plaintext come too late to be read.
		c.caps &= caps
		c.done, c.tlsNext = true, true // the records are not read: their plaintext, if it comes, is (startTLS)
		return false
	}
	c.caps &= caps
	c.phase = myAuth
	if c.caps&(myCapCompress|myCapZstd) != 0 {
		c.done = true // compressed packets follow the authentication
		return false
	}
	if caps&myCapProtocol41 == 0 || len(b) < 33 {
		return true
	}
	rest, ok := afterAuth(b[32:], caps)
	if !ok {
		return true
	}
	if caps&myCapConnectWithDB != 0 {
		if db, _, ok := bytes.Cut(rest, []byte{0}); ok {
			c.db = dbText(db, 256)
		}
	}
	return true
}

// changeUserDB is the database a COM_CHANGE_USER names (a pool resetting a
// session for another user or schema: PHP's persistent connections):
// after the user, the authentication data, by its length since 4.1's
// CLIENT_SECURE_CONNECTION (assumed when the handshake was not seen).
func (c *myConn) changeUserDB(arg []byte) string {
	caps := c.caps &^ myCapPluginAuthLenenc // COM_CHANGE_USER's data has a length byte
	if c.caps == 0 {
		caps = myCapSecureConn
	}
	rest, ok := afterAuth(arg, caps)
	if !ok {
		return ""
	}
	db, _, _ := bytes.Cut(rest, []byte{0})
	return dbText(db, 256)
}

// afterAuth skips a user name and its authentication data, laid out as
// caps say (a lenenc length, a length byte, or a NUL at its end), and
// returns what follows; false when b ends before.
func afterAuth(b []byte, caps uint32) ([]byte, bool) {
	_, rest, ok := bytes.Cut(b, []byte{0}) // the user
	if !ok {
		return nil, false
	}
	switch {
	case caps&myCapPluginAuthLenenc != 0:
		n, k := myLenenc(rest)
		if k == 0 || uint64(len(rest)-k) < n {
			return nil, false
		}
		return rest[k+int(n):], true
	case caps&myCapSecureConn != 0:
		if len(rest) == 0 || len(rest) < 1+int(rest[0]) {
			return nil, false
		}
		return rest[1+int(rest[0]):], true
	}
	_, rest, ok = bytes.Cut(rest, []byte{0})
	return rest, ok
}

// command queues a command for its response; cut says that the capture
// cut arg short.
func (c *myConn) command(com byte, arg []byte, cut bool) {
	if c.srv.lost && len(c.pending) > 0 {
		// The client moved on, so the server has answered all it was
		// asked, in bytes we could not follow.
		for len(c.pending) > 0 {
			p := c.pending[0]
			c.finish(p, "", "", max(p.lastExit, c.lastSrv))
		}
		c.srv.reset()
		c.srvCont = false
	}
	p := &myCmd{com: com, start: c.cli.startExit, startEnter: c.cli.startEnter, state: myOK}
	switch com {
	case myComQuery:
		text := arg
		if c.caps&myCapQueryAttributes != 0 || len(text) >= 2 && text[0] == 0 && text[1] == 1 {
			// Query attributes: a parameter count and a parameter set
			// count (1); with parameters we do not read, the text is lost.
			params, k := myLenenc(text)
			if _, k2 := myLenenc(text[k:]); k > 0 && k2 > 0 && params == 0 {
				text = text[k+k2:]
			} else {
				text = nil
			}
		}
		p.stmt, p.known, p.span, p.state = c.describe(text, cut), len(text) > 0, true, myFirst
		if p.stmt.op == "USE" {
			if w := sqlWords(dbText(text, 512), dialectMySQL, 2); len(w) == 2 {
				p.useDB = dbText(w[1].text, 256)
			}
		}
	case myComStmtPrepare:
		p.stmt, p.known, p.state = describeSQL(string(arg), dialectMySQL, c.mode, cut), true, myFirst
		c.lastPrep = p.stmt
	case myComStmtExecute:
		p.span, p.state = true, myFirst
		if len(arg) >= 4 {
			if id := binary.LittleEndian.Uint32(arg); id == 0xffffffff {
				// MariaDB: the statement prepared just before, in the
				// same write, before its id is known.
				p.stmt, p.known = c.lastPrep, c.lastPrep.op != ""
			} else {
				p.stmt, p.known = c.stmts.get(id)
			}
		}
		if !p.known {
			p.stmt.op = "EXECUTE"
		}
	case myComStmtClose:
		if len(arg) >= 4 {
			c.stmts.del(binary.LittleEndian.Uint32(arg))
		}
		return // no response
	case myComStmtSendLong, myComQuit:
		return // no response
	case myComInitDB:
		p.useDB = dbText(arg, 256)
	case myComStatistics:
		p.state = myOnePacket
	case myComFieldList, myComProcessInfo, myComStmtFetch:
		p.state = myRows
	case myComChangeUser:
		p.state = myChangeUser
		p.useDB = c.changeUserDB(arg)
	case myComBinlogDump, myComBinlogDumpGTID, myComRegisterSlave:
		c.done = true // replication: a stream of events, not responses
		return
	}
	if len(c.pending) == myMaxPending {
		c.pending = c.pending[1:]
	}
	c.pending = append(c.pending, p)
}

// describe describes COM_QUERY text, following USE and SQL-level
// PREPARE, EXECUTE and DEALLOCATE.
func (c *myConn) describe(text []byte, cut bool) sqlStatement {
	stmt := c.last.describe(text, dialectMySQL, c.mode, cut)
	switch stmt.op {
	case "PREPARE", "EXECUTE", "DEALLOCATE", "DROP":
		words := sqlWords(dbText(text, 512), dialectMySQL, 4)
		if len(words) < 2 {
			break
		}
		name := words[1].text
		switch stmt.op {
		case "PREPARE":
			// PREPARE name FROM 'statement'
			if len(words) == 4 && strings.EqualFold(words[2].text, "FROM") && words[3].kind == sqlTokLiteral {
				if q, err := strconv.Unquote(`"` + strings.ReplaceAll(strings.Trim(words[3].text, `'"`), `"`, `\"`) + `"`); err == nil {
					c.sqlStmts.put(strings.ToLower(name), describeSQL(q, dialectMySQL, c.mode, false))
				}
			}
		case "EXECUTE":
			if s, ok := c.sqlStmts.get(strings.ToLower(name)); ok {
				stmt.op, stmt.table, stmt.summary = s.op, s.table, s.summary
			}
		default: // DEALLOCATE PREPARE name, DROP PREPARE name
			if strings.EqualFold(name, "PREPARE") && len(words) > 2 {
				c.sqlStmts.del(strings.ToLower(words[2].text))
			}
		}
	}
	return stmt
}

func (c *myConn) onServer(hdr, body []byte, cut bool) bool {
	n := myPacketLen(hdr)
	if c.srvCont {
		c.srvCont = n == myMaxPacket
		return true
	}
	c.srvCont = n == myMaxPacket
	switch c.phase {
	case myGreeting:
		c.greeting(body)
		c.phase = myHandshake
		return true
	case myHandshake:
		return true
	case myAuth:
		if len(body) > 0 {
			switch body[0] {
			case 0x00:
				c.okPacket(body)
				c.phase = myCommand
			case 0xff:
				c.done = true // access denied: the server closes
				return false
			}
		}
		return true
	}
	if c.optEOF {
		c.optEOF = false
		if n == 5 && len(body) > 0 && body[0] == 0xfe {
			return true
		}
	}
	seq := hdr[3]
	last := c.srvSeq
	c.srvSeq = seq
	if len(c.pending) > 0 && c.pending[0].started && seq == 1 && last != 0 {
		// A response starts (its first packet is number 1, and this one
		// does not follow packet 0): the one before ended where we did
		// not see it.
		c.finish(c.pending[0], "", "", c.pending[0].lastExit)
	}
	if len(c.pending) == 0 || len(body) == 0 {
		return true
	}
	c.pending[0].started = true
	c.pending[0].lastExit = c.seg.exit
	c.response(c.pending[0], n, body)
	return true
}

// greeting reads the server's version and capabilities.
func (c *myConn) greeting(b []byte) {
	version, rest, ok := bytes.Cut(b[min(1, len(b)):], []byte{0})
	if !ok {
		return
	}
	// MariaDB speaks MySQL's protocol and names itself in its version
	// ("5.5.5-10.11.6-MariaDB-0+deb12u1"); the conventions tell the two
	// apart (db.system.name "mariadb").
	if bytes.Contains(version, []byte("MariaDB")) {
		c.system = "mariadb"
	}
	if len(rest) < 4+8+1+2 {
		return
	}
	caps := uint32(binary.LittleEndian.Uint16(rest[13:]))
	if len(rest) >= 4+8+1+2+1+2+2 {
		caps |= uint32(binary.LittleEndian.Uint16(rest[18:])) << 16
	}
	c.caps = caps
}

// response advances p's response by one packet of length n.
func (c *myConn) response(p *myCmd, n int, b []byte) {
	end := c.seg.exit
	if b[0] == 0xff && p.state != myOnePacket && p.state != myPrepParams && p.state != myPrepColumns {
		code, msg, progress := myError(b)
		if !progress {
			c.finish(p, code, msg, end)
		}
		return
	}
	switch p.state {
	case myFirst:
		switch b[0] {
		case 0x00:
			if p.com == myComStmtPrepare {
				c.prepared(p, b)
				return
			}
			if c.okPacket(b)&myStatusMoreResults == 0 {
				c.finish(p, "", "", end)
			}
		case 0xfb:
			p.state = myOK // LOCAL INFILE: the client sends the file, then OK
		default:
			cols, k := myLenenc(b)
			switch {
			case k == 0:
				c.finish(p, "", "", end)
			case n == k+1 && len(b) > k && b[k] == 0: // MariaDB: column definitions cached, not sent (b may be cut before that byte)
				p.state = myRows
			case cols == 0:
				p.state = myRows
			default:
				p.state, p.left = myColumns, int(min(cols, 1<<16))
			}
		}
	case myColumns:
		if p.left--; p.left <= 0 {
			p.state = myColumnsEOF
		}
	case myColumnsEOF:
		p.state = myRows
		if b[0] == 0xfe && n == 5 {
			if status, _ := myEOFStatus(b); status&myStatusCursorExists != 0 {
				c.finish(p, "", "", end) // rows come with COM_STMT_FETCH
			}
			return
		}
		c.response(p, n, b)
	case myRows:
		if b[0] == 0xfe && n < 9 {
			status, _ := myEOFStatus(b)
			if status&myStatusMoreResults != 0 {
				p.state = myFirst
			} else {
				c.finish(p, "", "", end)
			}
		}
	case myPrepParams:
		if p.left--; p.left <= 0 {
			p.state = myPrepParamsEOF
			if p.cols == 0 {
				c.finish(p, "", "", end)
				c.optEOF = true
			}
		}
	case myPrepParamsEOF:
		p.state, p.left = myPrepColumns, p.cols
		if b[0] != 0xfe || n != 5 {
			c.response(p, n, b)
		}
	case myPrepColumns:
		if p.left--; p.left <= 0 {
			c.finish(p, "", "", end)
			c.optEOF = true
		}
	case myOK:
		switch b[0] {
		case 0x00:
			c.okPacket(b)
			c.finish(p, "", "", end)
		case 0xfe:
			c.finish(p, "", "", end)
		}
	case myOnePacket:
		c.finish(p, "", "", end)
	case myChangeUser:
		if b[0] == 0x00 {
			c.okPacket(b)
			c.finish(p, "", "", end)
		}
	}
}

// prepared handles COM_STMT_PREPARE_OK: the statement id, and how many
// definitions follow.
func (c *myConn) prepared(p *myCmd, b []byte) {
	if len(b) < 9 {
		c.finish(p, "", "", c.seg.exit)
		return
	}
	id := binary.LittleEndian.Uint32(b[1:])
	cols := int(binary.LittleEndian.Uint16(b[5:]))
	params := int(binary.LittleEndian.Uint16(b[7:]))
	c.stmts.put(id, p.stmt)
	c.lastStmt = id
	p.cols = cols
	switch {
	case params > 0:
		p.state, p.left = myPrepParams, params
	case cols > 0:
		p.state, p.left = myPrepColumns, cols
	default:
		c.finish(p, "", "", c.seg.exit)
	}
}

// okPacket reads an OK packet's status flags, and the schema the server
// reports when the session changed it.
func (c *myConn) okPacket(b []byte) uint16 {
	r := b[min(1, len(b)):]
	for range 2 { // affected rows, last insert id
		_, k := myLenenc(r)
		if k == 0 {
			return 0
		}
		r = r[k:]
	}
	if len(r) < 4 {
		return 0
	}
	status := binary.LittleEndian.Uint16(r)
	r = r[4:]
	if status&myStatusStateChanged == 0 {
		return status
	}
	// Session tracking: info, then the state changes.
	if n, k := myLenenc(r); k > 0 && uint64(len(r)-k) >= n {
		r = r[k+int(n):]
	} else {
		return status
	}
	n, k := myLenenc(r)
	if k == 0 || uint64(len(r)-k) < n {
		return status
	}
	r = r[k : k+int(n)]
	for len(r) > 1 {
		typ := r[0]
		n, k := myLenenc(r[1:])
		if k == 0 || uint64(len(r)-1-k) < n {
			break
		}
		data := r[1+k : 1+k+int(n)]
		r = r[1+k+int(n):]
		if typ == 1 { // SESSION_TRACK_SCHEMA
			if l, k := myLenenc(data); k > 0 && uint64(len(data)-k) >= l {
				c.db = dbText(data[k:k+int(l)], 256)
			}
		}
	}
	return status
}

// finish ends p (the oldest pending command) and makes its span.
func (c *myConn) finish(p *myCmd, code, msg string, end uint64) {
	if len(c.pending) > 0 && c.pending[0] == p {
		c.pending = c.pending[1:]
	}
	if code == "" && msg == "" {
		if p.useDB != "" {
			c.db = p.useDB
		}
		if p.com == myComChangeUser {
			// The session starts again: in the database it names (none
			// when empty), without the statements prepared before.
			c.db = p.useDB
		}
		if p.com == myComResetConnection || p.com == myComChangeUser {
			c.stmts.clear()
			c.sqlStmts.clear()
		}
	}
	if !p.span && !(p.com == myComStmtPrepare && (code != "" || msg != "")) {
		return
	}
	r := newDBRequest(ProtoMySQL)
	r.DBSystem = c.system
	r.DBOperation, r.DBCollection, r.DBSummary, r.DBQuery = p.stmt.op, p.stmt.table, p.stmt.summary, p.stmt.text
	r.DBNamespace = c.db
	r.ErrorCode, r.ErrorMessage = code, dbErrorText(msg, c.mode)
	if c.role == RoleClient {
		c.emit(r, RoleClient, p.startEnter, end)
	} else {
		c.emit(r, RoleServer, p.start, end)
	}
}

// myError reads an ERR packet: the error number, the message, and whether
// it is a MariaDB progress report rather than an error.
func myError(b []byte) (code, msg string, progress bool) {
	if len(b) < 3 {
		return "", "", false
	}
	n := binary.LittleEndian.Uint16(b[1:])
	if n == 0xffff {
		return "", "", true
	}
	m := b[3:]
	if len(m) >= 6 && m[0] == '#' {
		m = m[6:] // #SQLSTATE
	}
	return strconv.Itoa(int(n)), dbText(m, 512), false
}

// myEOFStatus reads the status flags of an EOF packet, or of an OK packet
// sent in its place (0xfe header, CLIENT_DEPRECATE_EOF).
func myEOFStatus(b []byte) (uint16, bool) {
	if len(b) == 5 {
		return binary.LittleEndian.Uint16(b[3:]), true
	}
	r := b[1:]
	for range 2 {
		_, k := myLenenc(r)
		if k == 0 {
			return 0, false
		}
		r = r[k:]
	}
	if len(r) < 2 {
		return 0, false
	}
	return binary.LittleEndian.Uint16(r), true
}

// myLenenc reads a length-encoded integer: its value and size, size 0
// when b does not hold one.
func myLenenc(b []byte) (uint64, int) {
	if len(b) == 0 {
		return 0, 0
	}
	switch c := b[0]; {
	case c < 0xfb:
		return uint64(c), 1
	case c == 0xfc && len(b) >= 3:
		return uint64(binary.LittleEndian.Uint16(b[1:])), 3
	case c == 0xfd && len(b) >= 4:
		return uint64(b[1]) | uint64(b[2])<<8 | uint64(b[3])<<16, 4
	case c == 0xfe && len(b) >= 9:
		return binary.LittleEndian.Uint64(b[1:]), 9
	}
	return 0, 0
}
