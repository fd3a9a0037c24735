package tracer

import (
	"strings"
	"unicode/utf8"
)

// SQL text as the database parsers report it: db.query.text with literals
// replaced by "?" (Config.QueryText), db.operation.name from the first
// keyword and db.collection.name from the main table of simple statements.
// Semantic conventions prefer both names from the client library; an agent
// that only sees the wire has the text alone, so it reads them from there
// and leaves them empty when the statement is not simple.
//
// The file also holds what the PostgreSQL, MySQL and Redis parsers share:
// the request they start from, text cleaning and the bounded statement cache.

// sqlDialect selects the few lexical rules where databases differ.
type sqlDialect uint8

const (
	dialectPostgres sqlDialect = iota // "x" is an identifier; $1 parameters, $$dollar$$ strings, E'..' escapes
	dialectMySQL                      // "x" is a string; `x` an identifier; backslash escapes
)

// dbMaxQueryText bounds db.query.text and the other texts taken from the wire.
const dbMaxQueryText = 4096

// sqlStatement is what a span says about one SQL statement; computed once
// per statement text (prepared statements are described when prepared).
type sqlStatement struct {
	op      string // db.operation.name: "SELECT"
	table   string // db.collection.name: "users", "" when not obvious
	summary string // db.query.summary: "SELECT orders customers"
	text    string // db.query.text as configured: sanitised, full or ""
}

// describeSQL describes query for the spans, with db.query.text as mode
// (Config.QueryText) says. cut says that the capture cut the text short:
// its operation, table and summary are then read up to its last space
// only, since its last word may be the start of a longer one (FROM us,
// for FROM users_archive).
func describeSQL(query string, d sqlDialect, mode string, cut bool) sqlStatement {
	if len(query) > dbMaxQueryText {
		cut = true
	}
	query = dbText(query, dbMaxQueryText)
	whole := query
	if cut {
		whole = whole[:max(0, strings.LastIndexAny(whole, " \t\r\n"))]
	}
	// One reading of the words for the operation and the summary.
	words := sqlWordsOf(whole, d, false, sqlSummaryWords, true)
	op, table := sqlOperationOf(words[:min(len(words), sqlOperationWords)])
	summary, manyTables := sqlSummaryOf(sqlSureWords(whole, d, words))
	if manyTables {
		// INSERT INTO a SELECT ... FROM b, UPDATE a ... (SELECT ... FROM
		// b): the conventions give db.collection.name to a call on a
		// single collection only.
		table = ""
	}
	s := sqlStatement{op: op, table: table, summary: summary}
	switch mode {
	case QueryOff:
	case QueryFull:
		s.text = strings.TrimSpace(query)
	default:
		s.text = sanitizeSQL(query, d)
	}
	return s
}

// lastSQL remembers the statement text a connection described last: an
// application repeats its statements (with parameters, or with the values
// an ORM writes in the same), and describing one, its summary and its
// sanitised text, costs a few microseconds.
type lastSQL struct {
	text string
	cut  bool
	stmt sqlStatement
}

func (l *lastSQL) describe(text []byte, d sqlDialect, mode string, cut bool) sqlStatement {
	if len(text) == 0 || cut != l.cut || string(text) != l.text {
		l.text, l.cut = string(text), cut
		l.stmt = describeSQL(l.text, d, mode, cut)
	}
	return l.stmt
}

// dbErrorText is a server's error message as the span's status
// description. Messages quote the values that failed ("Duplicate entry
// 'alice@example.com' for key 'users.email'", `invalid input syntax for
// type integer: "4111 1111"`, "unknown command 'x', with args beginning
// with: 'secret'"), so unless mode is QueryFull, quoted runs and numbers
// become "?" as the literals of db.query.text do. PostgreSQL quotes
// names with the same marks as values: they go too.
func dbErrorText(msg, mode string) string {
	if mode == QueryFull {
		return msg
	}
	// Words are the lexer's (sqlWordStart); a digit after a word is part
	// of it.
	isDigit := func(c byte) bool { return c >= '0' && c <= '9' }
	out := make([]byte, 0, len(msg))
	for i := 0; i < len(msg); {
		c := msg[i]
		switch {
		case (c == '\'' || c == '"' || c == '`') &&
			!(c == '\'' && i > 0 && sqlWordStart(msg[i-1]) && i+1 < len(msg) && sqlWordStart(msg[i+1])): // not "can't"
			// The value is not escaped ('O'Brien'): its closing quote
			// is one that a word does not follow.
			end := -1
			for k := i + 1; k < len(msg); k++ {
				if msg[k] == c && (k+1 == len(msg) || !sqlWordStart(msg[k+1]) && !isDigit(msg[k+1])) {
					end = k
					break
				}
			}
			if end < 0 {
				return string(append(out, '?')) // cut off inside a value
			}
			out = append(out, '?')
			i = end + 1
		case isDigit(c) && (i == 0 || !sqlWordStart(msg[i-1]) && !isDigit(msg[i-1])):
			j := i
			for j < len(msg) && (isDigit(msg[j]) || msg[j] == '.' && j+1 < len(msg) && isDigit(msg[j+1])) {
				j++
			}
			if j < len(msg) && sqlWordStart(msg[j]) { // a name such as "2fa_codes"
				out = append(out, msg[i:j]...)
			} else {
				out = append(out, '?')
			}
			i = j
		default:
			out = append(out, c)
			i++
		}
	}
	return string(out)
}

// newDBRequest starts a Request for a database exchange.
func newDBRequest(proto string) *Request {
	return pooledRequest(Request{Protocol: proto, GRPCStatus: -1, Partition: -1})
}

// dbText turns wire bytes into a span attribute: at most max bytes of
// valid UTF-8 (OTLP strings must be), without NUL bytes.
func dbText[T ~string | ~[]byte](b T, max int) string {
	s := string(b[:min(len(b), max)])
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	return s
}

// dbStmtCache maps prepared statements (by name or id) to their description,
// holding at most max of them: when full, an arbitrary one is forgotten.
type dbStmtCache[K comparable] struct {
	m   map[K]sqlStatement
	max int
}

func (c *dbStmtCache[K]) get(k K) (sqlStatement, bool) {
	s, ok := c.m[k]
	return s, ok
}

func (c *dbStmtCache[K]) put(k K, s sqlStatement) {
	if c.m == nil {
		c.m = make(map[K]sqlStatement)
	}
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[k] = s
}

func (c *dbStmtCache[K]) del(k K) { delete(c.m, k) }
func (c *dbStmtCache[K]) clear()  { clear(c.m) }

// sqlToken is one lexical token of a statement.
type sqlToken struct {
	kind       sqlTokenKind
	start, end int // byte offsets in the text
}

type sqlTokenKind uint8

const (
	sqlTokWord     sqlTokenKind = iota // keyword or bare identifier
	sqlTokQuotedID                     // "id" (PostgreSQL) or `id` (MySQL)
	sqlTokLiteral                      // string, number, hex, bit or dollar-quoted literal
	sqlTokParam                        // $1, ?, :name, @var
	sqlTokPunct                        // anything else: one byte
	sqlTokSpace                        // whitespace and comments
)

// sqlLexer splits statement text into tokens. It never fails: text cut off
// by the capture (an unterminated string, say) ends in a last token.
type sqlLexer struct {
	s string
	i int
	d sqlDialect
	// otherEscapes reads plain strings with the server's other setting
	// for backslashes: none for MySQL (NO_BACKSLASH_ESCAPES), escapes for
	// PostgreSQL (standard_conforming_strings=off). See sanitizeSQL.
	otherEscapes bool
	// unterminated is set when a quoted string runs to the text's end.
	unterminated bool
}

// sqlSkipComment returns the end of the block comment at s[i:]: the end
// of s when it is not closed. PostgreSQL's block comments nest (the SQL
// standard's); MySQL's end at the first "*/". Ending a nested comment too
// early would take the rest of it for SQL, and a quote in it would turn
// the statement's literals into what the lexer thinks is text between
// them, to be kept.
func sqlSkipComment(s string, i int, nested bool) int {
	depth := 0
	for i+1 < len(s) {
		switch {
		case s[i] == '/' && s[i+1] == '*' && (depth == 0 || nested):
			depth++
			i += 2
		case s[i] == '*' && s[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return len(s)
}

func (l *sqlLexer) next() (sqlToken, bool) {
	s, i := l.s, l.i
	if i >= len(s) {
		return sqlToken{}, false
	}
	c := s[i]
	t := sqlToken{start: i}
	switch {
	case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
		t.kind = sqlTokSpace
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\f') {
			i++
		}
	case c == '-' && i+1 < len(s) && s[i+1] == '-' && (l.d != dialectMySQL || i+2 >= len(s) || s[i+2] <= ' '),
		c == '#' && l.d == dialectMySQL:
		// MySQL's "--" comment needs a space or a control character
		// after it: 1--1 is one minus minus one, and reading the rest of
		// its line as a comment would take a string's inside, further
		// on, for SQL.
		t.kind = sqlTokSpace
		for i < len(s) && s[i] != '\n' {
			i++
		}
	case c == '/' && i+1 < len(s) && s[i+1] == '*':
		t.kind = sqlTokSpace
		i = sqlSkipComment(s, i, l.d == dialectPostgres)
	case c == '\'':
		t.kind = sqlTokLiteral
		i = l.quoted(i, '\'', (l.d == dialectMySQL) != l.otherEscapes)
	case c == '"':
		if l.d == dialectMySQL {
			t.kind = sqlTokLiteral
		} else {
			t.kind = sqlTokQuotedID
		}
		i = l.quoted(i, '"', l.d == dialectMySQL && !l.otherEscapes)
	case c == '`':
		t.kind = sqlTokQuotedID
		i = l.quoted(i, '`', false)
	case c >= '0' && c <= '9', c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
		t.kind = sqlTokLiteral
		i = sqlSkipNumber(s, i)
	case c == '$' && l.d == dialectPostgres:
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j > i+1 {
			t.kind, i = sqlTokParam, j // $1
			break
		}
		// $$ ... $$ or $tag$ ... $tag$
		for j < len(s) && sqlWordByte(s[j]) && s[j] != '$' {
			j++
		}
		if j < len(s) && s[j] == '$' {
			tag := s[i : j+1]
			t.kind = sqlTokLiteral
			if k := strings.Index(s[j+1:], tag); k >= 0 {
				i = j + 1 + k + len(tag)
			} else {
				i = len(s)
			}
			break
		}
		t.kind, i = sqlTokPunct, i+1
	case c == '?':
		t.kind, i = sqlTokParam, i+1
	case (c == ':' || c == '@') && i+1 < len(s) && sqlWordStart(s[i+1]) && !(c == ':' && i > 0 && s[i-1] == ':'):
		t.kind = sqlTokParam
		i += 2
		for i < len(s) && sqlWordByte(s[i]) {
			i++
		}
		if c == '@' && i < len(s) && s[i] == '@' { // @@session variables
			i++
		}
	case sqlWordStart(c):
		// Prefixed literals: E'..', B'..', X'..', N'..', U&'..', _utf8'..'.
		if i+1 < len(s) && s[i+1] == '\'' && strings.IndexByte("eEbBxXnN", c) >= 0 {
			t.kind = sqlTokLiteral
			i = l.quoted(i+1, '\'', (l.d == dialectMySQL) != l.otherEscapes || c == 'e' || c == 'E')
			break
		}
		t.kind = sqlTokWord
		for i < len(s) && sqlWordByte(s[i]) {
			i++
		}
		if l.d == dialectMySQL && s[t.start] == '_' && i < len(s) && s[i] == '\'' { // _utf8mb4'..'
			t.kind = sqlTokLiteral
			i = l.quoted(i, '\'', !l.otherEscapes)
		}
	default:
		t.kind, i = sqlTokPunct, i+1
	}
	t.end = i
	l.i = i
	return t, true
}

// quoted returns the index after the string starting at s[i] == q, where
// a doubled quote escapes it, and so does a backslash when backslash is
// set; one that does not end is noted (unterminated).
func (l *sqlLexer) quoted(i int, q byte, backslash bool) int {
	s := l.s
	for i++; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if backslash {
				i++
			}
		case q:
			if i+1 < len(s) && s[i+1] == q {
				i++
				continue
			}
			return i + 1
		}
	}
	l.unterminated = true
	return len(s)
}

func sqlSkipNumber(s string, i int) int {
	if s[i] == '0' && i+1 < len(s) && (s[i+1] == 'x' || s[i+1] == 'X' || s[i+1] == 'b' || s[i+1] == 'B') {
		i += 2
		for i < len(s) && sqlWordByte(s[i]) {
			i++
		}
		return i
	}
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.' || s[i] == '_') {
		i++
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if j < len(s) && s[j] >= '0' && s[j] <= '9' {
			i = j
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				i++
			}
		}
	}
	return i
}

func sqlWordStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func sqlWordByte(c byte) bool {
	return sqlWordStart(c) || c >= '0' && c <= '9' || c == '$'
}

// sanitizeSQL replaces literals by "?", collapses lists of them ("IN (?)",
// one VALUES row), drops comments and folds whitespace. Identifiers,
// keywords and parameters stay.
//
// Where a string literal ends depends on a setting of the server's that
// the wire does not show: whether a backslash escapes a quote (MySQL's
// NO_BACKSLASH_ESCAPES, PostgreSQL's standard_conforming_strings). Read
// the wrong way, 'C:\' AND x='secret' leaves secret bare. When the two
// readings part, everything from where they part is one "?".
func sanitizeSQL(q string, d sqlDialect) string {
	known, otherEscapes := sqlSureText(q, d)
	if len(known) == len(q) {
		return sanitizeSQLTokens(q, d, otherEscapes)
	}
	prefix := sanitizeSQLTokens(known, d, false)
	if prefix == "" {
		return "?"
	}
	return prefix + " ?"
}

// sqlSureText is how much of q reads the same whatever the server's
// setting for backslashes in strings (see sanitizeSQL), and the setting
// to read it with: all of q when it has no backslash, when both readings
// agree, or when only one of them parses; else the text before they part.
func sqlSureText(q string, d sqlDialect) (known string, otherEscapes bool) {
	if strings.IndexByte(q, '\\') < 0 {
		return q, false
	}
	a, b := sqlLexer{s: q, d: d}, sqlLexer{s: q, d: d, otherEscapes: true}
	parted := -1
	for {
		ta, okA := a.next()
		tb, okB := b.next()
		if !okA && !okB {
			break // both read to the end: unterminated is known
		}
		if parted < 0 && ta != tb {
			parted = ta.start // the same start: the tokens before were equal
		}
	}
	switch {
	case parted < 0:
		return q, false
	case !a.unterminated && b.unterminated:
		// Read the other way the text would not parse: the server reads
		// it the usual way.
		return q, false
	case a.unterminated && !b.unterminated:
		return q, true
	}
	return q[:parted], false
}

// sanitizeSQLTokens is sanitizeSQL for a text read one way (otherEscapes:
// see sqlLexer).
func sanitizeSQLTokens(q string, d sqlDialect, otherEscapes bool) string {
	out := make([]byte, 0, len(q))
	l := sqlLexer{s: q, d: d, otherEscapes: otherEscapes}
	space := false
	var prev sqlToken // previous token that is not space
	for {
		t, ok := l.next()
		if !ok {
			break
		}
		switch t.kind {
		case sqlTokSpace:
			space = len(out) > 0
			continue
		case sqlTokLiteral:
			// A sign right before a number belongs to it, when the sign
			// cannot be a binary operator.
			if n := len(out); n > 0 && out[n-1] == '-' && !space && q[t.start] != '\'' && sqlSignPosition(q, prev) {
				out = out[:n-1]
			}
		}
		if space {
			out = append(out, ' ')
			space = false
		}
		if t.kind == sqlTokLiteral {
			out = append(out, '?')
		} else {
			out = append(out, q[t.start:t.end]...)
		}
		if t.kind != sqlTokPunct || q[t.start] != '-' {
			prev = t
		}
	}
	return sqlCollapseLists(string(out))
}

// sqlSignPosition tells whether a '-' after token prev is a sign: after an
// operator, an opening parenthesis, a comma or nothing.
func sqlSignPosition(q string, prev sqlToken) bool {
	if prev.end == 0 {
		return true
	}
	switch prev.kind {
	case sqlTokPunct:
		return strings.IndexByte("(,=<>+*/%", q[prev.start]) >= 0
	case sqlTokWord:
		w := strings.ToUpper(q[prev.start:prev.end])
		switch w {
		case "SELECT", "WHERE", "AND", "OR", "NOT", "BY", "LIMIT", "OFFSET", "THEN", "ELSE", "WHEN", "RETURN", "VALUES", "SET", "IN", "IS", "LIKE", "BETWEEN":
			return true
		}
	}
	return false
}

// sqlCollapseLists rewrites "(?, ?, ?)" to "(?)" after IN, and repeated
// "(?, ?), (?, ?)" rows after VALUES to the first one.
func sqlCollapseLists(s string) string {
	if !strings.Contains(s, "?") {
		return s
	}
	var b strings.Builder
	i := 0
	for i < len(s) {
		j := strings.IndexByte(s[i:], '(')
		if j < 0 {
			break
		}
		j += i
		end, n := sqlPlaceholderList(s, j)
		if end < 0 {
			b.WriteString(s[i : j+1])
			i = j + 1
			continue
		}
		kw := strings.ToUpper(sqlLastWord(s[:j]))
		switch {
		case kw == "IN" && n > 1:
			b.WriteString(s[i:j])
			b.WriteString("(?)")
			i = end
		case kw == "VALUES":
			b.WriteString(s[i:end])
			_, cols := sqlPlaceholderList(s, j)
			i = end
			// Skip the rows that repeat this one.
			for {
				k := i
				for k < len(s) && s[k] == ' ' {
					k++
				}
				if k >= len(s) || s[k] != ',' {
					break
				}
				k++
				for k < len(s) && s[k] == ' ' {
					k++
				}
				e, m := sqlPlaceholderList(s, k)
				if e < 0 || m != cols {
					break
				}
				i = e
			}
		default:
			b.WriteString(s[i:end])
			i = end
		}
	}
	b.WriteString(s[i:])
	return b.String()
}

// sqlPlaceholderList recognises "(?, ?, ...)" at s[i] == '(' and returns the
// index after ')' and how many "?" it holds; -1 when it is something else.
func sqlPlaceholderList(s string, i int) (int, int) {
	if i >= len(s) || s[i] != '(' {
		return -1, 0
	}
	n := 0
	want := true // want a "?"
	for i++; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ':
		case c == '?' && want:
			n++
			want = false
		case c == ',' && !want:
			want = true
		case c == ')' && !want:
			return i + 1, n
		default:
			return -1, 0
		}
	}
	return -1, 0
}

// sqlLastWord returns the word that ends s, ignoring trailing spaces.
func sqlLastWord(s string) string {
	s = strings.TrimRight(s, " ")
	i := len(s)
	for i > 0 && sqlWordByte(s[i-1]) {
		i--
	}
	return s[i:]
}

// sqlOperationWords is how far into a statement sqlOperation looks.
const sqlOperationWords = 64

// sqlOperation returns the statement's operation, upper-cased, and its main
// table when the statement is simple (one table, no join).
func sqlOperation(q string, d sqlDialect) (op, table string) {
	return sqlOperationOf(sqlWordsOf(q, d, false, sqlOperationWords, true))
}

// sqlOperationOf is sqlOperation of a statement's first words, quoted
// identifiers as the text has them (sqlWordsOf).
func sqlOperationOf(words []sqlWord) (op, table string) {
	if len(words) == 0 || words[0].kind != sqlTokWord {
		return "", ""
	}
	op = strings.ToUpper(words[0].text)
	if len(op) > 32 {
		return "", ""
	}
	switch op {
	case "WITH":
		// The operation of a common table expression is that of the
		// statement that follows the definitions.
		for _, w := range words[1:] {
			if w.depth == 0 && w.kind == sqlTokWord {
				switch u := strings.ToUpper(w.text); u {
				case "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE":
					return u, ""
				}
			}
		}
		return op, ""
	case "SELECT":
		return op, sqlFromTable(words, "FROM")
	case "DELETE":
		return op, sqlFromTable(words, "FROM")
	case "INSERT", "REPLACE":
		return op, sqlTableAfter(words[1:], true, "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO")
	case "UPDATE":
		return op, sqlTableAfter(words[1:], false, "ONLY", "LOW_PRIORITY", "IGNORE")
	case "TRUNCATE":
		return op, sqlTableAfter(words[1:], false, "TABLE", "ONLY")
	case "COPY":
		return op, sqlTableAfter(words[1:], true)
	case "CREATE", "DROP", "ALTER":
		rest := words[1:]
		for len(rest) > 0 && rest[0].kind == sqlTokWord {
			u := strings.ToUpper(rest[0].text)
			if u == "TABLE" {
				return op, sqlTableAfter(rest[1:], true, "IF", "NOT", "EXISTS", "ONLY")
			}
			if u != "TEMPORARY" && u != "TEMP" && u != "UNLOGGED" && u != "GLOBAL" && u != "LOCAL" && u != "OR" && u != "REPLACE" {
				break
			}
			rest = rest[1:]
		}
	}
	return op, ""
}

// sqlWord is a token of interest to sqlOperation, with its parenthesis depth.
type sqlWord struct {
	kind  sqlTokenKind
	text  string
	depth int
}

// sqlWords returns up to n tokens of q that are not space, with quoted
// identifiers unquoted.
func sqlWords(q string, d sqlDialect, n int) []sqlWord { return sqlWordsOf(q, d, false, n, false) }

// sqlWordsOf is sqlWords, the text read with otherEscapes (see sqlLexer),
// with quoted identifiers as the text has them when quoted.
func sqlWordsOf(q string, d sqlDialect, otherEscapes bool, n int, quoted bool) []sqlWord {
	l := sqlLexer{s: q, d: d, otherEscapes: otherEscapes}
	words := make([]sqlWord, 0, min(n, len(q)/4+4)) // about a token in four bytes
	depth := 0
	for len(words) < n {
		t, ok := l.next()
		if !ok {
			break
		}
		text := q[t.start:t.end]
		switch t.kind {
		case sqlTokSpace:
			continue
		case sqlTokQuotedID:
			if !quoted {
				text = strings.Trim(text, "\"`")
			}
		case sqlTokPunct:
			if text == "(" {
				depth++
			} else if text == ")" {
				depth--
			}
		}
		if depth < 0 {
			depth = 0
		}
		words = append(words, sqlWord{kind: t.kind, text: text, depth: depth})
	}
	return words
}

// sqlFromTable finds the table of the first top-level FROM; "" when what
// follows is not one plain table.
func sqlFromTable(words []sqlWord, from string) string {
	for i, w := range words {
		if w.depth == 0 && w.kind == sqlTokWord && strings.EqualFold(w.text, from) {
			return sqlTableAfter(words[i+1:], false, "ONLY")
		}
	}
	return ""
}

// sqlTableAfter reads a table name (schema.table) after the optional words
// skip, and checks that the statement does not name a second table next to
// it (a join, a comma list) or call a function in its place.
func sqlTableAfter(words []sqlWord, paren bool, skip ...string) string {
	for len(words) > 0 && words[0].kind == sqlTokWord && sqlContainsFold(skip, words[0].text) {
		words = words[1:]
	}
	name, n := sqlQualifiedName(words)
	if name == "" {
		return ""
	}
	words = words[n:]
	if len(words) > 0 && words[0].text == "(" && words[0].kind == sqlTokPunct {
		// INSERT INTO t (cols) names columns; FROM f(x) calls a function.
		if paren {
			return name
		}
		return ""
	}
	// An alias, then what may follow a single table.
	if len(words) > 0 && words[0].kind == sqlTokWord && strings.EqualFold(words[0].text, "AS") {
		words = words[1:]
	}
	if len(words) > 0 && (words[0].kind == sqlTokWord && !sqlClauseKeyword(words[0].text) || words[0].kind == sqlTokQuotedID) {
		words = words[1:]
	}
	if len(words) > 0 {
		w := words[0]
		if w.kind == sqlTokPunct && w.text == "," || w.kind == sqlTokWord && sqlJoinKeyword(w.text) {
			return ""
		}
	}
	return name
}

// sqlQualifiedName reads name or schema.name; it returns the name and how many
// words it took.
func sqlQualifiedName(words []sqlWord) (string, int) {
	var parts []string
	n := 0
	for n < len(words) && len(parts) < 3 {
		w := words[n]
		if w.kind != sqlTokWord && w.kind != sqlTokQuotedID || w.kind == sqlTokWord && sqlClauseKeyword(w.text) {
			break
		}
		if w.kind == sqlTokQuotedID {
			parts = append(parts, strings.Trim(w.text, "\"`"))
		} else {
			parts = append(parts, w.text)
		}
		n++
		if n < len(words) && words[n].kind == sqlTokPunct && words[n].text == "." {
			n++
			continue
		}
		break
	}
	if len(parts) == 0 {
		return "", 0
	}
	return dbText(strings.Join(parts, "."), 256), n
}

func sqlContainsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func sqlJoinKeyword(w string) bool {
	return sqlContainsFold([]string{"JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL", "STRAIGHT_JOIN", "LATERAL"}, w)
}

// sqlClauseKeyword tells whether a word starts a clause, so that it cannot
// be a table name or an alias.
func sqlClauseKeyword(w string) bool {
	return sqlContainsFold([]string{
		"WHERE", "GROUP", "ORDER", "LIMIT", "OFFSET", "HAVING", "WINDOW", "UNION", "INTERSECT", "EXCEPT",
		"FOR", "SET", "VALUES", "SELECT", "RETURNING", "ON", "USING", "FETCH", "INTO", "DEFAULT", "FROM",
		"JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL", "STRAIGHT_JOIN", "LATERAL", "TO",
		"PARTITION", "LOCK", "AS", "WITH", "TABLESAMPLE", "ADD", "DROP", "RENAME", "ALTER", "OWNER",
	}, w)
}
