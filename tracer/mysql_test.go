package tracer

import (
	"github.com/podtracer/podtracer/bpf"

	"strings"
	"testing"
	"time"
)

// The server of these captures is MariaDB (its greeting says so), and
// db.system.name says it too.
func TestMySQLGoDriver(t *testing.T) {
	want := []string{
		"mariadb CREATE users @shop | CREATE TABLE IF NOT EXISTS users (id INT PRIMARY KEY, name VARCHAR(?) NOT NULL)",
		"mariadb INSERT users @shop | INSERT INTO users (id, name) VALUES (?, ?) ON DUPLICATE KEY UPDATE name = VALUES(name)",
		"mariadb SELECT users @shop | SELECT name FROM users WHERE id = ?",
		"mariadb SELECT users @shop | SELECT id, name FROM users WHERE name = ? AND id IN (?)",
		"mariadb SELECT missing_table @shop | SELECT * FROM missing_table ! 1146 Table ? doesn't exist",
		"mariadb SELECT missing_table @shop | SELECT * FROM missing_table WHERE id = ? ! 1146 Table ? doesn't exist",
		"mariadb SELECT users @shop | SELECT name FROM users WHERE id = ?",
		"mariadb SELECT users @shop | SELECT name FROM users WHERE id = ?",
		"mariadb UPDATE users @shop | UPDATE users SET name = ? WHERE id = ?",
		"mariadb SELECT seq_1_to_5000 @shop | SELECT seq, REPEAT(?, ?) FROM seq_1_to_5000",
	}
	checkDBCapture(t, Config{}, "mysql-gosql.bin", want, nil)
}

func TestMySQLMariaDBClient(t *testing.T) {
	want := []string{
		"mariadb SELECT users @shop | SELECT id, name FROM users WHERE id = ?",
		"mariadb INSERT users @shop | INSERT INTO users (id, name) VALUES (?, ?) ON DUPLICATE KEY UPDATE name = ?",
		"mariadb SELECT nope @shop | SELECT * FROM nope ! 1146 Table ? doesn't exist",
		"mariadb PREPARE @shop | PREPARE q FROM ?",
		"mariadb SET @shop | SET @a = ?",
		"mariadb SELECT users @shop | EXECUTE q USING @a",
		"mariadb SELECT @shop | SELECT DATABASE()",
		"mariadb SELECT @mysql | SELECT ?, ?",
		"mariadb SELECT @mysql | SELECT ?",
	}
	checkDBCapture(t, Config{}, "mysql-mariadb.bin", want, nil)
}

// A greeting's version tells MariaDB from MySQL, which speak the same
// protocol.
func TestMySQLGreetingSystem(t *testing.T) {
	rest := "\x08\x00\x00\x00abcdefgh\x00\xff\xf7"
	for version, want := range map[string]string{
		"5.5.5-10.11.6-MariaDB-0+deb12u1": "mariadb",
		"11.4.2-MariaDB":                  "mariadb",
		"8.0.36":                          "",
		"8.4.0-0ubuntu0.24.04.1":          "",
	} {
		c := &myConn{}
		c.greeting([]byte("\x0a" + version + "\x00" + rest))
		if c.system != want {
			t.Errorf("%s: system %q, want %q", version, c.system, want)
		}
	}
}

func TestMySQLAuthError(t *testing.T) {
	checkDBCapture(t, Config{}, "mysql-autherr.bin", nil, nil)
}

// A connection older than the agent: the tracer joins at a command, with
// no database known, and statements prepared before it are "EXECUTE".
func TestMySQLMidStream(t *testing.T) {
	recs := loadDBCapture(t, "mysql-gosql.bin")
	// From the second COM_STMT_EXECUTE of the prepared SELECT on.
	var from int
	for i, r := range recs {
		if r.toServer && strings.Contains(r.data, "\x17\x04\x00\x00\x00") {
			from = i
		}
	}
	got := replayDB(t, Config{}, recs[from:], RoleClient, 4096, nil)
	dbDiff(t, "mid-stream", got, []string{
		"mysql EXECUTE",
		"mysql UPDATE users | UPDATE users SET name = ? WHERE id = ?",
		"mysql SELECT seq_1_to_5000 | SELECT seq, REPEAT(?, ?) FROM seq_1_to_5000",
	})
}

// myPkt builds a packet.
func myPkt(seq byte, body string) string {
	n := len(body)
	return string([]byte{byte(n), byte(n >> 8), byte(n >> 16), seq}) + body
}

const myOKPacket = "\x00\x00\x00\x02\x00\x00\x00"

func TestMySQLMultiResultsAndMariaDBPipelinedExecute(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	// A multi-statement query: two result sets, then a final OK.
	h.send(1, out, myPkt(0, "\x03SELECT 1; UPDATE t SET a = 2"))
	h.send(1, in, myPkt(1, "\x01")+myPkt(2, "\x03def\x00\x00\x00\x011\x00\x0c?\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00")+
		myPkt(3, "\xfe\x00\x00\x0a\x00")+myPkt(4, "\x011")+myPkt(5, "\xfe\x00\x00\x0a\x00"))
	if len(h.got) != 0 {
		t.Fatal("ended before the last result")
	}
	h.send(1, in, myPkt(6, "\x00\x01\x00\x02\x00\x00\x00"))
	// MariaDB sends COM_STMT_EXECUTE for statement -1 (the one being
	// prepared) with the prepare, before its answer.
	h.send(1, out, myPkt(0, "\x16DELETE FROM sessions WHERE id = ?")+myPkt(0, "\x17\xff\xff\xff\xff\x00\x01\x00\x00\x00\x00\x01\x08\x00\x07\x00\x00\x00\x00\x00\x00\x00"))
	h.send(1, in, myPkt(1, "\x00\x07\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00")+myPkt(2, "\x03def\x00\x00\x00\x01?\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00")+myPkt(3, "\xfe\x00\x00\x02\x00"))
	h.send(1, in, myPkt(1, "\x00\x01\x00\x02\x00\x00\x00"))
	// Errors, and a MariaDB progress report that is not one.
	h.send(1, out, myPkt(0, "\x03ALTER TABLE t ADD c INT"))
	h.send(1, in, myPkt(1, "\xff\xff\xff\x01\x01\x02\x00\x00\x00\x00\x00stage"))
	h.send(1, in, myPkt(2, "\xff\x15\x04#42000Access denied"))
	got := dbSummaries(h.got)
	dbDiff(t, "requests", got, []string{
		"mysql SELECT | SELECT ?; UPDATE t SET a = ?",
		"mysql DELETE sessions | DELETE FROM sessions WHERE id = ?",
		"mysql ALTER t | ALTER TABLE t ADD c INT ! 1045 Access denied",
	})
}

// TestMySQLChangeUser: COM_CHANGE_USER starts the session again in the
// database it names (PHP's persistent connections reset them so), and
// without the statements prepared before it.
func TestMySQLChangeUser(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, out, myPkt(0, "\x03SELECT 1"))
	h.send(1, in, myPkt(1, myOKPacket))
	h.send(1, out, myPkt(0, "\x02shop"))
	h.send(1, in, myPkt(1, myOKPacket))
	h.send(1, out, myPkt(0, "\x03SELECT * FROM users"))
	h.send(1, in, myPkt(1, myOKPacket))
	auth := strings.Repeat("\x5a", 20)
	h.send(1, out, myPkt(0, "\x11app2\x00\x14"+auth+"billing\x00\x21\x00mysql_native_password\x00"))
	h.send(1, in, myPkt(1, myOKPacket))
	h.send(1, out, myPkt(0, "\x03SELECT * FROM invoices"))
	h.send(1, in, myPkt(1, myOKPacket))
	got := dbSummaries(h.got)
	dbDiff(t, "change user", got, []string{
		"mysql SELECT | SELECT ?",
		"mysql SELECT users @shop | SELECT * FROM users",
		"mysql SELECT invoices @billing | SELECT * FROM invoices",
	})
}

// TestMySQLIdleKeepsState: a pooled connection idle for ten minutes keeps
// its database.
func TestMySQLIdleKeepsState(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, out, myPkt(0, "\x03SELECT 1"))
	h.send(1, in, myPkt(1, myOKPacket))
	h.send(1, out, myPkt(0, "\x02shop"))
	h.send(1, in, myPkt(1, myOKPacket))
	h.idleFor(10*time.Minute, 2, out, myPkt(0, "\x03SELECT 1"), myPkt(1, myOKPacket))
	h.send(1, out, myPkt(0, "\x03SELECT * FROM users"))
	h.send(1, in, myPkt(1, myOKPacket))
	if got := dbSummary(h.got[len(h.got)-1]); got != "mysql SELECT users @shop | SELECT * FROM users" {
		t.Errorf("after 10 idle minutes: %s", got)
	}
}

func TestMySQLTLSAndCompression(t *testing.T) {
	greeting := loadDBCapture(t, "mysql-gosql.bin")[0].data
	for name, resp := range map[string]string{
		"ssl":      myPkt(1, "\x8c\xaa\x3a\x01\x00\x00\x00\x01\x2d"+strings.Repeat("\x00", 23)),
		"compress": myPkt(1, "\xac\xa2\x3a\x01\x00\x00\x00\x01\x2d"+strings.Repeat("\x00", 23)+"app\x00\x00"),
	} {
		h := newDBHarness(t, 4096, Config{})
		h.send(1, in, greeting)
		h.send(1, out, resp)
		h.send(1, in, myPkt(2, myOKPacket))
		h.send(1, out, myPkt(0, "\x03SELECT 1"))
		h.send(1, in, myPkt(1, myOKPacket))
		if len(h.got) != 0 {
			t.Errorf("%s: parsed what follows: %+v", name, h.got[0])
		}
	}
}

// TestMySQLTLSPlaintext: after the client's SSL request, the TLS
// plaintext (bpf.FlagPlaintext) goes on where it left off: the handshake
// response (sequence id 2) names the database, and the queries are spans
// marked TLS.
func TestMySQLTLSPlaintext(t *testing.T) {
	greeting := loadDBCapture(t, "mysql-gosql.bin")[0].data
	h := newDBHarness(t, 4096, Config{})
	h.send(1, in, greeting)
	h.send(1, out, myPkt(1, "\x8c\xaa\x3a\x01\x00\x00\x00\x01\x2d"+strings.Repeat("\x00", 23)))
	plain := func(dir bpf.Direction, data string) { h.sendKernel(1, dir, data, 0, bpf.FlagPlaintext) }
	plain(out, myPkt(2, "\x8c\xaa\x3a\x01\x00\x00\x00\x01\x2d"+strings.Repeat("\x00", 23)+"app\x00\x00shop\x00"))
	plain(in, myPkt(3, myOKPacket))
	plain(out, myPkt(0, "\x03SELECT * FROM users WHERE id = 7"))
	plain(in, myPkt(1, myOKPacket))
	dbDiff(t, "requests", dbSummaries(h.got), []string{"mariadb SELECT users @shop | SELECT * FROM users WHERE id = ?"})
	if len(h.got) == 1 && !h.got[0].TLS {
		t.Error("not marked TLS")
	}
}

// TestMySQLTLSPlaintextLate: the plaintext begins after the handshake
// (the uprobes came in late): the connection is joined at its first
// command, without its database.
func TestMySQLTLSPlaintextLate(t *testing.T) {
	greeting := loadDBCapture(t, "mysql-gosql.bin")[0].data
	h := newDBHarness(t, 4096, Config{})
	h.send(1, in, greeting)
	h.send(1, out, myPkt(1, "\x8c\xaa\x3a\x01\x00\x00\x00\x01\x2d"+strings.Repeat("\x00", 23)))
	h.sendKernel(1, out, myPkt(0, "\x03SELECT * FROM users WHERE id = 7"), 0, bpf.FlagPlaintext)
	h.sendKernel(1, in, myPkt(1, myOKPacket), 0, bpf.FlagPlaintext)
	dbDiff(t, "requests", dbSummaries(h.got), []string{"mariadb SELECT users | SELECT * FROM users WHERE id = ?"})

	// An SSL request that asked for compressed packets: what follows the
	// authentication is not read.
	h = newDBHarness(t, 4096, Config{})
	h.send(1, in, greeting)
	h.send(1, out, myPkt(1, "\xac\xaa\x3a\x01\x00\x00\x00\x01\x2d"+strings.Repeat("\x00", 23)))
	h.sendKernel(1, out, myPkt(0, "\x03SELECT * FROM users WHERE id = 7"), 0, bpf.FlagPlaintext)
	h.sendKernel(1, in, myPkt(1, myOKPacket), 0, bpf.FlagPlaintext)
	if len(h.got) != 0 {
		t.Errorf("compressed: parsed %+v", h.got[0])
	}
}

func TestMySQLBounded(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, out, myPkt(0, "\x03SELECT 1"))
	for i := range 1000 {
		id := string([]byte{byte(i), byte(i >> 8), 0, 0})
		h.send(1, out, myPkt(0, "\x16SELECT 1"))
		h.send(1, in, myPkt(1, "\x00"+id+"\x00\x00\x00\x00\x00\x00\x00"))
	}
	c := h.tracer.conns[connKey{pid: 7, sock: 1}].parser.(*myConn)
	if len(c.stmts.m) > myMaxStatements || len(c.pending) > myMaxPending {
		t.Errorf("%d statements, %d pending", len(c.stmts.m), len(c.pending))
	}
}

// A result set's first packet (the column count) whose header was
// captured but whose body was cut after its first byte: a length of 2
// made the MariaDB "metadata skipped" check read past what was kept.
func TestMySQLColumnCountCut(t *testing.T) {
	h := newHarness(t, 16)
	query := "\x09\x00\x00\x00\x03SELECT 1"
	h.send(1, in, query)
	h.send(1, in, query)
	// An OK for the first query (11 bytes), then the second's column
	// count: a 2-byte packet of which only the first byte lies in the
	// 16 captured bytes.
	h.send(1, out, "\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"+"\x02\x00\x00\x01\x01\x00"+"rest of the response")
	if len(h.got) != 1 || h.got[0].Protocol != ProtoMySQL {
		t.Fatalf("got %d requests, want the first query's", len(h.got))
	}
}
