package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/internal/testenv"
)

// The database tests run real servers from the distribution's packages
// (postgresql, mariadb-server, redis-server) and real clients in a pod
// with the agent: the database's own command-line clients and Go drivers
// (test/fixtures/dbclient: pgx, go-sql-driver/mysql, go-redis). The
// PostgreSQL and Redis servers run in the pod too, so that their server
// spans show; MariaDB runs outside it.

var (
	dbclientOnce sync.Once
	dbclientBin  string
	dbclientErr  error
)

// dbclient builds test/fixtures/dbclient, a module of its own.
func dbclient(t *testing.T) string {
	t.Helper()
	binaries(t) // makes binDir
	dbclientOnce.Do(func() {
		dir, err := filepath.Abs(filepath.Join("..", "fixtures", "dbclient"))
		if err != nil {
			dbclientErr = err
			return
		}
		dbclientBin = filepath.Join(binDir, "dbclient")
		cmd := exec.Command("go", "build", "-o", dbclientBin, ".")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			dbclientErr = fmt.Errorf("build dbclient: %v\n%s", err, out)
		}
	})
	if dbclientErr != nil {
		t.Fatal(dbclientErr)
	}
	return dbclientBin
}

// runFails runs a command that must fail (a client reporting the error a
// test provokes).
func runFails(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("%v succeeded:\n%s", cmd.Args, out)
	}
	return string(out)
}

// dbSpan finds a span by kind, service (the executable) and name.
func dbSpan(spans []otlptest.Span, kind trace.SpanKind, service, name string, filters ...spanFilter) *otlptest.Span {
	return firstSpan(spans, append(dbFilters(kind, service, name), filters...)...)
}

func dbFilters(kind trace.SpanKind, service, name string) []spanFilter {
	return []spanFilter{withKind(kind),
		func(s otlptest.Span) bool { return s.Name == name && s.Resource["service.name"] == service }}
}

func withQuery(q string) spanFilter {
	return withAttr("db.query.text", q)
}

func mustDBSpan(t *testing.T, spans []otlptest.Span, kind trace.SpanKind, service, name string, filters ...spanFilter) *otlptest.Span {
	t.Helper()
	return mustFirstSpan(t, spans, fmt.Sprintf("%v %q of %s", kind, name, service),
		func(s otlptest.Span) string {
			return fmt.Sprintf("%v %v %q %v", s.Resource["service.name"], s.Kind, s.Name, s.Attributes["db.query.text"])
		},
		append(dbFilters(kind, service, name), filters...)...)
}

// expectDB checks a client span's database attributes, its peer, and
// its status.
func expectDB(t *testing.T, s *otlptest.Span, system string, port int, attrs map[string]any) {
	t.Helper()
	want := map[string]any{"db.system.name": system, "server.address": "127.0.0.1", "server.port": int64(port)}
	for k, v := range attrs {
		want[k] = v
	}
	for k, v := range want {
		if v == nil {
			if got, ok := s.Attributes[k]; ok {
				t.Errorf("%s: %s = %v, want none", s.Name, k, got)
			}
			continue
		}
		if got := s.Attributes[k]; got != v {
			t.Errorf("%s: %s = %v (%T), want %v (%T)", s.Name, k, got, got, v, v)
		}
	}
	code, failed := want["db.response.status_code"]
	switch {
	case failed && code != nil:
		if s.StatusCode != codes.Error || s.Attributes["error.type"] != code {
			t.Errorf("%s: status %v, error.type %v; want Error, %v", s.Name, s.StatusCode, s.Attributes["error.type"], code)
		}
	case s.StatusCode == codes.Error:
		t.Errorf("%s: error status %q", s.Name, s.StatusMessage)
	}
	if d := s.End.Sub(s.Start); d <= 0 || d > 10*time.Second {
		t.Errorf("%s: duration %v", s.Name, d)
	}
}

// expectDBMetric waits for a db.client.operation.duration point of a
// service and operation.
func expectDBMetric(t *testing.T, rcv *otlptest.Receiver, service, system, op string) {
	t.Helper()
	match := func(p otlptest.MetricPoint) bool {
		return p.Name == "db.client.operation.duration" && p.Resource["service.name"] == service &&
			p.Attributes["db.system.name"] == system && p.Attributes["db.operation.name"] == op && p.Count > 0
	}
	points := rcv.WaitMetric(t, 15*time.Second, func(m []otlptest.MetricPoint) bool {
		for _, p := range m {
			if match(p) {
				return true
			}
		}
		return false
	})
	for _, p := range points {
		if !match(p) {
			continue
		}
		if p.Unit != "s" {
			t.Errorf("unit %q", p.Unit)
		}
		if _, ok := p.Attributes["db.query.text"]; ok {
			t.Error("db.query.text on a metric: cardinality")
		}
		return
	}
	t.Errorf("no db.client.operation.duration for %s %s %s", service, system, op)
}

// chmodTempParents lets a server that runs as another user reach dir,
// a t.TempDir (whose parent the testing package makes private).
func chmodTempParents(t *testing.T, dir string, uid, gid int) {
	t.Helper()
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
}

// postgresBin finds a PostgreSQL server program; Debian keeps them out of
// PATH.
func postgresBin(t *testing.T, name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(matches) == 0 {
		testenv.Skip(t, name+" is not installed (.ci/run installs postgresql)")
	}
	return matches[len(matches)-1]
}

// TestPostgreSQL: a PostgreSQL server in the pod; pgx (dbclient) and psql
// clients in the pod, one psql session opened before the agent started.
// postgresCluster makes a PostgreSQL cluster (user postgres, password
// "secret") and returns the command that serves it on port, with settings
// (-c name=value) added, as the postgres user.
func postgresCluster(t *testing.T, port int, settings ...string) []string {
	runuser := testenv.LookPath(t, "runuser")
	initdb, postgres := postgresBin(t, "initdb"), postgresBin(t, "postgres")
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		testenv.Skip(t, "no postgres user (.ci/run installs postgresql)")
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)

	data, sock := t.TempDir(), t.TempDir()
	chmodTempParents(t, data, uid, gid)
	chmodTempParents(t, sock, uid, gid)
	pwfile := filepath.Join(sock, "pw")
	os.WriteFile(pwfile, []byte("secret\n"), 0o644)
	run(t, exec.Command(runuser, "-u", "postgres", "--", initdb, "-D", data, "-U", "postgres", "-A", "scram-sha-256", "--pwfile", pwfile))
	args := []string{runuser, "-u", "postgres", "--", postgres, "-D", data, "-p", fmt.Sprint(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + sock}
	for _, s := range settings {
		args = append(args, "-c", s)
	}
	return args
}

func TestPostgreSQL(t *testing.T) {
	privileged(t)
	psql := testenv.LookPath(t, "psql")
	client := dbclient(t)
	rcv := otlptest.Start(t)
	pod := newPod(t)
	port := freePort(t)
	server := postgresCluster(t, port)
	start(t, pod.command(server[0], server[1:]...))
	waitListening(t, port)
	psqlCmd := func(args ...string) *exec.Cmd {
		cmd := pod.command(psql, append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "postgres", "-v", "ON_ERROR_STOP=0"}, args...)...)
		cmd.Env = append(os.Environ(), "PGPASSWORD=secret")
		return cmd
	}
	run(t, psqlCmd("-c", "CREATE DATABASE shop"))

	// A session older than the agent.
	session := start(t, psqlCmd("-d", "shop"))
	fmt.Fprintln(session.stdin, "SELECT 'warm' AS up;")
	session.waitOutput(t, "warm", 1, 10*time.Second)

	agent := startAgent(t, pod, agentEnv(rcv))

	fmt.Fprintln(session.stdin, "SELECT count(*) AS older FROM pg_class WHERE relname = 'mid_stream';")
	session.waitOutput(t, "older", 1, 10*time.Second)
	dsn := fmt.Sprintf("postgres://postgres:secret@127.0.0.1:%d/shop?sslmode=disable", port)
	if out := run(t, pod.command(client, "-postgres", dsn)); !strings.Contains(out, "done") {
		t.Fatalf("dbclient: %s", out)
	}
	run(t, psqlCmd("-d", "shop", "-c", "INSERT INTO users (id, name) VALUES (42, 'psql') ON CONFLICT DO NOTHING"))
	runFails(t, psqlCmd("-d", "shop", "-c", "SELECT * FROM nope WHERE id = 1"))

	spans := rcv.WaitSpans(t, 30*time.Second, func(s []otlptest.Span) bool {
		return dbSpan(s, trace.SpanKindClient, "dbclient", "SELECT") != nil &&
			dbSpan(s, trace.SpanKindClient, "psql", "SELECT nope") != nil &&
			dbSpan(s, trace.SpanKindClient, "psql", "SELECT pg_class") != nil &&
			dbSpan(s, trace.SpanKindServer, "postgres", "INSERT users", withQuery("INSERT INTO users (id, name) VALUES (?, ?) ON CONFLICT DO NOTHING")) != nil
	})
	if t.Failed() {
		t.Logf("agent log:\n%s", agent.output())
		return
	}

	t.Run("pgx", func(t *testing.T) {
		s := mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT users", withQuery("SELECT name FROM users WHERE id = $1"))
		expectDB(t, s, "postgresql", port, map[string]any{"db.operation.name": "SELECT", "db.collection.name": "users", "db.namespace": "shop"})
		expectResource(t, s, "dbclient")
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT users", withQuery("SELECT id, name FROM users WHERE name = ? AND id IN (?)"))
		expectDB(t, s, "postgresql", port, nil)
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "INSERT users", withQuery("INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"))
		expectDB(t, s, "postgresql", port, map[string]any{"db.operation.name": "INSERT", "db.collection.name": "users", "db.query.summary": "INSERT users"})
		// A join: named by its summary (db.query.summary), both tables;
		// no one collection.
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT users users", withQuery("SELECT u.name FROM users u JOIN users v ON v.id = u.id WHERE u.id = $1"))
		expectDB(t, s, "postgresql", port, map[string]any{"db.operation.name": "SELECT", "db.collection.name": nil, "db.query.summary": "SELECT users users"})
		// The missing table fails at Parse, before any Execute.
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT missing_table")
		expectDB(t, s, "postgresql", port, map[string]any{"db.response.status_code": "42P01", "db.query.text": "SELECT * FROM missing_table WHERE id = $1"})
		if !strings.Contains(s.StatusMessage, "does not exist") {
			t.Errorf("status message %q", s.StatusMessage)
		}
		// The pipelined batch: three spans.
		for _, name := range []string{"INSERT users", "UPDATE users", "DELETE users"} {
			mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", name)
		}
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT", withQuery("SELECT g, repeat(?, ?) FROM generate_series(?, ?) AS g"))
		expectDB(t, s, "postgresql", port, map[string]any{"db.collection.name": nil, "db.query.summary": "SELECT"})
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT", withQuery("SELECT ?/?"))
		expectDB(t, s, "postgresql", port, map[string]any{"db.response.status_code": "22012"})
	})

	t.Run("psql", func(t *testing.T) {
		s := mustDBSpan(t, spans, trace.SpanKindClient, "psql", "SELECT nope")
		expectDB(t, s, "postgresql", port, map[string]any{"db.response.status_code": "42P01", "db.query.text": "SELECT * FROM nope WHERE id = ?", "db.namespace": "shop"})
		s = mustDBSpan(t, spans, trace.SpanKindClient, "psql", "INSERT users")
		expectDB(t, s, "postgresql", port, map[string]any{"db.query.text": "INSERT INTO users (id, name) VALUES (?, ?) ON CONFLICT DO NOTHING"})
		expectResource(t, s, "psql")
	})

	t.Run("session older than the agent", func(t *testing.T) {
		s := mustDBSpan(t, spans, trace.SpanKindClient, "psql", "SELECT pg_class")
		// Its startup message was before the agent: no database known.
		expectDB(t, s, "postgresql", port, map[string]any{"db.query.text": "SELECT count(*) AS older FROM pg_class WHERE relname = ?;", "db.namespace": nil})
		if dbSpan(spans, trace.SpanKindClient, "psql", "SELECT", withQuery("SELECT ? AS up;")) != nil {
			t.Error("span for a query made before the agent started")
		}
	})

	t.Run("server", func(t *testing.T) {
		s := mustDBSpan(t, spans, trace.SpanKindServer, "postgres", "SELECT users", withQuery("SELECT name FROM users WHERE id = $1"))
		if s.Attributes["db.system.name"] != "postgresql" || s.Attributes["server.port"] != int64(port) || s.Attributes["db.namespace"] != "shop" {
			t.Errorf("server span attributes %v", s.Attributes)
		}
		if name := s.Resource["process.executable.name"]; name != "postgres" {
			t.Errorf("server span of %v", name)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		expectDBMetric(t, rcv, "dbclient", "postgresql", "SELECT")
	})
}

// TestMariaDB: a MariaDB server outside the pod; go-sql-driver/mysql
// (dbclient) and the mariadb client in the pod. Its greeting says MariaDB:
// db.system.name is "mariadb", though the protocol is MySQL's.
func TestMariaDB(t *testing.T) {
	privileged(t)
	mariadbd := testenv.LookPath(t, "mariadbd")
	installDB := testenv.LookPath(t, "mariadb-install-db")
	mariadb := testenv.LookPath(t, "mariadb")
	client := dbclient(t)

	data := t.TempDir()
	run(t, exec.Command(installDB, "--no-defaults", "--datadir="+data, "--user=root", "--auth-root-authentication-method=normal"))
	port := freePort(t)
	sock := filepath.Join(data, "mysqld.sock")
	start(t, exec.Command(mariadbd, "--no-defaults", "--datadir="+data, "--user=root", fmt.Sprintf("--port=%d", port),
		"--bind-address=127.0.0.1", "--socket="+sock, "--skip-log-bin", "--pid-file="+filepath.Join(data, "mysqld.pid")))
	waitListening(t, port)
	run(t, exec.Command(mariadb, "--no-defaults", "-S", sock, "-u", "root", "-e",
		"CREATE DATABASE shop; CREATE USER 'app'@'%' IDENTIFIED BY 'secret'; CREATE USER 'app'@'localhost' IDENTIFIED BY 'secret'; "+
			"GRANT ALL ON *.* TO 'app'@'%'; GRANT ALL ON *.* TO 'app'@'localhost';"))

	rcv := otlptest.Start(t)
	pod := newPod(t)
	agent := startAgent(t, pod, agentEnv(rcv))

	if out := run(t, pod.command(client, "-mysql", fmt.Sprintf("app:secret@tcp(127.0.0.1:%d)/shop", port))); !strings.Contains(out, "done") {
		t.Fatalf("dbclient: %s", out)
	}
	cli := func(sql string) *exec.Cmd {
		return pod.command(mariadb, "--no-defaults", "-h", "127.0.0.1", "-P", fmt.Sprint(port), "-u", "app", "-psecret", "--skip-ssl", "shop", "-e", sql)
	}
	runFails(t, cli("SELECT * FROM nope WHERE id = 1"))
	run(t, cli("INSERT INTO users (id, name) VALUES (42, 'cli') ON DUPLICATE KEY UPDATE name = 'cli'"))

	spans := rcv.WaitSpans(t, 30*time.Second, func(s []otlptest.Span) bool {
		return dbSpan(s, trace.SpanKindClient, "dbclient", "SELECT seq_1_to_5000") != nil &&
			dbSpan(s, trace.SpanKindClient, "mariadb", "SELECT nope") != nil &&
			dbSpan(s, trace.SpanKindClient, "mariadb", "INSERT users") != nil
	})
	if t.Failed() {
		t.Logf("agent log:\n%s", agent.output())
		return
	}

	t.Run("go-sql-driver", func(t *testing.T) {
		// Prepared, executed by statement id.
		s := mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT users", withQuery("SELECT name FROM users WHERE id = ?"))
		expectDB(t, s, "mariadb", port, map[string]any{"db.operation.name": "SELECT", "db.collection.name": "users", "db.namespace": "shop"})
		expectResource(t, s, "dbclient")
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "INSERT users")
		expectDB(t, s, "mariadb", port, map[string]any{"db.query.text": "INSERT INTO users (id, name) VALUES (?, ?) ON DUPLICATE KEY UPDATE name = VALUES(name)"})
		// Text protocol, literals replaced.
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "UPDATE users")
		expectDB(t, s, "mariadb", port, map[string]any{"db.query.text": "UPDATE users SET name = ? WHERE id = ?"})
		// The same error from COM_QUERY and from COM_STMT_PREPARE.
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT missing_table", withQuery("SELECT * FROM missing_table"))
		expectDB(t, s, "mariadb", port, map[string]any{"db.response.status_code": "1146"})
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT missing_table", withQuery("SELECT * FROM missing_table WHERE id = ?"))
		expectDB(t, s, "mariadb", port, map[string]any{"db.response.status_code": "1146"})
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SELECT seq_1_to_5000")
		expectDB(t, s, "mariadb", port, map[string]any{"db.query.text": "SELECT seq, REPEAT(?, ?) FROM seq_1_to_5000"})
	})

	t.Run("mariadb client", func(t *testing.T) {
		s := mustDBSpan(t, spans, trace.SpanKindClient, "mariadb", "SELECT nope")
		expectDB(t, s, "mariadb", port, map[string]any{"db.response.status_code": "1146", "db.query.text": "SELECT * FROM nope WHERE id = ?", "db.namespace": "shop"})
		if !strings.Contains(s.StatusMessage, "doesn't exist") {
			t.Errorf("status message %q", s.StatusMessage)
		}
		s = mustDBSpan(t, spans, trace.SpanKindClient, "mariadb", "INSERT users")
		expectDB(t, s, "mariadb", port, map[string]any{"db.query.text": "INSERT INTO users (id, name) VALUES (?, ?) ON DUPLICATE KEY UPDATE name = ?"})
	})

	t.Run("nothing from the server outside the pod", func(t *testing.T) {
		for _, s := range spans {
			if s.Kind == trace.SpanKindServer {
				t.Errorf("server span: %v %s", s.Resource["service.name"], s.Name)
			}
		}
	})

	t.Run("metrics", func(t *testing.T) {
		expectDBMetric(t, rcv, "dbclient", "mariadb", "SELECT")
	})
}

// TestRedis: a Redis server in the pod; go-redis (dbclient, RESP3),
// redis-cli and redis-benchmark in the pod, with keys on the spans.
func TestRedis(t *testing.T) {
	privileged(t)
	cli := testenv.LookPath(t, "redis-cli")
	bench := testenv.LookPath(t, "redis-benchmark")
	client := dbclient(t)

	rcv := otlptest.Start(t)
	pod, port := redisPod(t)
	agent := startAgent(t, pod, agentEnv(rcv, "PODTRACER_REDIS_KEYS=true"))

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if out := run(t, pod.command(client, "-redis", addr)); !strings.Contains(out, "done") {
		t.Fatalf("dbclient: %s", out)
	}
	run(t, pod.command(cli, "-p", fmt.Sprint(port), "SET", "session:7", "token-value"))
	if out := run(t, pod.command(cli, "-p", fmt.Sprint(port), "LPUSH", "session:7", "x")); !strings.Contains(out, "WRONGTYPE") {
		t.Fatalf("redis-cli LPUSH: %s", out)
	}
	run(t, pod.command(bench, "-p", fmt.Sprint(port), "-n", "50", "-c", "1", "-P", "5", "-t", "set,get", "-q"))

	spans := rcv.WaitSpans(t, 30*time.Second, func(s []otlptest.Span) bool {
		n := 0
		for _, x := range s {
			if x.Resource["service.name"] == "redis-benchmark" && x.Name == "GET" {
				n++
			}
		}
		return dbSpan(s, trace.SpanKindClient, "dbclient", "DEL") != nil &&
			dbSpan(s, trace.SpanKindClient, "redis-cli", "LPUSH") != nil && n >= 50
	})
	if t.Failed() {
		t.Logf("agent log:\n%s", agent.output())
		return
	}

	t.Run("go-redis", func(t *testing.T) {
		s := mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SET", withQuery("SET user:1 ?"))
		expectDB(t, s, "redis", port, map[string]any{"db.operation.name": "SET", "db.namespace": "0", "db.collection.name": nil})
		expectResource(t, s, "dbclient")
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "HGETALL")
		expectDB(t, s, "redis", port, map[string]any{"db.query.text": "HGETALL user:1:profile"})
		// Pipelined: a span each.
		mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "SET", withQuery("SET user:2 ?"))
		mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "GET", withQuery("GET user:2"))
		// MULTI/EXEC: one span.
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "MULTI INCR")
		expectDB(t, s, "redis", port, map[string]any{"db.query.text": "INCR counter; INCR visits"})
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "LPUSH")
		expectDB(t, s, "redis", port, map[string]any{"db.response.status_code": "WRONGTYPE"})
		s = mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "NOSUCHCMD")
		expectDB(t, s, "redis", port, map[string]any{"db.response.status_code": "ERR"})
		// 20 kB values, far beyond the capture prefix.
		mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "GET", withQuery("GET big"))
		mustDBSpan(t, spans, trace.SpanKindClient, "dbclient", "DEL", withQuery("DEL user:1"))
	})

	t.Run("redis-cli", func(t *testing.T) {
		s := mustDBSpan(t, spans, trace.SpanKindClient, "redis-cli", "SET")
		expectDB(t, s, "redis", port, map[string]any{"db.query.text": "SET session:7 ?"})
		s = mustDBSpan(t, spans, trace.SpanKindClient, "redis-cli", "LPUSH")
		expectDB(t, s, "redis", port, map[string]any{"db.response.status_code": "WRONGTYPE"})
	})

	t.Run("redis-benchmark", func(t *testing.T) {
		sets, gets := 0, 0
		for _, s := range spans {
			if s.Resource["service.name"] != "redis-benchmark" || s.Kind != trace.SpanKindClient {
				continue
			}
			switch s.Name {
			case "SET":
				sets++
			case "GET":
				gets++
			}
		}
		if sets < 50 || gets < 50 {
			t.Errorf("%d SET and %d GET spans of redis-benchmark, want 50 each", sets, gets)
		}
	})

	t.Run("server", func(t *testing.T) {
		// Debian's redis-server is a link to redis-check-rdb: the service
		// goes by the name it was run as, the executable by its own.
		s := mustDBSpan(t, spans, trace.SpanKindServer, "redis-server", "SET", withQuery("SET user:1 ?"))
		if s.Resource["process.executable.name"] != "redis-check-rdb" || s.Resource["process.executable.path"] != "/usr/bin/redis-check-rdb" {
			t.Errorf("server resource %v", s.Resource)
		}
		if s.Attributes["db.system.name"] != "redis" || s.Attributes["server.port"] != int64(port) || s.Attributes["db.namespace"] != "0" {
			t.Errorf("server span attributes %v", s.Attributes)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		expectDBMetric(t, rcv, "dbclient", "redis", "GET")
	})
}

// redisPod starts redis-server, without persistence, in a new pod on a
// free port of the loopback, and returns the pod and the port once it
// listens.
func redisPod(t *testing.T) (*testPod, int) {
	t.Helper()
	server := testenv.LookPath(t, "redis-server")
	pod := newPod(t)
	port := freePort(t)
	start(t, pod.command(server, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir()))
	waitListening(t, port)
	return pod, port
}
