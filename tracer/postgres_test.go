package tracer

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/podtracer/podtracer/bpf"
)

// Captured conversations live in testdata/{postgres,mysql,redis}-*.bin:
// records of a direction byte ('>' client to server, '<' server to
// client), a big-endian uint32 length and the bytes of one read, as the
// recording proxy of test/fixtures/dbclient saw them between real clients
// and servers (Debian 12: PostgreSQL 15, MariaDB 10.11, Redis 7.0):
//
//	dbclient -record /tmp/pgx -listen 127.0.0.1:25432 -upstream 127.0.0.1:5432 &
//	dbclient -postgres 'postgres://postgres:secret@127.0.0.1:25432/shop?sslmode=disable'
//
// and likewise dbclient -mysql and -redis (the Go drivers' scenarios),
// psql, the mariadb client, redis-cli (commands on stdin, SUBSCRIBE, an
// inline PING through bash's /dev/tcp) and redis-benchmark -P 5.

// dbRecord is one read of a captured conversation.
type dbRecord struct {
	toServer bool
	data     string
}

func loadDBCapture(t testing.TB, name string) []dbRecord {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var recs []dbRecord
	for len(b) >= 5 {
		n := int(binary.BigEndian.Uint32(b[1:]))
		if 5+n > len(b) {
			t.Fatalf("%s: truncated record", name)
		}
		recs = append(recs, dbRecord{toServer: b[0] == '>', data: string(b[5 : 5+n])})
		b = b[5+n:]
	}
	return recs
}

// newDBHarness is a harness whose tracer has cfg.
func newDBHarness(t testing.TB, capture int, cfg Config) *harness {
	h := &harness{now: 1_000_000_000, capture: capture}
	wall := func(ns uint64) time.Time { return time.Unix(0, int64(ns)) }
	h.tracer = New(cfg, allProcesses{}, wall, func(r *Request) { h.got = append(h.got, r) })
	return h
}

// replay feeds a capture to a tracer that sees it from the client's side
// (requests leave: Egress) or the server's (requests arrive: Ingress),
// each record cut into the segments split returns, and summarises the
// requests it emitted.
func replayDB(t testing.TB, cfg Config, recs []dbRecord, role Role, capture int, split func(string) []string) []string {
	h := newDBHarness(t, capture, cfg)
	for i, r := range recs {
		dir := bpf.Ingress
		if r.toServer == (role == RoleClient) {
			dir = bpf.Egress
		}
		parts := []string{r.data}
		if split != nil && i > 0 {
			// Detection needs the head of the first message in one
			// segment, as clients write it: the others may be cut anywhere.
			parts = split(r.data)
		}
		for _, p := range parts {
			h.send(1, dir, p)
		}
	}
	h.close(1)
	if n := h.tracer.Stats().Connections; n != 0 {
		t.Errorf("%d connections after close", n)
	}
	var out []string
	for _, r := range h.got {
		if r.Role != role {
			t.Errorf("role %v, want %v: %+v", r.Role, role, r)
		}
		if r.GRPCStatus != -1 || r.Partition != -1 || !r.End.After(r.Start) && !r.End.Equal(r.Start) {
			t.Errorf("bad request fields: %+v", r)
		}
		out = append(out, dbSummary(r))
	}
	return out
}

// dbSummaries is dbSummary of each request.
func dbSummaries(rs []*Request) []string {
	var got []string
	for _, r := range rs {
		got = append(got, dbSummary(r))
	}
	return got
}

// dbSummary is what the tests compare of a request.
func dbSummary(r *Request) string {
	system := r.Protocol
	if r.DBSystem != "" {
		system = r.DBSystem
	}
	s := system + " " + r.DBOperation
	if r.DBCollection != "" {
		s += " " + r.DBCollection
	}
	if r.DBNamespace != "" {
		s += " @" + r.DBNamespace
	}
	if r.DBQuery != "" {
		s += " | " + r.DBQuery
	}
	if r.ErrorCode != "" || r.ErrorMessage != "" {
		s += " ! " + r.ErrorCode + " " + r.ErrorMessage
	}
	return s
}

// operations keeps the operation and error code of summaries.
func dbOperations(reqs []string) []string {
	var out []string
	for _, s := range reqs {
		op, _, _ := strings.Cut(s, " |")
		op, _, _ = strings.Cut(op, " @")
		if _, e, ok := strings.Cut(s, " ! "); ok {
			code, _, _ := strings.Cut(e, " ")
			op += " !" + code
		}
		out = append(out, op)
	}
	return out
}

func dbDiff(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got:\n\t%s\nwant:\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

// splitAt returns a split function that cuts records at byte k, when
// they are longer.
func dbSplitAt(k int) func(string) []string {
	return func(s string) []string {
		if k <= 0 || k >= len(s) {
			return []string{s}
		}
		return []string{s[:k], s[k:]}
	}
}

func dbByteAtATime(s string) []string {
	parts := make([]string, len(s))
	for i := range s {
		parts[i] = s[i : i+1]
	}
	return parts
}

// checkCapture replays a capture from both sides: whole, cut at every
// byte (or every byte of the first and last 300 of long records), one
// byte per segment, and with small capture prefixes. Whole, cut and byte
// by byte must give want exactly; small prefixes the same operations and
// errors, unless lossy lists what they may lose.
func checkDBCapture(t *testing.T, cfg Config, name string, want []string, lossy func(capture int, got, want []string) bool) {
	recs := loadDBCapture(t, name)
	longest := 0
	for _, r := range recs[1:] {
		longest = max(longest, len(r.data))
	}
	for _, role := range []Role{RoleClient, RoleServer} {
		t.Run(role.String(), func(t *testing.T) {
			got := replayDB(t, cfg, recs, role, 4096, nil)
			dbDiff(t, "whole", got, want)
			if t.Failed() {
				return
			}
			for k := 1; k < longest; k++ {
				if k > 300 && k < longest-300 && k%97 != 0 {
					continue
				}
				if got := replayDB(t, cfg, recs, role, 4096, dbSplitAt(k)); strings.Join(got, "\n") != strings.Join(want, "\n") {
					dbDiff(t, fmt.Sprintf("split at %d", k), got, want)
					return
				}
			}
			dbDiff(t, "byte at a time", replayDB(t, cfg, recs, role, 4096, dbByteAtATime), want)
			for _, capture := range []int{bpf.MinCaptureBytes, 128, 256, 1024} {
				got := dbOperations(replayDB(t, cfg, recs, role, capture, nil))
				if lossy == nil || !lossy(capture, got, dbOperations(want)) {
					dbDiff(t, fmt.Sprintf("capture %d", capture), got, dbOperations(want))
				}
			}
		})
	}
}

// dbLossy accepts what a small capture prefix gives: at most lost fewer
// spans, none invented, the same errors, and the last span (after all
// the losses) right.
func dbLossy(got, want []string, lost int) bool {
	if len(got) > len(want) || len(got) < len(want)-lost || len(got) == 0 || got[len(got)-1] != want[len(want)-1] {
		return false
	}
	errs := func(l []string) (e []string) {
		for _, s := range l {
			if _, code, ok := strings.Cut(s, " !"); ok {
				e = append(e, code)
			}
		}
		return e
	}
	return strings.Join(errs(got), ",") == strings.Join(errs(want), ",")
}

// dbSubsequence accepts what a small capture prefix gives when pipelined
// requests beyond it are lost: got is want with some left out, nothing
// invented or reordered, and at least min of them.
func dbSubsequence(got, want []string, min int) bool {
	i := 0
	for _, g := range got {
		for i < len(want) && want[i] != g {
			i++
		}
		if i == len(want) {
			return false
		}
		i++
	}
	return len(got) >= min
}

func TestPostgresPgx(t *testing.T) {
	want := []string{
		"postgresql CREATE users @shop | CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, name text NOT NULL)",
		"postgresql INSERT users @shop | INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
		"postgresql SELECT users @shop | SELECT name FROM users WHERE id = $1",
		"postgresql SELECT users @shop | SELECT id, name FROM users WHERE name = ? AND id IN (?)",
		"postgresql SELECT missing_table @shop | SELECT * FROM missing_table WHERE id = $1 ! 42P01 relation ? does not exist",
		"postgresql SELECT users @shop | SELECT name FROM users WHERE id = $1",
		"postgresql INSERT users @shop | INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
		"postgresql UPDATE users @shop | UPDATE users SET name = $1 WHERE id = $2",
		"postgresql DELETE users @shop | DELETE FROM users WHERE id = $1",
		"postgresql UPDATE users @shop | UPDATE users SET name = ? WHERE id = ?",
		"postgresql SELECT @shop | SELECT g, repeat(?, ?) FROM generate_series(?, ?) AS g",
		"postgresql SELECT @shop | SELECT ?/? ! 22012 division by zero",
	}
	checkDBCapture(t, Config{}, "postgres-pgx.bin", want, func(capture int, got, want []string) bool {
		// Parse messages beyond the prefix: operations come from the
		// command tags, tables are unknown, and of a pipelined batch
		// answered beyond the prefix, the last execution is lost.
		return capture < 1024 && dbLossy(got, want, 1)
	})
}

func TestPostgresPsql(t *testing.T) {
	want := []string{
		"postgresql SELECT users @shop | SELECT id, name FROM users WHERE id = ?;",
		"postgresql INSERT users @shop | INSERT INTO users (id, name) VALUES (?, ?) ON CONFLICT DO NOTHING;",
		"postgresql SELECT users @shop | SELECT count(*) FROM users;",
		"postgresql SELECT nope @shop | SELECT * FROM nope; ! 42P01 relation ? does not exist",
		"postgresql PREPARE @shop | PREPARE q(int) AS SELECT name FROM users WHERE id = $1;",
		"postgresql SELECT users @shop | EXECUTE q(?);",
		"postgresql BEGIN @shop | BEGIN;",
		"postgresql UPDATE users @shop | UPDATE users SET name = ? WHERE id = ?;",
		"postgresql ROLLBACK @shop | ROLLBACK;",
		"postgresql  @shop | ;",
		"postgresql COPY users @shop | COPY users TO STDOUT;",
	}
	checkDBCapture(t, Config{}, "postgres-psql.bin", want, nil)
	checkDBCapture(t, Config{}, "postgres-psql-copy.bin", []string{
		"postgresql SELECT @shop | SELECT ? AS a; SELECT ? || ?",
		"postgresql COPY users @shop | COPY users (id, name) FROM STDIN",
	}, nil)
}

// pgMsg builds a typed message.
func pgMsg(t byte, body ...string) string {
	b := strings.Join(body, "")
	n := len(b) + 4
	return string([]byte{t, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) + b
}

func pgStartup(params ...string) string {
	b := "\x00\x03\x00\x00" + strings.Join(params, "\x00") + "\x00\x00"
	n := len(b) + 4
	return string([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) + b
}

var pgReady = pgMsg('Z', "I")

func TestPostgresPipelinedErrorSkipsRest(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, out, pgStartup("user", "app", "database", "shop"))
	h.send(1, in, pgMsg('R', "\x00\x00\x00\x00")+pgReady)
	var batch string
	for i, q := range []string{"SELECT 1", "SELECT * FROM nope", "DELETE FROM t"} {
		name := fmt.Sprint("s", i)
		batch += pgMsg('P', name, "\x00", q, "\x00\x00\x00") + pgMsg('B', "\x00", name, "\x00\x00\x00\x00\x00\x00\x00") + pgMsg('E', "\x00\x00\x00\x00\x00")
	}
	h.send(1, out, batch+pgMsg('S'))
	h.send(1, in, pgMsg('1')+pgMsg('2')+pgMsg('C', "SELECT 1\x00")+pgMsg('E', "SERROR\x00C42P01\x00Mrelation \"nope\" does not exist\x00\x00")+pgReady)
	// Then a simple query: it pairs with its own ReadyForQuery.
	h.send(1, out, pgMsg('Q', "DELETE FROM t WHERE id = 5\x00"))
	h.send(1, in, pgMsg('C', "DELETE 1\x00")+pgReady)
	got := dbSummaries(h.got)
	dbDiff(t, "pipelined", got, []string{
		"postgresql SELECT @shop | SELECT ?",
		"postgresql SELECT nope @shop | SELECT * FROM nope ! 42P01 relation ? does not exist",
		"postgresql DELETE t @shop | DELETE FROM t WHERE id = ?",
	})
	// Times: a client span runs from entering the write to the response.
	r := h.got[2]
	if r.Role != RoleClient || r.End.Sub(r.Start) != 2000 {
		t.Errorf("client span %v..%v (%v)", r.Start, r.End, r.End.Sub(r.Start))
	}
}

// TestPostgresIdleKeepsState: a pooled connection idle for ten minutes
// (HikariCP's default) keeps its database and prepared statements: an
// execution of a statement prepared before still has its text and table.
func TestPostgresIdleKeepsState(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, out, pgStartup("user", "app", "database", "shop"))
	h.send(1, in, pgMsg('R', "\x00\x00\x00\x00")+pgReady)
	exec := pgMsg('B', "\x00", "s1", "\x00\x00\x00\x00\x00\x00\x00") + pgMsg('E', "\x00\x00\x00\x00\x00") + pgMsg('S')
	h.send(1, out, pgMsg('P', "s1\x00", "SELECT * FROM users WHERE id = $1\x00\x00\x00")+exec)
	h.send(1, in, pgMsg('1')+pgMsg('2')+pgMsg('C', "SELECT 1\x00")+pgReady)
	h.idleFor(10*time.Minute, 2, out, pgMsg('Q', "SELECT 1\x00"), pgMsg('C', "SELECT 1\x00")+pgReady)
	h.send(1, out, exec)
	h.send(1, in, pgMsg('2')+pgMsg('C', "SELECT 1\x00")+pgReady)
	if got, want := dbSummary(h.got[len(h.got)-1]), "postgresql SELECT users @shop | SELECT * FROM users WHERE id = $1"; got != want {
		t.Errorf("after 10 idle minutes: %s, want %s", got, want)
	}
}

func TestPostgresServerTimes(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, in, pgMsg('Q', "SELECT 1\x00"))
	h.send(1, out, pgMsg('C', "SELECT 1\x00")+pgReady)
	if len(h.got) != 1 {
		t.Fatalf("got %d requests", len(h.got))
	}
	// A server span runs from the exit of the read to the exit of the write.
	if r := h.got[0]; r.Role != RoleServer || r.End.Sub(r.Start) != 1500 || r.DBNamespace != "" {
		t.Errorf("server span %+v (%v)", r, r.End.Sub(r.Start))
	}
}

func TestPostgresTLS(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, out, "\x00\x00\x00\x08\x04\xd2\x16\x2f")
	h.send(1, in, "S")
	h.send(1, out, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"+pgMsg('Q', "SELECT 1\x00"))
	h.send(1, in, pgMsg('C', "SELECT 1\x00")+pgReady)
	if len(h.got) != 0 {
		t.Fatalf("parsed encrypted bytes: %+v", h.got[0])
	}
}

// TestPostgresTLSPlaintext: after the SSLRequest, the TLS plaintext
// (bpf.FlagPlaintext) is parsed from its startup message on: the session's
// database is known, its queries are spans marked TLS.
func TestPostgresTLSPlaintext(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, out, "\x00\x00\x00\x08\x04\xd2\x16\x2f")
	h.send(1, in, "S")
	plain := func(dir bpf.Direction, data string) { h.sendKernel(1, dir, data, 0, bpf.FlagPlaintext) }
	plain(out, pgStartup("user", "app", "database", "shop"))
	plain(in, pgMsg('R', "\x00\x00\x00\x00")+pgReady)
	plain(out, pgMsg('Q', "SELECT * FROM users WHERE id = 7\x00"))
	plain(in, pgMsg('C', "SELECT 1\x00")+pgReady)
	dbDiff(t, "requests", dbSummaries(h.got), []string{"postgresql SELECT users @shop | SELECT * FROM users WHERE id = ?"})
	if len(h.got) == 1 && !h.got[0].TLS {
		t.Error("not marked TLS")
	}
}

// A connection older than the agent: the first bytes seen are a query,
// and statements prepared before are named by their command tags.
func TestPostgresMidStream(t *testing.T) {
	recs := loadDBCapture(t, "postgres-pgx.bin")
	from := 0
	for i, r := range recs {
		if r.toServer && strings.HasPrefix(r.data, "B") && strings.Contains(r.data, "user_by_id") {
			from = i
		}
	}
	// From the execution of user_by_id, prepared before: first a
	// response (skipped), then the rest.
	got := replayDB(t, Config{}, recs[from-1:], RoleClient, 4096, nil)
	dbDiff(t, "mid-stream", got, []string{
		"postgresql SELECT",
		"postgresql INSERT users | INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
		"postgresql UPDATE users | UPDATE users SET name = $1 WHERE id = $2",
		"postgresql DELETE users | DELETE FROM users WHERE id = $1",
		"postgresql UPDATE users | UPDATE users SET name = ? WHERE id = ?",
		"postgresql SELECT | SELECT g, repeat(?, ?) FROM generate_series(?, ?) AS g",
		"postgresql SELECT | SELECT ?/? ! 22012 division by zero",
	})
}

func TestPostgresQueryText(t *testing.T) {
	recs := loadDBCapture(t, "postgres-psql.bin")
	full := replayDB(t, Config{QueryText: QueryFull}, recs, RoleClient, 4096, nil)
	if want := "postgresql INSERT users @shop | INSERT INTO users (id, name) VALUES (10, 'O''Brien') ON CONFLICT DO NOTHING;"; full[1] != want {
		t.Errorf("full: %q, want %q", full[1], want)
	}
	off := replayDB(t, Config{QueryText: QueryOff}, recs, RoleClient, 4096, nil)
	if want := "postgresql INSERT users @shop"; off[1] != want {
		t.Errorf("off: %q, want %q", off[1], want)
	}
}

func TestPostgresBounded(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, out, pgStartup("user", "app"))
	for i := range 1000 {
		h.send(1, out, pgMsg('P', fmt.Sprint("stmt", i), "\x00SELECT 1\x00\x00\x00")+pgMsg('Q', "SELECT 1\x00"))
	}
	c := h.tracer.conns[connKey{pid: 7, sock: 1}].parser.(*pgConn)
	if len(c.stmts.m) > pgMaxStatements || len(c.batches) > pgMaxBatches+1 {
		t.Errorf("%d statements, %d batches", len(c.stmts.m), len(c.batches))
	}
	if c.db != "app" {
		t.Errorf("database %q, want the user's name", c.db)
	}
}

// Each parser claims its own first bytes and no other's.
func TestDetectionDoesNotMisfire(t *testing.T) {
	first := func(name string) string { return loadDBCapture(t, name)[0].data }
	firstToServer := func(name string) string {
		for _, r := range loadDBCapture(t, name) {
			if r.toServer {
				return r.data
			}
		}
		return ""
	}
	for _, c := range []struct {
		name, data string
		dir        bpf.Direction
		want       string
	}{
		{"pg startup", first("postgres-pgx.bin"), out, ProtoPostgreSQL},
		{"pg ssl request", first("postgres-psql.bin"), out, ProtoPostgreSQL},
		{"pg query", pgMsg('Q', "SELECT 1\x00"), out, ProtoPostgreSQL},
		{"pg extended", pgMsg('P', "\x00SELECT $1\x00\x00\x00") + pgMsg('S'), in, ProtoPostgreSQL},
		{"mysql greeting", first("mysql-gosql.bin"), in, ProtoMySQL},
		{"mysql query", "\x08\x00\x00\x00\x03SELECT 1", out, ProtoMySQL},
		{"mysql execute", "\x0b\x00\x00\x00\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00", out, ProtoMySQL},
		{"redis command", first("redis-goredis.bin"), out, ProtoRedis},
		{"redis inline", first("redis-inline.bin"), out, ProtoRedis},
		{"http", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", in, ProtoHTTP},
		{"http response", "HTTP/1.1 200 OK\r\n\r\n", in, ProtoHTTP},
		{"tls", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", out, ""},
		{"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", out, "*"},
		{"kafka", "\x00\x00\x00\x2a\x00\x03\x00\x0c\x00\x00\x00\x01\x00\x07rdkafka", out, "*"},
		{"ssh", "SSH-2.0-OpenSSH_9.2\r\n", out, ""},
		{"smtp", "EHLO example.com\r\n", out, ""},
		{"mysql in pg", firstToServer("mysql-gosql.bin"), out, ""},
		{"pg in mysql", pgMsg('Q', "\x03SELECT 1\x00"), out, ProtoPostgreSQL},
		{"text", "hello world\n", out, ""},
		{"zeros", "\x00\x00\x00\x00\x00\x00\x00\x00", out, ""},
	} {
		var got []string
		for _, r := range registered {
			if r.name != ProtoPostgreSQL && r.name != ProtoMySQL && r.name != ProtoRedis && (r.name != ProtoHTTP || c.want == "*") {
				continue // "*": another protocol's bytes, which ours must leave alone
			}
			seg := &segment{data: []byte(c.data), total: len(c.data)}
			if r.detector(Config{})(c.dir, seg, func(*Request, Role, uint64, uint64) {}) != nil {
				got = append(got, r.name)
			}
		}
		want := []string{}
		if c.want != "" && c.want != "*" {
			want = []string{c.want}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: detected as %v, want %v", c.name, got, want)
		}
	}
}

// More queries in flight than the tracer remembers: it counts the others,
// so that later responses still pair.
func TestPostgresOverflowKeepsPairing(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	for i := range 100 {
		h.send(1, out, pgMsg('Q', fmt.Sprintf("SELECT %d\x00", i)))
	}
	for range 100 {
		h.send(1, in, pgMsg('C', "SELECT 1\x00")+pgReady)
	}
	h.send(1, out, pgMsg('Q', "DELETE FROM t\x00"))
	h.send(1, in, pgMsg('C', "DELETE 3\x00")+pgReady)
	if len(h.got) != pgMaxBatches+1 || h.got[len(h.got)-1].DBQuery != "DELETE FROM t" {
		t.Fatalf("%d requests, last %+v", len(h.got), h.got[len(h.got)-1])
	}
}

// The database detectors stay away from other protocols' real bytes: the
// captures of the HTTP/2, gRPC and Kafka parsers' tests.
func TestDetectionIgnoresOtherCaptures(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	n := 0
	for _, file := range files {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) != 3 || strings.HasPrefix(fields[0], "#") {
				continue
			}
			data, err := hex.DecodeString(fields[2])
			if err != nil || len(data) == 0 {
				continue
			}
			for _, capture := range []int{64, 1024} {
				seg := &segment{data: data[:min(len(data), capture)], total: len(data)}
				for _, dir := range []bpf.Direction{in, out} {
					n++
					for _, r := range registered {
						switch r.name {
						case ProtoPostgreSQL, ProtoMySQL, ProtoRedis:
							if r.detector(Config{})(dir, seg, func(*Request, Role, uint64, uint64) {}) != nil {
								t.Errorf("%s: %s detected in %x", filepath.Base(file), r.name, data[:min(len(data), 32)])
							}
						}
					}
				}
			}
		}
		f.Close()
	}
	if n == 0 {
		t.Skip("no other captures in testdata")
	}
}

// pgHeld counts the bytes of statement text the pending batches of a
// connection hold, each string once.
func pgHeld(c *pgConn) int {
	seen := map[*byte]bool{}
	n := 0
	add := func(s sqlStatement) {
		if p := unsafe.StringData(s.text); len(s.text) > 0 && !seen[p] {
			seen[p] = true
			n += len(s.text)
		}
	}
	for _, b := range c.batches {
		add(b.stmt)
		for _, s := range b.parses {
			add(s)
		}
		for _, it := range b.items {
			add(it.stmt)
		}
	}
	return n
}

// A client that pipelines batches of big distinct queries and never gets
// an answer (or bytes that look like it) holds a bounded amount of query
// text per connection.
func TestPostgresPendingText(t *testing.T) {
	h := newDBHarness(t, 1<<20, Config{QueryText: QueryFull})
	h.send(1, out, pgStartup("user", "app"))
	n := 0
	for range 2 * pgMaxBatches {
		var batch strings.Builder
		for range pgMaxItems {
			n++
			q := fmt.Sprintf("SELECT %d, %s", n, strings.Repeat("x", dbMaxQueryText))
			batch.WriteString(pgMsg('P', "\x00", q, "\x00\x00\x00") + pgMsg('B', "\x00\x00\x00\x00\x00\x00\x00") + pgMsg('E', "\x00\x00\x00\x00\x00"))
		}
		h.send(1, out, batch.String()+pgMsg('S'))
	}
	c := h.tracer.conns[connKey{pid: 7, sock: 1}].parser.(*pgConn)
	held := pgHeld(c)
	t.Logf("%d batches hold %d bytes of query text", len(c.batches), held)
	if held > pgMaxHeldText {
		t.Errorf("%d batches hold %d bytes of query text", len(c.batches), held)
	}
}

// The text a batch held is given back when it is answered: the budget of
// pgMaxHeldText is for what is pending, not for a connection's life.
func TestPostgresHeldTextReleased(t *testing.T) {
	h := newDBHarness(t, 1<<20, Config{QueryText: QueryFull})
	h.send(1, out, pgStartup("user", "app"))
	h.send(1, in, pgMsg('R', "\x00\x00\x00\x00")+pgReady)
	for i := range 2 * pgMaxHeldText / dbMaxQueryText {
		q := fmt.Sprintf("SELECT %d, %s", i, strings.Repeat("x", dbMaxQueryText))
		h.send(1, out, pgMsg('P', "\x00", q, "\x00\x00\x00")+pgMsg('B', "\x00\x00\x00\x00\x00\x00\x00")+pgMsg('E', "\x00\x00\x00\x00\x00")+pgMsg('S'))
		h.send(1, in, pgMsg('1')+pgMsg('2')+pgMsg('C', "SELECT 1\x00")+pgReady)
		if len(h.got) != i+1 || h.got[i].DBQuery != dbText(q, dbMaxQueryText) {
			t.Fatalf("query %d: %d requests, text %.20q", i, len(h.got), h.got[len(h.got)-1].DBQuery)
		}
	}
	if c := h.tracer.conns[connKey{pid: 7, sock: 1}].parser.(*pgConn); c.held != 0 || len(c.batches) != 0 {
		t.Errorf("%d bytes held by %d batches", c.held, len(c.batches))
	}
}

// pgx with its statement cache: Parse once, then Bind, Execute and Sync in
// one write. A Bind of more parameter bytes than the prefix holds leaves
// the Execute and the Sync in the tail, where they are read: the
// execution keeps its statement.
func TestPostgresBigBind(t *testing.T) {
	h := newDBHarness(t, 1024, Config{})
	startup := "\x00\x03\x00\x00user\x00app\x00database\x00shop\x00\x00"
	sb := []byte{0, 0, 0, 0}
	binary.BigEndian.PutUint32(sb, uint32(4+len(startup)))
	h.send(1, out, string(sb)+startup)
	msg := func(t byte, body string) string {
		b := []byte{t, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
		return string(b) + body
	}
	h.send(1, in, msg('R', "\x00\x00\x00\x00")+msg('Z', "I"))
	h.send(1, out, msg('P', "s1\x00INSERT INTO orders (doc) VALUES ($1)\x00\x00\x00")+msg('D', "Ss1\x00")+msg('S', ""))
	h.send(1, in, msg('1', "")+msg('t', "\x00\x00")+msg('n', "")+msg('Z', "I"))
	for _, n := range []int{10, 3000} {
		param := strings.Repeat("x", n)
		pl := []byte{0, 0, 0, 0}
		binary.BigEndian.PutUint32(pl, uint32(len(param)))
		bind := msg('B', "\x00s1\x00\x00\x00\x00\x01"+string(pl)+param+"\x00\x00")
		h.send(1, out, bind+msg('E', "\x00\x00\x00\x00\x00")+msg('S', ""))
		h.send(1, in, msg('2', "")+msg('C', "INSERT 0 1\x00")+msg('Z', "I"))
	}
	if len(h.got) != 2 {
		t.Fatalf("%d spans, want 2", len(h.got))
	}
	for _, r := range h.got {
		if r.DBOperation != "INSERT" || r.DBCollection != "orders" || r.DBQuery == "" {
			t.Errorf("span %q %q %q, want INSERT into orders with its text", r.DBOperation, r.DBCollection, r.DBQuery)
		}
	}
}
