package tracer

import (
	"bytes"
	"encoding/binary"
	"strings"

	"github.com/podtracer/podtracer/bpf"
)

// PostgreSQL frontend/backend protocol 3.0: the observed process is a
// client (it sends queries) or the server (it receives them). Each simple
// query ('Q') is one span, ending at its ReadyForQuery; each Execute of the
// extended protocol is one span, ending at its CommandComplete (or error),
// with the text of the statement it runs, remembered from its Parse.
// Pipelined messages pair with their responses in order. A Parse that is
// not executed in its batch (a driver preparing a statement) makes a span
// only when it fails, so that "relation does not exist" still shows.

func init() {
	registerProtocol(ProtoPostgreSQL, 20, func(cfg Config) detector { return detectPostgres(cfg) })
}

const (
	pgSSLRequest    = 80877103
	pgGSSENCRequest = 80877104
	pgCancelRequest = 80877102

	pgMaxMessage    = 1 << 30
	pgMaxStartup    = 10000 // the server's own limit
	pgMaxBatches    = 64    // pending Sync batches and simple queries
	pgMaxItems      = 64    // executions remembered per batch
	pgMaxStatements = 128   // prepared statements remembered per connection
	pgMaxPortals    = 16
	// pgMaxHeldText bounds the query text (up to dbMaxQueryText a
	// statement) the pending batches of a connection hold, counted per
	// reference. 64 batches of 64 statements would otherwise hold 16 MB;
	// real pipelines hold far less (short queries, or few in flight), and
	// past the bound statements keep their operation and table, so their
	// spans lose only db.query.text.
	pgMaxHeldText = 256 << 10
)

// pgFrontendTypes and pgBackendTypes are the message types each side sends
// after startup.
const (
	pgFrontendTypes = "BCDEFHPQSXcdfp"
	pgBackendTypes  = "123ACDEGHIKNRSTVWZcdnstv"
)

// pgConn follows one PostgreSQL connection.
type pgConn struct {
	mode  string // Config.QueryText
	last  lastSQL
	emit  emitter
	role  Role
	feDir bpf.Direction // the direction frontend messages travel
	fe    dbStream
	be    dbStream
	// beRaw: the backend answers an SSLRequest or GSSENCRequest with one
	// byte that is not a message.
	beRaw bool
	done  bool // encrypted, or not PostgreSQL after all
	db    string

	stmts   dbStmtCache[string]
	portals map[string]pgItem
	batches []*pgBatch // sent, waiting for their ReadyForQuery
	held    int        // bytes of query text batches hold (pgMaxHeldText)
	seg     *segment   // the backend segment being walked
}

// pgBatch is what a ReadyForQuery answers: a simple query, or the
// extended-protocol messages up to a Sync.
type pgBatch struct {
	start, startEnter uint64 // exit and entry times of its first segment
	simple            bool
	stmt              sqlStatement // simple: the query
	noSpan            bool         // simple: a function call, or nothing worth a span
	tag               string       // simple: the first command tag
	items             []pgItem     // extended: one per Execute
	next              int          // extended: the next item to complete
	parses            []sqlStatement
	parsed            int  // ParseComplete messages seen
	synced            bool // its Sync was sent
	opaque            bool // some of its messages were not captured
	bound             bool // it binds or executes a portal
	reported          bool // a span was made for it
	failed            bool
	errCode, errMsg   string
	held              int // bytes of query text it holds
	// skip > 0: it stands for that many batches beyond pgMaxBatches,
	// only counted, so that their ReadyForQuery still pair; skipOpen:
	// the last of them is an extended batch still being sent.
	skip     int
	skipOpen bool
}

// pgItem is one Execute, and the statement it runs when known.
type pgItem struct {
	stmt  sqlStatement
	known bool
}

func detectPostgres(cfg Config) detector {
	return func(dir bpf.Direction, seg *segment, emit emitter) protocolParser {
		startup := pgStartupMessage(seg.data, seg.total)
		if !startup && !pgMidStream(seg) {
			return nil
		}
		c := &pgConn{mode: cfg.QueryText, emit: emit, feDir: dir, role: RoleServer}
		if dir == bpf.Egress {
			c.role = RoleClient
		}
		c.stmts.max = pgMaxStatements
		c.fe.hdrLen = 5
		if startup {
			c.fe.hdrLen = 4
		}
		c.fe.header = c.frontendHeader
		c.be.hdrLen = 5
		c.be.header = pgBackendHeader
		return c
	}
}

// pgStartupMessage recognises a StartupMessage, SSLRequest, GSSENCRequest
// or CancelRequest: the first message a client sends, without a type byte.
func pgStartupMessage(b []byte, total int) bool {
	if len(b) < 8 {
		return false
	}
	n := int(binary.BigEndian.Uint32(b))
	switch code := binary.BigEndian.Uint32(b[4:]); {
	case code == pgSSLRequest || code == pgGSSENCRequest:
		return n == 8
	case code == pgCancelRequest:
		return n == 16
	case code>>16 == 3 && code&0xffff < 16:
		if n < 9 || n > pgMaxStartup || n > total {
			return false
		}
		return pgStartupParams(b[8:min(n, len(b))], n <= len(b))
	}
	return false
}

// pgStartupParams checks the parameters of a startup message: pairs of
// NUL-terminated names and values, names printable, "user" among them
// (the protocol requires it). Other protocols' bytes (a Kafka Metadata
// request starts like a startup message) do not look like that.
func pgStartupParams(p []byte, whole bool) bool {
	user := false
	for len(p) > 0 {
		k, rest, ok := bytes.Cut(p, []byte{0})
		if !ok {
			return !whole && user // cut by the capture
		}
		if len(k) == 0 {
			return whole && len(rest) == 0 && user
		}
		for _, c := range k {
			if c <= ' ' || c >= 0x7f {
				return false
			}
		}
		user = user || string(k) == "user"
		if _, rest, ok = bytes.Cut(rest, []byte{0}); !ok {
			return !whole && user
		}
		p = rest
	}
	return !whole && user
}

// pgMidStream recognises the messages a client sends on a connection
// older than the agent: a query, or extended-protocol messages, with
// plausible lengths and contents.
func pgMidStream(seg *segment) bool {
	if len(seg.data) < 5 || strings.IndexByte("QPBES", seg.data[0]) < 0 {
		return false
	}
	return pgPlausible(seg, true)
}

// pgPlausible tells whether seg starts with a chain of messages of one
// side (frontend or backend) that are well-formed as far as captured.
func pgPlausible(seg *segment, frontend bool) bool {
	b := seg.data
	types := pgBackendTypes
	if frontend {
		types = pgFrontendTypes
	}
	pos, n := 0, 0
	for pos+5 <= len(b) {
		t := b[pos]
		l := int(binary.BigEndian.Uint32(b[pos+1:]))
		if strings.IndexByte(types, t) < 0 || l < 4 || l > pgMaxMessage || pos+1+l > seg.total {
			return false
		}
		if end := pos + 1 + l; end <= len(b) && !pgBodyPlausible(t, b[pos+5:end], frontend) {
			return false
		}
		pos += 1 + l
		n++
	}
	// Stopped at the end of the capture (a header may continue there),
	// or exactly at the end of the segment.
	return n > 0 && (pos >= len(b) || len(b) < seg.total || pos == seg.total)
}

// pgBodyPlausible checks the bodies whose form is fixed enough to tell
// messages from other bytes.
func pgBodyPlausible(t byte, body []byte, frontend bool) bool {
	if frontend {
		switch t {
		case 'Q':
			return len(body) > 0 && bytes.IndexByte(body, 0) == len(body)-1
		case 'P':
			_, rest, ok := bytes.Cut(body, []byte{0})
			if !ok {
				return false
			}
			_, rest, ok = bytes.Cut(rest, []byte{0})
			return ok && len(rest) >= 2 && len(rest) == 2+4*int(binary.BigEndian.Uint16(rest))
		case 'B':
			return bytes.Count(body, []byte{0}) >= 2
		case 'E':
			i := bytes.IndexByte(body, 0)
			return i >= 0 && len(body) == i+5
		case 'S', 'H', 'X', 'c':
			return len(body) == 0
		case 'D', 'C':
			return len(body) >= 2 && (body[0] == 'S' || body[0] == 'P') && body[len(body)-1] == 0
		}
		return true
	}
	switch t {
	case 'Z':
		return len(body) == 1 && (body[0] == 'I' || body[0] == 'T' || body[0] == 'E')
	case '1', '2', '3', 'n', 'I', 'c':
		return len(body) == 0
	case 'C':
		return len(body) > 0 && bytes.IndexByte(body, 0) == len(body)-1
	case 'E', 'N':
		return len(body) >= 2 && body[len(body)-1] == 0 && body[len(body)-2] == 0
	case 'D':
		return len(body) >= 2
	}
	return true
}

// frontendHeader parses a frontend message header: typed, or, before the
// startup message, a bare length.
func (c *pgConn) frontendHeader(h []byte) (int, int, bool) {
	if len(h) == 4 {
		n := int(binary.BigEndian.Uint32(h))
		return n - 4, n - 4, n >= 8 && n <= pgMaxStartup
	}
	n := int(binary.BigEndian.Uint32(h[1:]))
	if n < 4 || n > pgMaxMessage || strings.IndexByte(pgFrontendTypes, h[0]) < 0 {
		return 0, 0, false
	}
	keep := 512
	switch h[0] {
	case 'Q', 'P':
		keep = dbMaxQueryText + 256
	case 'd':
		keep = 0
	}
	return n - 4, keep, true
}

func pgBackendHeader(h []byte) (int, int, bool) {
	n := int(binary.BigEndian.Uint32(h[1:]))
	if n < 4 || n > pgMaxMessage || strings.IndexByte(pgBackendTypes, h[0]) < 0 {
		return 0, 0, false
	}
	keep := 1024
	switch h[0] {
	case 'D', 'd':
		keep = 0
	}
	return n - 4, keep, true
}

// stateful: a connection that knows its database (from its startup) or
// has prepared statements would lose them if forgotten while idle in a pool.
func (c *pgConn) stateful() bool { return c.db != "" || len(c.stmts.m) > 0 }

func (c *pgConn) feed(dir bpf.Direction, seg *segment) {
	if c.done {
		return
	}
	if dir == c.feDir {
		c.feedFrontend(seg)
	} else {
		c.feedBackend(seg)
	}
}

func (c *pgConn) closed(uint64) {
	c.batches, c.held = nil, 0
	c.done = true
}

func (c *pgConn) feedFrontend(seg *segment) {
	if c.fe.lost {
		if !pgPlausible(seg, true) {
			c.frontendLost(seg)
			return
		}
		c.fe.reset()
		c.fe.hdrLen = 5
	}
	if c.fe.walk(seg, 0, c.onFrontend) == dbWalkLost {
		c.fe.reset()
		c.fe.lost = true
		c.frontendLost(seg)
	}
}

// frontendLost handles a frontend segment whose messages could not all be
// followed. The batch being sent lost messages: what its responses
// complete beyond what was seen becomes spans named by their command tags.
// A segment that ends with Sync ends a batch, and the stream is in step.
func (c *pgConn) frontendLost(seg *segment) {
	if c.fe.hdrLen != 5 {
		return // lost in the startup phase: wait for a plausible message
	}
	var open *pgBatch
	if n := len(c.batches); n > 0 && c.batches[n-1].skip == 0 && !c.batches[n-1].simple && !c.batches[n-1].synced {
		open = c.batches[n-1]
		open.opaque = true
	}
	if bytes.Equal(lastBytes(seg, 5), []byte{'S', 0, 0, 0, 4}) {
		if open == nil {
			open = c.openBatch(seg.enter, seg.exit, false)
			open.opaque = true
		}
		if open.skip > 0 {
			open.skipOpen = false
		} else {
			open.synced = true
		}
		c.fe.reset()
	}
}

func (c *pgConn) feedBackend(seg *segment) {
	c.seg = seg
	defer func() { c.seg = nil }() // its bytes are the ring buffer's
	from := 0
	if c.beRaw && len(seg.data) > 0 {
		c.beRaw = false
		switch seg.data[0] {
		case 'S', 'G':
			c.done = true // TLS or GSSAPI encryption follows
			return
		case 'N':
			from = 1
		}
	}
	if c.be.lost {
		if !pgPlausible(seg, false) {
			c.backendLost(seg)
			return
		}
		c.be.reset()
	}
	if c.be.walk(seg, from, c.onBackend) == dbWalkLost {
		c.be.reset()
		c.be.lost = true
		c.backendLost(seg)
	}
}

// backendLost handles a backend segment whose messages could not all be
// followed: if it ends with ReadyForQuery, the oldest batch is answered
// and the stream is in step again.
func (c *pgConn) backendLost(seg *segment) {
	z := lastBytes(seg, 6)
	if len(z) == 6 && bytes.Equal(z[:5], []byte{'Z', 0, 0, 0, 5}) && strings.IndexByte("ITE", z[5]) >= 0 {
		c.ready(seg.exit, true)
		c.be.reset()
	}
}

// openBatch returns the extended-protocol batch being sent, or starts one.
func (c *pgConn) openBatch(enter, exit uint64, simple bool) *pgBatch {
	if !simple && len(c.batches) > 0 {
		if b := c.batches[len(c.batches)-1]; b.skip > 0 && b.skipOpen || b.skip == 0 && !b.simple && !b.synced {
			return b
		}
	}
	if len(c.batches) >= pgMaxBatches {
		// Too many waiting to remember: count them, without spans.
		b := c.batches[len(c.batches)-1]
		if b.skip == 0 {
			b = &pgBatch{simple: true, noSpan: true}
			c.batches = append(c.batches, b)
		}
		b.skip++
		b.skipOpen = !simple
		return b
	}
	b := &pgBatch{start: exit, startEnter: enter, simple: simple}
	c.batches = append(c.batches, b)
	return b
}

func (c *pgConn) onFrontend(hdr, body []byte, cut bool) bool {
	if len(hdr) == 4 {
		return c.onStartup(body)
	}
	enter, exit := c.fe.startEnter, c.fe.startExit
	switch hdr[0] {
	case 'Q':
		c.simpleQuery(dbCString(body), cut && bytes.IndexByte(body, 0) < 0, enter, exit)
	case 'P':
		var stmt sqlStatement
		if name, rest, ok := bytes.Cut(body, []byte{0}); ok {
			query, _, ended := bytes.Cut(rest, []byte{0})
			stmt = c.last.describe(query, dialectPostgres, c.mode, cut && !ended)
			c.stmts.put(string(name), stmt)
		}
		b := c.openBatch(enter, exit, false)
		if len(b.parses) < pgMaxItems {
			b.parses = append(b.parses, c.hold(b, stmt))
		}
	case 'B':
		c.openBatch(enter, exit, false).bound = true
		if c.portals == nil || len(c.portals) >= pgMaxPortals {
			c.portals = make(map[string]pgItem)
		}
		portal, rest, ok := bytes.Cut(body, []byte{0})
		if !ok {
			clear(c.portals) // some portal now runs a statement we do not know
			break
		}
		var it pgItem
		if name, _, ok := bytes.Cut(rest, []byte{0}); ok {
			it.stmt, it.known = c.stmts.get(string(name))
		}
		c.portals[string(portal)] = it
	case 'E':
		portal, _, ok := bytes.Cut(body, []byte{0})
		b := c.openBatch(enter, exit, false)
		b.bound = true
		if !ok {
			b.opaque = true
			break
		}
		if len(b.items) == pgMaxItems {
			b.opaque = true // its completions beyond the first ones make their own spans
			break
		}
		it := c.portals[string(portal)]
		it.stmt = c.hold(b, it.stmt)
		b.items = append(b.items, it)
	case 'C':
		if len(body) > 1 && body[0] == 'S' {
			c.stmts.del(string(dbCString(body[1:])))
		}
		c.openBatch(enter, exit, false)
	case 'D':
		c.openBatch(enter, exit, false)
	case 'S':
		if b := c.openBatch(enter, exit, false); b.skip > 0 {
			b.skipOpen = false
		} else {
			b.synced = true
		}
	case 'F':
		c.openBatch(enter, exit, true).noSpan = true
	}
	return true
}

// onStartup handles the messages before the startup: SSL and GSS
// negotiation, cancel requests and the startup message.
func (c *pgConn) onStartup(body []byte) bool {
	if len(body) < 4 {
		c.done = true
		return false
	}
	switch code := binary.BigEndian.Uint32(body); {
	case code == pgSSLRequest || code == pgGSSENCRequest:
		c.beRaw = true
	case code == pgCancelRequest:
		c.done = true
		return false
	case code>>16 == 3:
		var user, db string
		params := body[4:]
		for len(params) > 0 {
			var k, v []byte
			k, params, _ = bytes.Cut(params, []byte{0})
			if len(k) == 0 {
				break
			}
			v, params, _ = bytes.Cut(params, []byte{0})
			switch string(k) {
			case "user":
				user = dbText(v, 256)
			case "database":
				db = dbText(v, 256)
			}
		}
		if db == "" {
			db = user // the server's default
		}
		c.db = db
		c.fe.hdrLen = 5
	default:
		c.done = true
		return false
	}
	return true
}

// simpleQuery queues a simple query, and follows SQL-level PREPARE,
// EXECUTE and DEALLOCATE, whose statements share the protocol's namespace.
func (c *pgConn) simpleQuery(text []byte, cut bool, enter, exit uint64) {
	stmt := c.last.describe(text, dialectPostgres, c.mode, cut)
	words := sqlWords(dbText(text, 512), dialectPostgres, 8)
	word := func(i int) string {
		if i < len(words) && (words[i].kind == sqlTokWord || words[i].kind == sqlTokQuotedID) {
			return words[i].text
		}
		return ""
	}
	switch stmt.op {
	case "PREPARE":
		// PREPARE name [(types)] AS statement
		if name := word(1); name != "" {
			if i := dbIndexFold(string(text), " AS "); i >= 0 {
				c.stmts.put(name, describeSQL(string(text[i+4:]), dialectPostgres, c.mode, cut))
			}
		}
	case "EXECUTE":
		if s, ok := c.stmts.get(word(1)); ok {
			stmt.op, stmt.table, stmt.summary = s.op, s.table, s.summary
		}
	case "DEALLOCATE":
		name := word(1)
		if strings.EqualFold(name, "PREPARE") {
			name = word(2)
		}
		if strings.EqualFold(name, "ALL") {
			c.stmts.clear()
		} else {
			c.stmts.del(name)
		}
	case "DISCARD":
		c.stmts.clear()
	}
	if b := c.openBatch(enter, exit, true); b.skip == 0 {
		b.stmt = c.hold(b, stmt)
	} // else only counted: no span
}

// hold returns a statement for batch b to keep until it is answered:
// without its text once the pending batches hold pgMaxHeldText bytes.
func (c *pgConn) hold(b *pgBatch, s sqlStatement) sqlStatement {
	if c.held+len(s.text) > pgMaxHeldText {
		s.text = ""
	}
	c.held += len(s.text)
	b.held += len(s.text)
	return s
}

func (c *pgConn) onBackend(hdr, body []byte, cut bool) bool {
	switch hdr[0] {
	case 'C', 'I', 's':
		var tag string
		if hdr[0] == 'C' {
			tag = dbText(dbCString(body), 64)
		}
		c.complete(tag)
	case 'E':
		c.fail(body)
	case 'Z':
		c.ready(c.seg.exit, false)
	case '1':
		if b := c.front(); b != nil {
			b.parsed++
		}
	}
	return true
}

// front is the batch the backend is answering.
func (c *pgConn) front() *pgBatch {
	for len(c.batches) > 1 {
		b := c.batches[0]
		if b.simple || b.synced || b.opaque || b.next < len(b.items) {
			break
		}
		// Sent without a Sync (Flush), and all answered: no
		// ReadyForQuery will come for it.
		c.batches = c.batches[1:]
		c.held -= b.held
	}
	if len(c.batches) == 0 {
		return nil
	}
	return c.batches[0]
}

// complete handles CommandComplete, EmptyQueryResponse and PortalSuspended.
func (c *pgConn) complete(tag string) {
	b := c.front()
	switch {
	case b == nil || b.failed:
	case b.simple:
		if b.tag == "" {
			b.tag = tag
		}
	case b.next < len(b.items):
		it := b.items[b.next]
		b.next++
		c.report(b, it, tag, "", "", c.seg.exit)
	case b.opaque:
		c.report(b, pgItem{}, tag, "", "", c.seg.exit)
	}
}

// fail handles an ErrorResponse: it ends the simple query, or the Execute
// (or Parse) it answers; the server skips the rest of the batch.
func (c *pgConn) fail(body []byte) {
	var code, msg string
	for len(body) > 1 {
		f := body[0]
		v, rest, _ := bytes.Cut(body[1:], []byte{0})
		switch f {
		case 'C':
			code = dbText(v, 16)
		case 'M':
			msg = dbText(v, 512)
		}
		body = rest
	}
	b := c.front()
	switch {
	case b == nil:
		// Before any query: authentication failed, or the server is
		// shutting down. Nothing was asked that a span could show.
	case b.simple:
		if b.errCode == "" && b.errMsg == "" {
			b.errCode, b.errMsg = code, msg
		}
	case b.failed:
	default:
		b.failed = true
		switch {
		case b.next < len(b.items):
			c.report(b, b.items[b.next], "", code, msg, c.seg.exit)
		case b.parsed < len(b.parses):
			c.report(b, pgItem{stmt: b.parses[b.parsed], known: true}, "", code, msg, c.seg.exit)
		case b.opaque:
			c.report(b, pgItem{}, "", code, msg, c.seg.exit)
		}
		b.next = len(b.items)
	}
}

// ready handles ReadyForQuery: the oldest batch is answered. After lost
// bytes, the executions still waiting are taken as done at end.
func (c *pgConn) ready(end uint64, afterLoss bool) {
	for len(c.batches) > 0 {
		b := c.batches[0]
		if b.skip > 1 {
			b.skip--
			return
		}
		c.batches = c.batches[1:]
		c.held -= b.held
		if b.simple {
			if !b.noSpan {
				c.report(b, pgItem{stmt: b.stmt, known: true}, b.tag, b.errCode, b.errMsg, end)
			}
			return
		}
		if afterLoss && !b.failed {
			for _, it := range b.items[b.next:] {
				c.report(b, it, "", "", "", end)
			}
			if b.opaque && b.bound && !b.reported {
				// It executed something that was not captured.
				c.report(b, pgItem{}, "", "", "", end)
			}
		}
		if b.synced || b.opaque {
			return
		}
	}
}

// report emits one span.
func (c *pgConn) report(b *pgBatch, it pgItem, tag, code, msg string, end uint64) {
	b.reported = true
	r := newDBRequest(ProtoPostgreSQL)
	r.DBOperation, r.DBCollection, r.DBSummary, r.DBQuery = it.stmt.op, it.stmt.table, it.stmt.summary, it.stmt.text
	if r.DBOperation == "" {
		// A statement prepared before the agent looked, or not captured:
		// the command tag names the operation ("SELECT 3", "INSERT 0 1").
		verb, _, _ := strings.Cut(tag, " ")
		r.DBOperation = verb
	}
	r.DBNamespace = c.db
	r.ErrorCode, r.ErrorMessage = code, dbErrorText(msg, c.mode)
	if c.role == RoleClient {
		c.emit(r, RoleClient, b.startEnter, end)
	} else {
		c.emit(r, RoleServer, b.start, end)
	}
}

// dbCString returns b up to its first NUL.
func dbCString(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// dbIndexFold is strings.Index, ignoring ASCII case.
func dbIndexFold(s, sub string) int {
	n := len(sub)
	for i := 0; i+n <= len(s); i++ {
		if strings.EqualFold(s[i:i+n], sub) {
			return i
		}
	}
	return -1
}

// dbStream splits one direction of a length-prefixed protocol
// (PostgreSQL messages, MySQL packets) into messages. It keeps its place
// where only a prefix of a segment was captured, using the lengths to skip
// what it could not see; it loses it when a header lies beyond the
// captured prefix, or is not plausible. Shared by postgres.go and mysql.go.
type dbStream struct {
	hdrLen int // header length of the next message; set by the owner
	// header parses a whole header: the body length, how much of the body
	// to keep, and whether the header is plausible.
	header func(h []byte) (bodyLen, keep int, ok bool)

	hdr    [8]byte
	nhdr   int
	inBody bool
	left   int    // body bytes still to come
	body   []byte // the kept prefix of the body
	keep   int
	cut    bool // not all of the body was kept
	lost   bool
	// startEnter and startExit are the times of the segment in which the
	// current message began.
	startEnter, startExit uint64
}

type dbWalkResult uint8

const (
	dbWalkDone dbWalkResult = iota // the segment is consumed, in step
	dbWalkLost                     // a header lay beyond the capture, or was implausible
	dbWalkStop                     // the owner stopped following the stream
)

func (s *dbStream) reset() {
	s.nhdr, s.inBody, s.left, s.cut, s.lost = 0, false, 0, false, false
	s.body = s.body[:0]
}

// walk consumes seg from byte from on, calling onMsg with each complete
// message; onMsg returns false to stop. The bytes it is given are valid
// only during the call.
func (s *dbStream) walk(seg *segment, from int, onMsg func(hdr, body []byte, cut bool) bool) dbWalkResult {
	pos := from
	captured := len(seg.data)
	for pos < seg.total {
		if !s.inBody {
			// The header from the prefix, or past it from the tail: a
			// long message (a Bind of large parameters) may leave the
			// short ones after it there (its Execute and Sync).
			n := min(s.hdrLen-s.nhdr, seg.total-pos)
			b, ok := segCaptured(seg, pos, n)
			if !ok {
				if pos >= captured {
					return dbWalkLost
				}
				b = seg.data[pos:min(pos+n, captured)]
			}
			if s.nhdr == 0 {
				s.startEnter, s.startExit = seg.enter, seg.exit
			}
			copy(s.hdr[s.nhdr:s.hdrLen], b)
			s.nhdr += len(b)
			pos += len(b)
			if s.nhdr < s.hdrLen {
				continue
			}
			bodyLen, keep, ok := s.header(s.hdr[:s.hdrLen])
			if !ok {
				return dbWalkLost
			}
			s.nhdr, s.inBody, s.left, s.keep, s.cut = 0, true, bodyLen, keep, false
			s.body = s.body[:0]
		}
		if s.left > 0 {
			n := min(s.left, seg.total-pos)
			kept := 0
			if !s.cut {
				if b, ok := segCaptured(seg, pos, min(n, s.keep-len(s.body))); ok {
					kept = len(b) // in the prefix, or all in the tail
					s.body = append(s.body, b...)
				} else if pos < captured {
					kept = min(n, captured-pos, s.keep-len(s.body))
					s.body = append(s.body, seg.data[pos:pos+kept]...)
				}
			}
			if kept < n {
				s.cut = true
			}
			pos += n
			s.left -= n
		}
		if s.left == 0 {
			s.inBody = false
			if !onMsg(s.hdr[:s.hdrLen], s.body, s.cut) {
				return dbWalkStop
			}
			if cap(s.body) > 64<<10 {
				s.body = nil // do not hold on to a large buffer
			}
		}
	}
	return dbWalkDone
}
