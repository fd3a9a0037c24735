package tracer

import "strings"

// dbMaxSummary bounds db.query.summary, as the conventions ask: cut
// between two of its parts, never inside one.
const dbMaxSummary = 255

// sqlSummary is a statement's db.query.summary, as the database
// conventions generate it from the query text: its operations and their
// targets, in the order the text has them ("SELECT orders customers",
// "INSERT shipping_details SELECT orders"). An operation is upper-cased
// as db.operation.name is; a target is written as the text has it, quotes
// and schema included. Only the first statement of a text is read, and of
// it only what reads the same whatever the server's setting for
// backslashes in strings (sqlSureText): read the wrong way, the inside of
// a string would pass for SQL. Literals are never part of it, so it holds
// no value of the query's.
func sqlSummary(q string, d sqlDialect) string {
	summary, _ := sqlSummaryOf(sqlSureWords(q, d, sqlWordsOf(q, d, false, sqlSummaryWords, true)))
	return summary
}

// sqlSummaryWords is how far into a statement sqlSummary looks: all of a
// text of dbMaxQueryText, but for the rarest.
const sqlSummaryWords = 2048

// sqlSureWords is words, q's read the usual way (sqlWordsOf), cut to what
// reads the same whatever the server's setting for backslashes
// (sqlSureText): read again only when a backslash changes them.
func sqlSureWords(q string, d sqlDialect, words []sqlWord) []sqlWord {
	known, otherEscapes := sqlSureText(q, d)
	if len(known) == len(q) && !otherEscapes {
		return words
	}
	return sqlWordsOf(known, d, otherEscapes, sqlSummaryWords, true)
}

// sqlSummaryOf is sqlSummary of a statement's words (sqlSureWords), and
// whether the summary names more than one table: such a statement is on
// no single collection (db.collection.name).
func sqlSummaryOf(words []sqlWord) (summary string, manyTables bool) {
	var parts []string
	size, full := 0, false
	add := func(s string) {
		if full = full || size+len(s) > dbMaxSummary; !full {
			parts = append(parts, s)
			size += len(s) + 1
		}
	}
	first := ""
	addTable := func(t string) {
		add(t)
		if first == "" {
			first = t
		} else if t != first {
			manyTables = true
		}
	}
	// opDepth holds, innermost last, the parenthesis depths at which an
	// operation began: a FROM belongs to the query at its own depth, not
	// to EXTRACT(YEAR FROM d) or TRIM(x FROM s) inside one; dml says
	// whether that operation reads tables from FROM and USING (not
	// FETCH 10 FROM a_cursor, REVOKE ... FROM a_role, COPY t FROM STDIN).
	var opDepth []int
	var dml []bool
	// group is the index of a "(" where a FROM or JOIN wants a table: a
	// subquery, or tables joined in parentheses (FROM (a JOIN b ON ...)),
	// whose names and joins are the query's own.
	group := -1
	// groupAfter notes a "(" right after the word at index i, where a
	// table list stopped.
	groupAfter := func(i int) {
		if i+1 < len(words) && words[i+1].kind == sqlTokPunct && words[i+1].text == "(" {
			group = i + 1
		}
	}
	for i := 0; i < len(words) && !full; i++ {
		w := words[i]
		for len(opDepth) > 0 && opDepth[len(opDepth)-1] > w.depth {
			opDepth, dml = opDepth[:len(opDepth)-1], dml[:len(dml)-1]
		}
		if w.kind == sqlTokPunct && w.text == ";" {
			break
		}
		if i == group && i+1 < len(words) && !(words[i+1].kind == sqlTokWord && sqlContainsFold([]string{"SELECT", "WITH", "VALUES", "TABLE"}, words[i+1].text)) {
			// Tables joined in parentheses: at their depth, the query's.
			opDepth, dml = append(opDepth, w.depth), append(dml, true)
			if words[i+1].kind == sqlTokPunct {
				groupAfter(i) // nested: ((a JOIN b) JOIN c)
				continue
			}
			var targets []string
			targets, i = sqlTargetList(words, i+1, true, true, "ONLY", "LATERAL")
			for _, t := range targets {
				addTable(t)
			}
			groupAfter(i)
			continue
		}
		if w.kind != sqlTokWord {
			continue
		}
		u := sqlSummaryKeyword(w.text)
		var prev, next sqlWord
		if i > 0 {
			prev = words[i-1]
		}
		if i+1 < len(words) {
			next = words[i+1]
		}
		call := next.kind == sqlTokPunct && next.text == "(" // REPLACE(s, a, b), MySQL's INSERT(s, ...)
		// An operation: SELECT wherever it stands; the others where a
		// statement begins (first, after "(" or after a CTE's ")"), so
		// that ON CONFLICT DO UPDATE, FOR UPDATE and ON DUPLICATE KEY
		// UPDATE are not operations; any other first word (CREATE,
		// CALL, BEGIN).
		op := ""
		switch u {
		case "SELECT":
			op = u
		case "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE":
			if i == 0 || !call && prev.kind == sqlTokPunct && (prev.text == "(" || prev.text == ")") {
				op = u
			}
		case "WITH":
		default:
			if i == 0 && len(w.text) <= 32 {
				op = strings.ToUpper(w.text) // CREATE, CALL, BEGIN: once a statement
			}
		}
		if op == "GRANT" || op == "REVOKE" {
			add(op) // its SELECT, INSERT are privileges; its FROM, a role
			break
		}
		if op != "" {
			opDepth = append(opDepth, w.depth)
			dml = append(dml, op == "SELECT" || op == "DELETE" || op == "UPDATE" || op == "MERGE")
			add(op)
		}
		// Where targets follow.
		var targets []string
		switch {
		case len(opDepth) == 0 || opDepth[len(opDepth)-1] != w.depth:
			// Not at an operation's own depth.
		case u == "FROM" || u == "USING":
			if !dml[len(dml)-1] {
				break
			}
			targets, i = sqlTargetList(words, i+1, true, true, "ONLY", "LATERAL")
			if u == "FROM" {
				groupAfter(i) // not JOIN ... USING (columns)
			}
		case u == "JOIN":
			j := i
			for j+1 < len(words) && words[j+1].kind == sqlTokWord && sqlJoinKeyword(words[j+1].text) {
				j++ // LEFT OUTER JOIN, NATURAL JOIN
			}
			if j+1 < len(words) && words[j+1].kind == sqlTokWord && strings.EqualFold(words[j+1].text, "OUTER") {
				j++
			}
			if j+1 < len(words) && words[j+1].kind == sqlTokWord && strings.EqualFold(words[j+1].text, "JOIN") {
				j++
			}
			// LEFT, FULL and the others join only before JOIN: not a
			// column named full (not reserved in MySQL), nor left(s, 3).
			// MySQL's STRAIGHT_JOIN joins too, but right after SELECT
			// (or its DISTINCT) it is a modifier of the query.
			straight := strings.EqualFold(words[j].text, "STRAIGHT_JOIN")
			if !strings.EqualFold(words[j].text, "JOIN") && !straight ||
				straight && i > 0 && prev.kind == sqlTokWord && sqlContainsFold([]string{"SELECT", "DISTINCT", "DISTINCTROW", "ALL", "HIGH_PRIORITY"}, prev.text) {
				break
			}
			targets, i = sqlTargetList(words, j+1, false, true, "LATERAL")
			groupAfter(i)
		case u == "INTO" && i+2 < len(words) && sqlContainsFold([]string{"OUTFILE", "DUMPFILE"}, words[i+1].text) && words[i+2].kind == sqlTokLiteral:
			// SELECT ... INTO OUTFILE 'file': a file, not a table.
		case u == "INTO" || op == "COPY" || op == "INSERT" || op == "REPLACE":
			// INTO's table; MySQL's INSERT and REPLACE may leave INTO
			// out (a word INTO after them is a clause keyword: no name
			// here, and INTO's own turn reads it).
			targets, i = sqlTargetList(words, i+1, false, false, "ONLY", "LOW_PRIORITY", "HIGH_PRIORITY", "DELAYED", "IGNORE", "TABLE")
		case op == "UPDATE" || op == "TRUNCATE":
			// MySQL updates several tables at once; TRUNCATE takes a list.
			targets, i = sqlTargetList(words, i+1, true, false, "ONLY", "LOW_PRIORITY", "IGNORE", "TABLE")
		case u == "TABLE" && sqlDDLTable(words, i):
			// CREATE TABLE, DROP TABLE, ALTER TABLE, with CREATE's
			// modifiers between (TEMP, UNLOGGED, OR REPLACE); DROP takes
			// a list.
			targets, i = sqlTargetList(words, i+1, true, false, "IF", "NOT", "EXISTS", "ONLY")
		}
		for _, t := range targets {
			addTable(t)
		}
	}
	return strings.Join(parts, " "), manyTables
}

// sqlDDLTable tells whether the TABLE at words[i] is the one of a
// statement that creates, drops or alters a table: the statement's second
// word, or up to its fifth after CREATE's or DROP's modifiers (MariaDB's
// CREATE OR REPLACE TEMPORARY TABLE, MySQL's DROP TEMPORARY TABLE).
func sqlDDLTable(words []sqlWord, i int) bool {
	if i == 1 {
		return true
	}
	if i > 4 || !strings.EqualFold(words[0].text, "CREATE") && !strings.EqualFold(words[0].text, "DROP") {
		return false
	}
	for _, w := range words[1:i] {
		if w.kind != sqlTokWord || !sqlContainsFold([]string{"TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL", "OR", "REPLACE"}, w.text) {
			return false
		}
	}
	return true
}

// sqlSummaryKeyword is w upper-cased if it is a word sqlSummary acts on,
// else w: without an allocation for the identifiers, most of a statement.
func sqlSummaryKeyword(w string) string {
	if len(w) < 4 || len(w) > len("STRAIGHT_JOIN") {
		return w
	}
	var b [len("STRAIGHT_JOIN")]byte
	for i := 0; i < len(w); i++ {
		c := w[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		b[i] = c
	}
	switch string(b[:len(w)]) {
	case "SELECT":
		return "SELECT"
	case "INSERT":
		return "INSERT"
	case "UPDATE":
		return "UPDATE"
	case "DELETE":
		return "DELETE"
	case "MERGE":
		return "MERGE"
	case "REPLACE":
		return "REPLACE"
	case "WITH":
		return "WITH"
	case "FROM":
		return "FROM"
	case "USING":
		return "USING"
	case "INTO":
		return "INTO"
	case "TABLE":
		return "TABLE"
	case "OUTER":
		return "OUTER"
	case "JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL", "STRAIGHT_JOIN":
		return "JOIN" // sqlJoinKeyword's, but LATERAL
	}
	return w
}

// sqlTargetList reads the table names at words[i:] (one, or a comma list
// when list), each with its alias, after the optional words skip; it
// returns them and the index of the last word it took. A subquery in a
// table's place is not a target (its own words are read on), nor, where fn
// says a "(" after a name calls a function (FROM, JOIN), a function; after
// INTO or TABLE it lists columns.
func sqlTargetList(words []sqlWord, i int, list, fn bool, skip ...string) ([]string, int) {
	for i < len(words) && words[i].kind == sqlTokWord && sqlContainsFold(skip, words[i].text) {
		i++
	}
	var targets []string
	for {
		start := i
		name := ""
		for i < len(words) && (words[i].kind == sqlTokQuotedID || words[i].kind == sqlTokWord && !sqlClauseKeyword(words[i].text)) {
			if name == "" {
				name = words[i].text
			} else {
				name += words[i].text
			}
			i++
			if i < len(words) && words[i].kind == sqlTokPunct && words[i].text == "." {
				name += "."
				i++
				continue
			}
			break
		}
		if i == start || fn && i < len(words) && words[i].kind == sqlTokPunct && words[i].text == "(" {
			// Nothing named here (a subquery), or a function's rows
			// (FROM generate_series(1, 3)).
			return targets, start - 1
		}
		targets = append(targets, dbText(name, 256))
		// Its alias.
		if i < len(words) && words[i].kind == sqlTokWord && strings.EqualFold(words[i].text, "AS") {
			i++
		}
		if i < len(words) && (words[i].kind == sqlTokWord && !sqlClauseKeyword(words[i].text) && !sqlJoinKeyword(words[i].text) || words[i].kind == sqlTokQuotedID) {
			i++
		}
		if !list || i >= len(words) || words[i].kind != sqlTokPunct || words[i].text != "," {
			return targets, i - 1
		}
		i++ // the comma: another table
	}
}
