package tracer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSanitizeSQL(t *testing.T) {
	for _, c := range []struct {
		d        sqlDialect
		in, want string
	}{
		{dialectPostgres, "SELECT id, name FROM users WHERE name = 'alice' AND id IN (1, 2, 3)", "SELECT id, name FROM users WHERE name = ? AND id IN (?)"},
		{dialectPostgres, "SELECT name FROM users WHERE id = $1", "SELECT name FROM users WHERE id = $1"},
		{dialectPostgres, "INSERT INTO users (id, name) VALUES (10, 'O''Brien') ON CONFLICT DO NOTHING;", "INSERT INTO users (id, name) VALUES (?, ?) ON CONFLICT DO NOTHING;"},
		{dialectPostgres, "insert into t values (1, 'a'), (2, 'b'),(3,'c')", "insert into t values (?, ?)"},
		{dialectPostgres, "SELECT * FROM \"Users\" WHERE \"Name\" = E'x\\'y' AND b = B'0101' AND h = X'ff'", "SELECT * FROM \"Users\" WHERE \"Name\" = ? AND b = ? AND h = ?"},
		{dialectPostgres, "SELECT $$a 'quoted' body$$, $fn$ x $fn$, 1.5e-3, .5, -7 FROM t", "SELECT ?, ?, ?, ?, ? FROM t"},
		{dialectPostgres, "SELECT a - 5, a-5, (-5), x = -5 FROM t", "SELECT a - ?, a-?, (?), x = ? FROM t"},
		{dialectPostgres, "SELECT 1 -- secret 'x'\n  ,  2 /* c 'y' */ FROM\n\tt", "SELECT ? , ? FROM t"},
		// MySQL's -- comment needs a space after it: 1--1 is arithmetic.
		{dialectMySQL, "UPDATE t SET a = 1--1, b = 'x\nfrom alice', c = 'y' WHERE id = 2", "UPDATE t SET a = ?--?, b = ?, c = ? WHERE id = ?"},
		{dialectMySQL, "SELECT 1 -- secret 'x'\n, 2 --\tand 'y'\nFROM t", "SELECT ? , ? FROM t"},
		// PostgreSQL's block comments nest: ended at the first */, the
		// quote after it made the password look like text between literals.
		{dialectPostgres, "SELECT 1 /* a /* b */ don't */ FROM t WHERE pw = 'hunter2'", "SELECT ? FROM t WHERE pw = ?"},
		{dialectPostgres, "SELECT 1 /* /* unclosed */ FROM t WHERE pw = 'hunter2'", "SELECT ?"},
		{dialectMySQL, "SELECT 1 /* a /* b */ FROM t WHERE pw = 'hunter2'", "SELECT ? FROM t WHERE pw = ?"},
		{dialectPostgres, "SELECT x::int, t1.col2 FROM t1 WHERE c = :name", "SELECT x::int, t1.col2 FROM t1 WHERE c = :name"},
		{dialectPostgres, "SELECT 'unterminated", "SELECT ?"},
		{dialectPostgres, "SELECT * FROM t WHERE a IN ($1, $2)", "SELECT * FROM t WHERE a IN ($1, $2)"},
		{dialectMySQL, "SELECT * FROM `shop`.`users` WHERE name = \"bob\" AND note = 'it\\'s' AND x = 0x1F", "SELECT * FROM `shop`.`users` WHERE name = ? AND note = ? AND x = ?"},
		{dialectMySQL, "SELECT name FROM users WHERE id = ? # trailing", "SELECT name FROM users WHERE id = ?"},
		{dialectMySQL, "SELECT _utf8mb4'abc', N'x', @a, @@session.sql_mode", "SELECT ?, ?, @a, @@session.sql_mode"},
		{dialectMySQL, "SELECT seq FROM seq_1_to_5000 LIMIT 10, 20", "SELECT seq FROM seq_1_to_5000 LIMIT ?, ?"},
	} {
		if got := sanitizeSQL(c.in, c.d); got != c.want {
			t.Errorf("sanitizeSQL(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
	}
}

func TestSQLOperation(t *testing.T) {
	for _, c := range []struct {
		d         sqlDialect
		in        string
		op, table string
	}{
		{dialectPostgres, "SELECT name FROM users WHERE id = $1", "SELECT", "users"},
		{dialectPostgres, "select * from public.users u where u.id = 1", "SELECT", "public.users"},
		{dialectPostgres, "SELECT count(*) FROM users;", "SELECT", "users"},
		{dialectPostgres, "SELECT * FROM users JOIN orders ON orders.uid = users.id", "SELECT", ""},
		{dialectPostgres, "SELECT * FROM users u LEFT JOIN orders o ON o.uid = u.id", "SELECT", ""},
		{dialectPostgres, "SELECT * FROM a, b", "SELECT", ""},
		{dialectPostgres, "SELECT g FROM generate_series(1, 5000) AS g", "SELECT", ""},
		{dialectPostgres, "SELECT * FROM (SELECT 1) s", "SELECT", ""},
		{dialectPostgres, "SELECT 1/0", "SELECT", ""},
		{dialectPostgres, "SELECT (SELECT max(id) FROM b) FROM a WHERE x IN (SELECT y FROM c)", "SELECT", "a"},
		{dialectPostgres, "  (SELECT 1)", "", ""},
		{dialectPostgres, "INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name", "INSERT", "users"},
		{dialectPostgres, "UPDATE users SET name = $1 WHERE id = $2", "UPDATE", "users"},
		{dialectPostgres, "DELETE FROM ONLY users WHERE id = $1", "DELETE", "users"},
		{dialectPostgres, "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT", ""},
		{dialectPostgres, "CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY)", "CREATE", "users"},
		{dialectPostgres, "CREATE UNIQUE INDEX i ON users (id)", "CREATE", ""},
		{dialectPostgres, "COPY users (id, name) FROM STDIN", "COPY", "users"},
		{dialectPostgres, "TRUNCATE TABLE \"Orders\"", "TRUNCATE", "Orders"},
		{dialectPostgres, "/* app=shop */ begin", "BEGIN", ""},
		{dialectMySQL, "INSERT users SET name = 'x'", "INSERT", "users"},
		{dialectMySQL, "REPLACE INTO `shop`.`users` VALUES (1)", "REPLACE", "shop.users"},
		{dialectMySQL, "UPDATE LOW_PRIORITY users SET a = 1", "UPDATE", "users"},
		{dialectMySQL, "DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id", "DELETE", ""},
		{dialectMySQL, "SHOW TABLES", "SHOW", ""},
		{dialectMySQL, "", "", ""},
	} {
		op, table := sqlOperation(c.in, c.d)
		if op != c.op || table != c.table {
			t.Errorf("sqlOperation(%q) = %q, %q; want %q, %q", c.in, op, table, c.op, c.table)
		}
	}
}

func TestDescribeSQLModes(t *testing.T) {
	q := "SELECT * FROM users WHERE token = 'secret'"
	if s := describeSQL(q, dialectPostgres, "", false); s.text != "SELECT * FROM users WHERE token = ?" || s.op != "SELECT" || s.table != "users" {
		t.Errorf("default: %+v", s)
	}
	if s := describeSQL(q, dialectPostgres, QueryFull, false); s.text != q {
		t.Errorf("full: %+v", s)
	}
	if s := describeSQL(q, dialectPostgres, QueryOff, false); s.text != "" || s.op != "SELECT" {
		t.Errorf("off: %+v", s)
	}
	// A text the capture cut short: its last word may be the start of a
	// longer one, and is not taken for a table.
	if s := describeSQL("SELECT * FROM users_archive WHERE id = 1 AND name IN (SELECT n FROM us", dialectPostgres, "", true); s.table != "users_archive" || s.summary != "SELECT users_archive SELECT" {
		t.Errorf("cut: table %q, summary %q", s.table, s.summary)
	}
	if s := describeSQL("SELECT * FROM us", dialectPostgres, "", true); s.table != "" || s.summary != "SELECT" {
		t.Errorf("cut in its table's name: table %q, summary %q", s.table, s.summary)
	}
	if s := describeSQL("SELECT * FROM us", dialectPostgres, "", false); s.table != "us" || s.summary != "SELECT us" {
		t.Errorf("whole: table %q, summary %q", s.table, s.summary)
	}
	// db.collection.name only for a statement on one table (the
	// conventions: "if a database call is performed on a single
	// collection"); a table named twice is one.
	for q, table := range map[string]string{
		"INSERT INTO shipping SELECT * FROM orders":                     "",
		"UPDATE t SET a = 1 WHERE b IN (SELECT b FROM u)":               "",
		"INSERT INTO t SELECT 1":                                        "t",
		"UPDATE t SET a = 1 WHERE b IN (SELECT b FROM t WHERE c)":       "t",
		"SELECT * FROM \"Users\" WHERE id IN (SELECT 1 FROM \"Users\")": "Users",
	} {
		if s := describeSQL(q, dialectPostgres, "", false); s.table != table {
			t.Errorf("%q: db.collection.name %q (summary %q), want %q", q, s.table, s.summary, table)
		}
	}
	bad := "SELECT '\xff\xfe' FROM t\x00"
	if s := describeSQL(bad, dialectPostgres, QueryFull, false); !utf8.ValidString(s.text) || strings.Contains(s.text, "\x00") {
		t.Errorf("full text not clean UTF-8: %q", s.text)
	}
}

func TestStmtCacheBounded(t *testing.T) {
	c := dbStmtCache[int]{max: 8}
	for i := range 100 {
		c.put(i, sqlStatement{op: "SELECT"})
	}
	if len(c.m) != 8 {
		t.Errorf("cache holds %d statements, want 8", len(c.m))
	}
	if _, ok := c.get(99); !ok {
		t.Error("the newest statement was evicted")
	}
}

func FuzzSanitizeSQL(f *testing.F) {
	f.Add("SELECT * FROM t WHERE a IN (1, 2) AND b = 'x''y' -- c")
	f.Add("INSERT INTO t VALUES (1), (2), ($$x$$)")
	f.Add("WITH a AS (SELECT 1) SELECT * FROM a JOIN b")
	f.Fuzz(func(t *testing.T, q string) {
		for _, d := range []sqlDialect{dialectPostgres, dialectMySQL} {
			s := describeSQL(q, d, QuerySanitized, false)
			if !utf8.ValidString(s.text) || !utf8.ValidString(s.table) || len(s.text) > 2*dbMaxQueryText {
				t.Fatalf("bad description %+v", s)
			}
		}
	})
}

// A server's error message goes on the span without the values it
// quotes, unless the query text is kept whole.
func TestDBErrorText(t *testing.T) {
	for _, c := range []struct{ msg, want string }{
		{"Duplicate entry 'alice@example.com' for key 'users.email'", "Duplicate entry ? for key ?"},
		{`invalid input syntax for type integer: "4111 1111"`, "invalid input syntax for type integer: ?"},
		{"ERR unknown command 'GETX', with args beginning with: 'secret' ", "ERR unknown command ?, with args beginning with: ? "},
		{"Out of range value for column 'age' at row 1", "Out of range value for column ? at row ?"},
		{"Can't find file: 'x.frm' (errno: 2)", "Can't find file: ? (errno: ?)"},
		{"value 3.14 too long for type character varying(2)", "value ? too long for type character varying(?)"},
		{"relation 2fa_codes does not exist", "relation 2fa_codes does not exist"},
		{"WRONGTYPE Operation against a key holding the wrong kind of value", "WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"Duplicate entry 'cut off", "Duplicate entry ?"},
		{"Duplicate entry 'O'Brien' for key 'users.name'", "Duplicate entry ? for key ?"},
		{"Duplicate entry 'it's 1'", "Duplicate entry ?"},
		{"", ""},
	} {
		if got := dbErrorText(c.msg, QuerySanitized); got != c.want {
			t.Errorf("%q: got %q, want %q", c.msg, got, c.want)
		}
		if got := dbErrorText(c.msg, QueryOff); got != c.want {
			t.Errorf("%q (query text off): got %q, want %q", c.msg, got, c.want)
		}
		if got := dbErrorText(c.msg, QueryFull); got != c.msg {
			t.Errorf("%q (query text full): got %q", c.msg, got)
		}
	}
}

// Whether a backslash escapes a quote is the server's setting, not the
// query's: a literal read the wrong way would leave the next one's value
// bare. The reading under which the query parses is taken; when both do,
// and differ, what follows the first difference is one "?".
func TestSanitizeSQLBackslashReadings(t *testing.T) {
	for _, c := range []struct {
		d        sqlDialect
		in, want string
	}{
		// MySQL with NO_BACKSLASH_ESCAPES: read with escapes, secret2 was bare.
		{dialectMySQL, `UPDATE u SET pw='C:\' AND x='secret2'`, "UPDATE u SET pw=? AND x=?"},
		// MySQL's default: escaped quotes.
		{dialectMySQL, `SELECT * FROM t WHERE name = 'O\'Brien' AND id = 7`, "SELECT * FROM t WHERE name = ? AND id = ?"},
		// PostgreSQL's default (standard strings), and with
		// standard_conforming_strings=off.
		{dialectPostgres, `SELECT 'a\' , 'secret'`, "SELECT ? , ?"},
		{dialectPostgres, `SELECT 'x\' , secret'`, "SELECT ?"},
		// Both readings parse, differently.
		{dialectMySQL, `SELECT 'a\' , \'b' , 'c'`, "SELECT ?"},
	} {
		got := sanitizeSQL(c.in, c.d)
		if got != c.want {
			t.Errorf("sanitizeSQL(%q) = %q, want %q", c.in, got, c.want)
		}
		for _, secret := range []string{"secret", "Brien", "b'"} {
			if strings.Contains(got, secret) {
				t.Errorf("sanitizeSQL(%q) = %q leaves %q", c.in, got, secret)
			}
		}
	}
}
