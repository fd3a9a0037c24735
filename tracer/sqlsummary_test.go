package tracer

import (
	"fmt"
	"strings"
	"testing"
)

// TestSQLSummary: db.query.summary as the database conventions generate
// it (their examples first), and the words that look like an operation or
// a FROM but are not one.
func TestSQLSummary(t *testing.T) {
	for _, c := range []struct {
		d     sqlDialect
		query string
		want  string
	}{
		// The conventions' examples.
		{dialectPostgres, "SELECT *\nFROM   wuser_table\nWHERE  username = ?", "SELECT wuser_table"},
		{dialectPostgres, "INSERT INTO shipping_details\n  (order_id,\n  address)\nSELECT order_id,\n  address\nFROM   orders\nWHERE  order_id = ?", "INSERT shipping_details SELECT orders"},
		{dialectPostgres, "SELECT *\nFROM   songs,\n       artists\nWHERE  songs.artist_id == artists.id", "SELECT songs artists"},
		{dialectPostgres, "SELECT order_date\nFROM   (SELECT *\n        FROM   orders o\n               JOIN customers c\n                 ON o.customer_id = c.customer_id)", "SELECT SELECT orders customers"},
		{dialectPostgres, `SELECT * FROM "song list", public.artists`, `SELECT "song list" public.artists`},
		// As the text has them; operations as db.operation.name.
		{dialectMySQL, "select id from `Users` u left outer join shop.orders as o on o.uid = u.id", "SELECT `Users` shop.orders"},
		{dialectPostgres, "DELETE FROM users WHERE id = $1", "DELETE users"},
		{dialectPostgres, "UPDATE ONLY users SET name = $1 FROM teams WHERE teams.id = users.team", "UPDATE users teams"},
		{dialectPostgres, "CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, name text NOT NULL)", "CREATE users"},
		{dialectPostgres, "TRUNCATE TABLE audit", "TRUNCATE audit"},
		{dialectPostgres, "MERGE INTO stock s USING deliveries d ON s.id = d.id WHEN MATCHED THEN UPDATE SET n = s.n + d.n WHEN NOT MATCHED THEN INSERT VALUES (d.id, d.n)", "MERGE stock deliveries"},
		{dialectPostgres, "WITH recent AS (SELECT * FROM orders WHERE at > now() - interval '1 day') SELECT count(*) FROM recent", "SELECT orders SELECT recent"},
		{dialectPostgres, "SELECT a FROM t1 UNION ALL SELECT b FROM t2", "SELECT t1 SELECT t2"},
		{dialectPostgres, "BEGIN", "BEGIN"},
		// Not operations: a lock, an upsert's update.
		{dialectPostgres, "SELECT * FROM jobs WHERE state = 'new' FOR UPDATE SKIP LOCKED", "SELECT jobs"},
		{dialectPostgres, "INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name", "INSERT users"},
		{dialectMySQL, "INSERT INTO hits (page, n) VALUES (?, 1) ON DUPLICATE KEY UPDATE n = n + 1", "INSERT hits"},
		// Not tables: a FROM inside a function, a function's rows.
		{dialectPostgres, "SELECT EXTRACT(YEAR FROM born), TRIM(BOTH ' ' FROM name) FROM people", "SELECT people"},
		{dialectPostgres, "SELECT g, repeat(?, ?) FROM generate_series(?, ?) AS g", "SELECT"},
		// No value of the query's, not even a literal where a table would be.
		{dialectMySQL, "SELECT * FROM 'secret'", "SELECT"},
		// The first statement only.
		{dialectPostgres, "SELECT 1; DROP TABLE users", "SELECT"},
		// Where strings end depends on a setting the wire does not show
		// (a backslash escapes a quote or not): only what reads the same
		// either way is read, or a string's inside would pass for SQL.
		{dialectMySQL, `UPDATE t SET a = 'C:\', b = ' from alice smith ' WHERE id = 1`, "UPDATE t"},
		{dialectMySQL, `SELECT * FROM t WHERE path = 'C:\' OR name = ' JOIN secret_value '`, "SELECT t"},
		{dialectPostgres, `SELECT * FROM t WHERE a = 'x\' FROM secretvalue --'`, "SELECT t"},
		{dialectMySQL, `SELECT * FROM t WHERE a = 'it\'s' AND b IN (SELECT c FROM u)`, "SELECT t SELECT u"},
		// Only queries read tables from FROM: not a cursor, a role, a file.
		{dialectPostgres, `FETCH FORWARD 2000 FROM "_django_curs_140044_sync_1"`, "FETCH"},
		{dialectPostgres, "MOVE FORWARD 5 FROM c_8f2a", "MOVE"},
		{dialectPostgres, "REVOKE SELECT ON t FROM bob", "REVOKE"},
		{dialectMySQL, "GRANT SELECT, INSERT ON shop.* TO 'app'@'%'", "GRANT"},
		{dialectPostgres, "COPY t FROM STDIN", "COPY t"},
		// Functions named like operations.
		{dialectPostgres, "SELECT lower(replace(name, 'a', 'b')) FROM t", "SELECT t"},
		{dialectMySQL, "SELECT CONCAT(INSERT(a, 1, 2, 'x')) FROM t", "SELECT t"},
		// LEFT, FULL and the others start a join only before JOIN: not
		// a column (MySQL's full is not reserved) or a function.
		{dialectMySQL, "SELECT id, full FROM accounts ORDER BY full DESC", "SELECT accounts"},
		{dialectPostgres, "SELECT left(name, 3), right(name, 2) FROM people p ORDER BY left(name, 3) DESC", "SELECT people"},
		{dialectPostgres, "SELECT * FROM a NATURAL FULL OUTER JOIN b CROSS JOIN c", "SELECT a b c"},
		{dialectMySQL, "SELECT * FROM a STRAIGHT_JOIN b ON a.id = b.id", "SELECT a b"},
		{dialectMySQL, "SELECT STRAIGHT_JOIN name, email FROM users", "SELECT users"}, // a modifier
		{dialectMySQL, "SELECT DISTINCT STRAIGHT_JOIN name FROM users u JOIN orders o ON o.uid = u.id", "SELECT users orders"},
		// MySQL's INSERT and REPLACE without INTO; a table's modifiers.
		{dialectMySQL, "INSERT hits (page) VALUES (?)", "INSERT hits"},
		{dialectMySQL, "INSERT IGNORE INTO hits (page) VALUES (?)", "INSERT hits"},
		{dialectMySQL, "REPLACE LOW_PRIORITY hits VALUES (?)", "REPLACE hits"},
		{dialectPostgres, "CREATE TEMP TABLE scratch (id int)", "CREATE scratch"},
		{dialectPostgres, "CREATE UNLOGGED TABLE IF NOT EXISTS cache (k text)", "CREATE cache"},
		{dialectMySQL, "CREATE OR REPLACE TABLE t2 AS SELECT * FROM t1", "CREATE t2 SELECT t1"},
		{dialectMySQL, "CREATE OR REPLACE TEMPORARY TABLE t2 AS SELECT * FROM t1", "CREATE t2 SELECT t1"},
		{dialectMySQL, "DROP TEMPORARY TABLE IF EXISTS t", "DROP t"},
		{dialectPostgres, "DROP TABLE IF EXISTS a, b", "DROP a b"},
		{dialectPostgres, "TRUNCATE a, b RESTART IDENTITY", "TRUNCATE a b"},
		{dialectMySQL, "UPDATE t1, t2 SET t1.n = t2.n WHERE t1.id = t2.id", "UPDATE t1 t2"},
		// Tables joined in parentheses are the query's; a subquery, a
		// VALUES list, a function's rows or USING's columns are not.
		{dialectPostgres, "SELECT * FROM (a JOIN b ON a.id = b.id)", "SELECT a b"},
		{dialectPostgres, "SELECT * FROM a JOIN (b JOIN c ON b.x = c.x) ON a.y = b.y", "SELECT a b c"},
		{dialectPostgres, "SELECT * FROM ((a JOIN b USING (id)) LEFT JOIN c USING (id))", "SELECT a b c"},
		{dialectPostgres, "SELECT * FROM a, (b CROSS JOIN c) WHERE a.n = b.n", "SELECT a b c"},
		{dialectPostgres, "SELECT * FROM (a) WHERE x IN (1, 2)", "SELECT a"},
		{dialectPostgres, "SELECT * FROM (SELECT * FROM t) s JOIN u ON s.id = u.id", "SELECT SELECT t u"},
		{dialectPostgres, "SELECT * FROM (VALUES (1), (2)) AS v (x) JOIN t ON t.x = v.x", "SELECT t"},
		{dialectPostgres, "SELECT * FROM a JOIN LATERAL (SELECT * FROM f WHERE f.a = a.id) x ON true", "SELECT a SELECT f"},
		{dialectMySQL, "SELECT * FROM a JOIN b USING (id) WHERE (a.x, b.y) = (1, 2)", "SELECT a b"},
		{dialectPostgres, "SELECT (a.x + b.y) FROM a, b", "SELECT a b"},
		// A file is not a table.
		{dialectMySQL, "SELECT * INTO OUTFILE '/tmp/t.csv' FROM t", "SELECT t"},
		{dialectMySQL, "INSERT INTO outfile VALUES (1)", "INSERT outfile"}, // a table named so
	} {
		if got := sqlSummary(c.query, c.d); got != c.want {
			t.Errorf("sqlSummary(%q) = %q, want %q", c.query, got, c.want)
		}
	}

	// An ORM's SELECT of many columns: its FROM far in.
	cols := make([]string, 120)
	for i := range cols {
		cols[i] = fmt.Sprintf("t.column_%d", i)
	}
	if got := sqlSummary("SELECT "+strings.Join(cols, ", ")+" FROM t WHERE t.id = $1", dialectPostgres); got != "SELECT t" {
		t.Errorf("a SELECT of 120 columns: %q", got)
	}

	// At most 255 bytes, cut between two parts.
	q := "SELECT * FROM " + strings.Repeat("a_rather_long_table_name, ", 40) + "last"
	got := sqlSummary(q, dialectPostgres)
	if len(got) > dbMaxSummary || !strings.HasSuffix(got, " a_rather_long_table_name") || len(got) < dbMaxSummary-len(" a_rather_long_table_name") {
		t.Errorf("a long summary: %d bytes, %q", len(got), got)
	}
}

// BenchmarkDescribeSQL: what describing a statement costs (once per simple
// query and unnamed Parse: most ORMs' statements), summary included.
func BenchmarkDescribeSQL(b *testing.B) {
	q := "select u.id, u.name, o.total from users u join orders o on o.user_id = u.id where u.id = $1 and o.state = 'open' order by o.created_at desc limit 10"
	b.ReportAllocs()
	for b.Loop() {
		describeSQL(q, dialectPostgres, QuerySanitized, false)
	}
}
