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
// and schema included. Only the first statement of a text is read.
// Literals are never part of it, so it holds no value of the query's.
func sqlSummary(q string, d sqlDialect) string {
	words := sqlWordsOf(q, d, 256, true)
	var parts []string
	size, full := 0, false
	add := func(s string) {
		if full = full || size+len(s) > dbMaxSummary; !full {
			parts = append(parts, s)
			size += len(s) + 1
		}
	}
	// opDepth holds, innermost last, the parenthesis depths at which an
	// operation began: a FROM belongs to the query at its own depth, not
	// to EXTRACT(YEAR FROM d) or TRIM(x FROM s) inside one.
	var opDepth []int
	for i := 0; i < len(words) && !full; i++ {
		w := words[i]
		for len(opDepth) > 0 && opDepth[len(opDepth)-1] > w.depth {
			opDepth = opDepth[:len(opDepth)-1]
		}
		if w.kind == sqlTokPunct && w.text == ";" {
			break
		}
		if w.kind != sqlTokWord {
			continue
		}
		u := strings.ToUpper(w.text)
		var prev sqlWord
		if i > 0 {
			prev = words[i-1]
		}
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
			if i == 0 || prev.kind == sqlTokPunct && (prev.text == "(" || prev.text == ")") {
				op = u
			}
		default:
			if i == 0 && u != "WITH" && len(u) <= 32 {
				op = u
			}
		}
		if op != "" {
			opDepth = append(opDepth, w.depth)
			add(op)
		}
		// Where targets follow.
		var targets []string
		switch {
		case len(opDepth) == 0 || opDepth[len(opDepth)-1] != w.depth:
			// Not at an operation's own depth.
		case u == "FROM" || u == "USING":
			targets, i = sqlTargetList(words, i+1, true, true, "ONLY", "LATERAL")
		case sqlJoinKeyword(u) && u != "LATERAL":
			for i+1 < len(words) && words[i+1].kind == sqlTokWord && sqlJoinKeyword(words[i+1].text) {
				i++ // LEFT OUTER JOIN, NATURAL JOIN
			}
			if i+1 < len(words) && words[i+1].kind == sqlTokWord && strings.EqualFold(words[i+1].text, "OUTER") {
				i++
			}
			if i+1 < len(words) && words[i+1].kind == sqlTokWord && strings.EqualFold(words[i+1].text, "JOIN") {
				i++
			}
			targets, i = sqlTargetList(words, i+1, false, true, "LATERAL")
		case u == "INTO" || op == "UPDATE" || op == "TRUNCATE" || op == "COPY":
			targets, i = sqlTargetList(words, i+1, false, false, "ONLY", "LOW_PRIORITY", "IGNORE", "TABLE")
		case u == "TABLE" && i == 1:
			// CREATE TABLE, DROP TABLE, ALTER TABLE.
			targets, i = sqlTargetList(words, i+1, false, false, "IF", "NOT", "EXISTS", "ONLY")
		}
		for _, t := range targets {
			add(t)
		}
	}
	return strings.Join(parts, " ")
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
		var name strings.Builder
		for i < len(words) && (words[i].kind == sqlTokQuotedID || words[i].kind == sqlTokWord && !sqlClauseKeyword(words[i].text)) {
			name.WriteString(words[i].text)
			i++
			if i < len(words) && words[i].kind == sqlTokPunct && words[i].text == "." {
				name.WriteByte('.')
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
		targets = append(targets, dbText(name.String(), 128))
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
