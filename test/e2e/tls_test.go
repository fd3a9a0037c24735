package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/internal/kernel"
	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/internal/testenv"
	"github.com/podtracer/podtracer/webhook"
)

// tlsClient is a Python HTTPS client (libssl's SSL_write_ex and
// SSL_read_ex) that waits for a file to exist (the agent has put its
// uprobes in), then sends three requests on one keep-alive connection.
// argv: the file, the port.
const tlsClient = `
import http.client, os, ssl, sys, time
print("pid", os.getpid(), flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
c = http.client.HTTPSConnection("localhost", int(sys.argv[2]), context=ssl._create_unverified_context())
for path in ("/hello.txt", "/hello.txt?x=1", "/missing"):
    c.request("GET", path)
    r = c.getresponse(); r.read()
    print(path, r.status, flush=True)
c.close()
`

// TestTLS: nginx serves HTTPS in the pod (libssl's SSL_read and
// SSL_write), and a Python client (HTTP/1.1) and curl (HTTP/2) call it. The agent reads the
// plaintext through its uprobes: server and client spans with url.scheme
// https, as for plain HTTP; the TLS records themselves give nothing.
func TestTLS(t *testing.T) {
	privileged(t)
	python := testenv.LookPath(t, "python3")
	curl := testenv.LookPath(t, "curl")
	rcv := otlptest.Start(t)
	pod := newPod(t)

	www := t.TempDir()
	os.WriteFile(filepath.Join(www, "hello.txt"), []byte("hello over tls\n"), 0o644)
	port := startNginxTLS(t, pod, www, "ssl http2")

	agent := startAgent(t, pod, agentEnv(rcv))
	// nginx's master and worker map libssl: the first scan puts the
	// uprobes on both.
	agent.waitOutput(t, `msg="reading TLS plaintext"`, 2, 10*time.Second)

	ready := filepath.Join(t.TempDir(), "ready")
	client := start(t, pod.command(python, "-c", tlsClient, ready, fmt.Sprint(port)))
	waitProbed(t, agent, client)
	os.WriteFile(ready, nil, 0o644)
	client.waitOutput(t, "/missing 404", 1, 10*time.Second)
	// curl lives for one request: its handshake is what tells the agent
	// of it, and its own span may come too late; nginx's does not. It
	// speaks HTTP/2 (ALPN), the Python client HTTP/1.1.
	run(t, pod.command(curl, "-sk", "--http2", "-o", "/dev/null", fmt.Sprintf("https://localhost:%d/from-curl", port)))

	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		return find(s, trace.SpanKindServer, "/from-curl") != nil && find(s, trace.SpanKindServer, "/missing") != nil &&
			find(s, trace.SpanKindClient, "/missing") != nil
	})
	for _, path := range []string{"/hello.txt", "/missing", "/from-curl"} {
		status := map[string]int64{"/hello.txt": 200, "/missing": 404, "/from-curl": 404}[path]
		s := mustFind(t, spans, trace.SpanKindServer, path)
		expect(t, s, map[string]any{"url.scheme": "https", "http.response.status_code": status, "server.port": int64(port),
			"network.peer.address": "127.0.0.1"})
		expectResource(t, s, "nginx")
	}
	expect(t, mustFind(t, spans, trace.SpanKindServer, "/missing"), map[string]any{"network.protocol.version": "1.1"})
	expect(t, mustFind(t, spans, trace.SpanKindServer, "/from-curl"), map[string]any{"network.protocol.version": "2"})
	c := mustFind(t, spans, trace.SpanKindClient, "/missing")
	expect(t, c, map[string]any{"url.full": fmt.Sprintf("https://localhost:%d/missing", port), "http.response.status_code": int64(404),
		"server.address": "localhost", "server.port": int64(port)})
	hello := 0
	for _, s := range spans {
		if s.Kind == trace.SpanKindServer && urlPath(s) == "/hello.txt" {
			hello++
		}
	}
	if hello != 2 {
		t.Errorf("%d server spans of /hello.txt, want 2", hello)
	}
	for _, s := range rcv.Spans() {
		if s.Attributes["url.scheme"] == "http" {
			t.Errorf("a span of plain HTTP: %s %v", s.Name, s.Attributes)
		}
	}
	rcv.WaitMetric(t, 10*time.Second, func(ps []otlptest.MetricPoint) bool {
		for _, p := range ps {
			if p.Name == "http.server.request.duration" && p.Attributes["url.scheme"] == "https" &&
				p.Attributes["http.response.status_code"] == int64(200) && p.Count >= 2 {
				return true
			}
		}
		return false
	})
}

// tlsClientAtStart is a Python HTTPS client that makes its one request
// at start, as an application's first connection is made (a database
// pool, a client of another service): its ssl module imported, then a
// second of other start-up work. argv: the port, the path.
const tlsClientAtStart = `
import http.client, os, ssl, sys, time
time.sleep(1)
c = http.client.HTTPSConnection("localhost", int(sys.argv[1]), context=ssl._create_unverified_context())
c.request("GET", sys.argv[2])
r = c.getresponse(); r.read()
print(sys.argv[2], r.status, flush=True)
`

// waitProbed waits until the agent has put its uprobes on client, a
// process whose first line of output is "pid N" (its PID in the pod).
func waitProbed(t *testing.T, agent, client *process) {
	t.Helper()
	client.waitOutput(t, "\n", 1, 10*time.Second)
	var pid int
	fmt.Sscanf(client.output(), "pid %d", &pid)
	agent.waitOutput(t, fmt.Sprintf(`msg="reading TLS plaintext" pid=%d `, pid), 1, 10*time.Second)
}

// TestTLSAtStart: programs started after the agent (with a native sidecar,
// every program of the pod's) are probed as they start, so that their
// first TLS connections are read: a Python client (libssl, which the
// dynamic loader maps a moment after the exec) and a Go client (its own
// crypto/tls), each making its first request a moment after its start.
// Without the exec's event they were found at the next scan (every 2 s)
// or at their first handshake, which is too late for the connection it
// begins.
func TestTLSAtStart(t *testing.T) {
	privileged(t)
	skipBefore610(t)
	python := testenv.LookPath(t, "python3")
	_, httpapp := binaries(t)
	rcv := otlptest.Start(t)
	pod := newPod(t)

	port := startNginxTLS(t, pod, t.TempDir(), "ssl")
	agent := startAgent(t, pod, agentEnv(rcv))
	agent.waitOutput(t, `msg="reading TLS plaintext"`, 2, 10*time.Second)

	// Three rounds: a scan may find one in time by chance, not all.
	for round := range 3 {
		py := fmt.Sprintf("/python-first-%d", round)
		client := start(t, pod.command(python, "-c", tlsClientAtStart, fmt.Sprint(port), py))
		goClient := start(t, pod.command(httpapp, "-client", fmt.Sprintf("https://localhost:%d", port)))
		time.Sleep(time.Second) // its start-up work, as the Python client's
		fmt.Fprintf(goClient.stdin, "GET /go-first-%d\n", round)
		client.waitOutput(t, py+" 404", 1, 10*time.Second)
		goClient.waitOutput(t, "404", 1, 10*time.Second)
	}
	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		for round := range 3 {
			if find(s, trace.SpanKindClient, fmt.Sprintf("/python-first-%d", round)) == nil ||
				find(s, trace.SpanKindClient, fmt.Sprintf("/go-first-%d", round)) == nil {
				return false
			}
		}
		return true
	})
	for round := range 3 {
		for path, process := range map[string]string{fmt.Sprintf("/python-first-%d", round): "python3", fmt.Sprintf("/go-first-%d", round): "httpapp"} {
			c := mustFind(t, spans, trace.SpanKindClient, path)
			expect(t, c, map[string]any{"url.full": fmt.Sprintf("https://localhost:%d%s", port, path), "http.response.status_code": int64(404)})
			if got := c.Resource["service.name"]; got != process {
				t.Errorf("the client span of %s is %v's, want %s's", path, got, process)
			}
			mustFind(t, spans, trace.SpanKindServer, path)
		}
	}
}

// startNginxTLS starts nginx in pod, serving www over TLS (listen's
// parameters: "ssl", "ssl http2") with a self-signed certificate, and
// returns its port once it listens.
func startNginxTLS(t *testing.T, pod *testPod, www, listen string) int {
	t.Helper()
	nginx := testenv.LookPath(t, "nginx")
	cert, key := selfSigned(t, testenv.LookPath(t, "openssl"))
	port := freePort(t)
	conf := nginxTLSConf(t, www, port, cert, key, fmt.Sprintf("listen 127.0.0.1:%d %s;", port, listen))
	start(t, pod.command(nginx, "-c", conf))
	waitListening(t, port)
	return port
}

// nginxTLSConf is nginxConf for port with listen (its directives) in
// place of its listen directive, and the certificate and key.
func nginxTLSConf(t *testing.T, www string, port int, cert, key, listen string) string {
	conf := nginxConf(t, www, port)
	b, _ := os.ReadFile(conf)
	b = []byte(strings.Replace(string(b), fmt.Sprintf("listen 127.0.0.1:%d;", port),
		fmt.Sprintf("%s\n\t\tssl_certificate %s;\n\t\tssl_certificate_key %s;", listen, cert, key), 1))
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return conf
}

// selfSigned writes a key and a self-signed certificate for localhost.
func selfSigned(t *testing.T, openssl string) (cert, key string) {
	t.Helper()
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if out, err := exec.Command(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
		"-keyout", key, "-out", cert).CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v %s", err, out)
	}
	return cert, key
}

// TestPostgreSQLTLS: PostgreSQL asks for TLS inside its protocol (an
// SSLRequest, then the handshake): a psql session with sslmode=require and
// its server, both libpq's and the server's libssl, give their spans from
// the plaintext.
func TestPostgreSQLTLS(t *testing.T) {
	privileged(t)
	psql := testenv.LookPath(t, "psql")
	openssl := testenv.LookPath(t, "openssl")
	cert, key := selfSigned(t, openssl)
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		testenv.Skip(t, "no postgres user (.ci/run installs postgresql)")
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	chmodTempParents(t, filepath.Dir(cert), uid, gid)
	for _, f := range []string{cert, key} {
		os.Chown(f, uid, gid)
		os.Chmod(f, 0o600)
	}
	rcv := otlptest.Start(t)
	pod := newPod(t)
	port := freePort(t)
	server := postgresCluster(t, port, "ssl=on", "ssl_cert_file="+cert, "ssl_key_file="+key)
	start(t, pod.command(server[0], server[1:]...))
	waitListening(t, port)
	agent := startAgent(t, pod, agentEnv(rcv))

	cmd := pod.command(psql, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require", port))
	cmd.Env = append(os.Environ(), "PGPASSWORD=secret")
	session := start(t, cmd)
	fmt.Fprintln(session.stdin, "SELECT 'ready' AS up;")
	session.waitOutput(t, "ready", 1, 10*time.Second)
	// psql's libssl and its server's (a process forked for the session)
	// have the uprobes within a scan: the handshake told the agent of both.
	agent.waitOutput(t, `msg="reading TLS plaintext" pid=`, 1, 10*time.Second)
	agent.waitOutput(t, "process=psql", 1, 10*time.Second)
	time.Sleep(3 * time.Second)
	fmt.Fprintln(session.stdin, "SELECT count(*) AS over_tls FROM pg_class WHERE relname = 'pg_type';")
	session.waitOutput(t, "over_tls", 1, 10*time.Second)

	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		return dbSpan(s, trace.SpanKindClient, "psql", "SELECT pg_class") != nil && dbSpan(s, trace.SpanKindServer, "postgres", "SELECT pg_class") != nil
	})
	for _, kind := range []trace.SpanKind{trace.SpanKindClient, trace.SpanKindServer} {
		service := map[trace.SpanKind]string{trace.SpanKindClient: "psql", trace.SpanKindServer: "postgres"}[kind]
		s := mustDBSpan(t, spans, kind, service, "SELECT pg_class")
		expectDB(t, s, "postgresql", port, map[string]any{"db.query.text": "SELECT count(*) AS over_tls FROM pg_class WHERE relname = ?;"})
	}
}

// TestMariaDBTLS: MySQL's protocol asks for TLS inside itself (an SSL
// request after the server's greeting): the mariadb client with --ssl and
// its server, both on libssl, give their spans from the plaintext. The
// client's first statement sleeps, so that the uprobes its handshake asked
// for are in before the second.
func TestMariaDBTLS(t *testing.T) {
	privileged(t)
	mariadbd := testenv.LookPath(t, "mariadbd")
	installDB := testenv.LookPath(t, "mariadb-install-db")
	mariadb := testenv.LookPath(t, "mariadb")
	cert, key := selfSigned(t, testenv.LookPath(t, "openssl"))

	data := t.TempDir()
	run(t, exec.Command(installDB, "--no-defaults", "--datadir="+data, "--user=root", "--auth-root-authentication-method=normal"))
	rcv := otlptest.Start(t)
	pod := newPod(t)
	port := freePort(t)
	sock := filepath.Join(data, "mysqld.sock")
	start(t, pod.command(mariadbd, "--no-defaults", "--datadir="+data, "--user=root", fmt.Sprintf("--port=%d", port),
		"--bind-address=127.0.0.1", "--socket="+sock, "--skip-log-bin", "--pid-file="+filepath.Join(data, "mysqld.pid"),
		"--ssl-cert="+cert, "--ssl-key="+key))
	waitListening(t, port)
	run(t, exec.Command(mariadb, "--no-defaults", "-S", sock, "-u", "root", "-e",
		"CREATE DATABASE shop; CREATE USER 'app'@'localhost' IDENTIFIED BY 'secret'; GRANT ALL ON *.* TO 'app'@'localhost';"))
	agent := startAgent(t, pod, agentEnv(rcv))
	agent.waitOutput(t, "process=mariadbd", 1, 10*time.Second)

	out := run(t, pod.command(mariadb, "--no-defaults", "-h", "127.0.0.1", "-P", fmt.Sprint(port), "-u", "app", "-psecret", "--ssl", "shop", "-e",
		"SELECT SLEEP(3); SHOW STATUS LIKE 'Ssl_version'; SELECT 'over tls' AS tls_query FROM DUAL WHERE 1 = 1"))
	if !strings.Contains(out, "TLSv1") || !strings.Contains(out, "over tls") {
		t.Fatalf("the client did not use TLS, or failed: %s", out)
	}
	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		return dbSpan(s, trace.SpanKindClient, "mariadb", "SELECT DUAL") != nil && dbSpan(s, trace.SpanKindServer, "mariadbd", "SELECT DUAL") != nil
	})
	for _, kind := range []trace.SpanKind{trace.SpanKindClient, trace.SpanKindServer} {
		service := map[trace.SpanKind]string{trace.SpanKindClient: "mariadb", trace.SpanKindServer: "mariadbd"}[kind]
		s := mustDBSpan(t, spans, kind, service, "SELECT DUAL", withQuery("SELECT ? AS tls_query FROM DUAL WHERE ? = ?"))
		expectDB(t, s, "mariadb", port, nil)
	}
	// The server was probed before the client came: its side read the
	// client's handshake response (sequence id 2, after the SSL request)
	// as plaintext, and knows the session's database.
	s := mustDBSpan(t, spans, trace.SpanKindServer, "mariadbd", "SELECT DUAL")
	expectDB(t, s, "mariadb", port, map[string]any{"db.namespace": "shop"})
}

// TestMissingCapability: without CAP_PERFMON the agent says that a
// capability is missing, and does not take the refusal for a kernel
// without the socket tracepoints (falling back to the syscall ones,
// which run on every syscall of the node and need it too).
func TestMissingCapability(t *testing.T) {
	privileged(t)
	setpriv := testenv.LookPath(t, "setpriv")
	caps := "-all"
	for _, c := range webhook.Capabilities {
		if c != "PERFMON" {
			caps += ",+" + strings.ToLower(string(c))
		}
	}
	agentBin, _ := binaries(t)
	cmd := exec.Command(setpriv, "--bounding-set="+caps, agentBin)
	cmd.Env = append(os.Environ(), "PODTRACER_LOG_LEVEL=debug", "KUBERNETES_SERVICE_HOST=")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the agent ran without CAP_PERFMON:\n%s", out)
	}
	if strings.Contains(string(out), "socket tracepoints unavailable") || !strings.Contains(string(out), "CAP_PERFMON") ||
		!strings.Contains(string(out), "operation not permitted") {
		t.Errorf("want the capability's error, not a fallback:\n%s", out)
	}
}

// TestLeastCapabilities: the agent with only the capabilities the webhook
// gives its sidecar (webhook.Capabilities; root, every other one dropped)
// loads its programs, probes a neighbour's libssl and a Go neighbour's
// crypto/tls, and traces plain and TLS requests alike.
func TestLeastCapabilities(t *testing.T) {
	privileged(t)
	nginx := testenv.LookPath(t, "nginx")
	curl := testenv.LookPath(t, "curl")
	setpriv := testenv.LookPath(t, "setpriv")
	cert, key := selfSigned(t, testenv.LookPath(t, "openssl"))
	rcv := otlptest.Start(t)
	pod := newPod(t)

	www := t.TempDir()
	os.WriteFile(filepath.Join(www, "index.html"), []byte("hello\n"), 0o644)
	plain, tls := freePort(t), freePort(t)
	conf := nginxTLSConf(t, www, plain, cert, key, fmt.Sprintf("listen 127.0.0.1:%d; listen 127.0.0.1:%d ssl;", plain, tls))
	start(t, pod.command(nginx, "-c", conf))
	waitListening(t, tls)
	_, httpapp := binaries(t)
	goPort := freePort(t)
	start(t, pod.command(httpapp, "-server", fmt.Sprintf("127.0.0.1:%d", goPort), "-tls"))
	waitListening(t, goPort)

	caps := "-all"
	for _, c := range webhook.Capabilities {
		caps += ",+" + strings.ToLower(string(c))
	}
	agentBin, _ := binaries(t)
	cmd := pod.command(setpriv, "--bounding-set="+caps, agentBin)
	cmd.Env = agentEnv(rcv)
	agent := start(t, cmd)
	agent.waitOutput(t, "podtracer agent running", 1, 20*time.Second)
	agent.waitOutput(t, `msg="reading TLS plaintext"`, 2, 10*time.Second)
	// The Go server: probed at the first scan with uprobe_multi links,
	// at its first handshake before Linux 6.10.
	goReady := `(Go crypto/tls)"`
	if !kernel.AtLeast(6, 10) {
		run(t, pod.command(curl, "-sk", "-o", "/dev/null", fmt.Sprintf("https://127.0.0.1:%d/users/0", goPort)))
	}
	agent.waitOutput(t, goReady, 1, 10*time.Second)

	run(t, pod.command(curl, "-s", "-o", "/dev/null", fmt.Sprintf("http://127.0.0.1:%d/plain", plain)))
	run(t, pod.command(curl, "-sk", "-o", "/dev/null", fmt.Sprintf("https://127.0.0.1:%d/secure", tls)))
	run(t, pod.command(curl, "-sk", "-o", "/dev/null", fmt.Sprintf("https://127.0.0.1:%d/users/1", goPort)))
	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		return find(s, trace.SpanKindServer, "/plain") != nil && find(s, trace.SpanKindServer, "/secure") != nil &&
			find(s, trace.SpanKindServer, "/users/1") != nil
	})
	expect(t, mustFind(t, spans, trace.SpanKindServer, "/users/1"), map[string]any{"url.scheme": "https"})
	expect(t, mustFind(t, spans, trace.SpanKindServer, "/plain"), map[string]any{"url.scheme": "http"})
	expect(t, mustFind(t, spans, trace.SpanKindServer, "/secure"), map[string]any{"url.scheme": "https"})
	if out := agent.output(); strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") {
		t.Errorf("warnings with the sidecar's capabilities:\n%s", out)
	}
}

// TestGoTLS: a Go HTTPS server and Go clients in the pod (crypto/tls, no
// libssl): the agent probes the programs' own TLS, and their plaintext
// gives server and client spans with url.scheme https, over HTTP/1.1 on
// a connection made before the agent started, and over HTTP/2.
func TestGoTLS(t *testing.T) {
	privileged(t)
	skipBefore610(t)
	_, httpapp := binaries(t)
	rcv := otlptest.Start(t)
	pod := newPod(t)

	port := freePort(t)
	start(t, pod.command(httpapp, "-server", fmt.Sprintf("127.0.0.1:%d", port), "-tls"))
	waitListening(t, port)
	base := fmt.Sprintf("https://localhost:%d", port)
	h1 := start(t, pod.command(httpapp, "-client", base))
	fmt.Fprintln(h1.stdin, "GET /users/0")
	h1.waitOutput(t, "200 ", 1, 10*time.Second)

	agent := startAgent(t, pod, agentEnv(rcv))
	agent.waitOutput(t, `(Go crypto/tls)"`, 2, 10*time.Second)
	h2 := start(t, pod.command(httpapp, "-client", base, "-http2"))
	agent.waitOutput(t, `(Go crypto/tls)"`, 3, 10*time.Second)

	// On the connection made before the agent: its records were seen
	// first in mid-stream. The two ends' reads under way when the uprobes
	// came in (the server's of the next request, the client's of the
	// next response) are not read: /users/9 may give no span, and must
	// not shift the client's responses onto the wrong requests.
	for _, line := range []string{"GET /users/9", "GET /users/1 " + traceparent, "POST /orders", "GET /fail"} {
		fmt.Fprintln(h1.stdin, line)
	}
	h1.waitOutput(t, "\n", 5, 10*time.Second)
	fmt.Fprintln(h2.stdin, "GET /users/2")
	h2.waitOutput(t, "200 7 HTTP/2.0", 1, 10*time.Second)

	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		return find(s, trace.SpanKindServer, "/fail") != nil && find(s, trace.SpanKindServer, "/users/2") != nil &&
			find(s, trace.SpanKindClient, "/fail") != nil && find(s, trace.SpanKindClient, "/users/2") != nil
	})
	for path, status := range map[string]int64{"/users/1": 200, "/orders": 201, "/fail": 500, "/users/2": 200} {
		s := mustFind(t, spans, trace.SpanKindServer, path)
		expect(t, s, map[string]any{"url.scheme": "https", "http.response.status_code": status, "server.port": int64(port)})
		expectResource(t, s, "httpapp")
		c := mustFind(t, spans, trace.SpanKindClient, path)
		expect(t, c, map[string]any{"url.full": base + path, "http.response.status_code": status, "server.port": int64(port)})
	}
	// The caller's trace context, read from the plaintext.
	if s := mustFind(t, spans, trace.SpanKindServer, "/users/1"); s.TraceID.String() != traceID {
		t.Errorf("server span of /users/1 in trace %s, want the traceparent's", s.TraceID)
	}
	expect(t, mustFind(t, spans, trace.SpanKindServer, "/users/1"), map[string]any{"network.protocol.version": "1.1"})
	expect(t, mustFind(t, spans, trace.SpanKindServer, "/users/2"), map[string]any{"network.protocol.version": "2"})
	expect(t, mustFind(t, spans, trace.SpanKindClient, "/users/2"), map[string]any{"network.protocol.version": "2"})
	for _, s := range rcv.Spans() {
		if s.Attributes["url.scheme"] == "http" {
			t.Errorf("a span of plain HTTP: %s %v", s.Name, s.Attributes)
		}
		if path := urlPath(s); strings.HasPrefix(path, "/users/") && s.Attributes["http.response.status_code"] != int64(200) {
			t.Errorf("a span of %s with another request's response: %v", path, s.Attributes)
		}
	}
}

// TestGRPCTLS: grpc-go over TLS at both ends (crypto/tls under grpc-go's
// transport credentials): unary and streaming calls give server and
// client spans with their methods and statuses, and the caller's trace
// context, read from the plaintext's HTTP/2; concurrent calls each give
// theirs.
func TestGRPCTLS(t *testing.T) {
	privileged(t)
	skipBefore610(t)
	grpcapp := fixture(t, "grpcapp")
	node := testenv.LookPath(t, "node")
	grpcJS := grpcJSModules(t)
	rcv := otlptest.Start(t)
	pod := newPod(t)

	port := freePort(t)
	server := start(t, pod.command(grpcapp, "-grpc", fmt.Sprintf("127.0.0.1:%d", port), "-tls"))
	server.waitOutput(t, "serving", 1, 10*time.Second)
	agent := startAgent(t, pod, agentEnv(rcv))
	agent.waitOutput(t, `(Go crypto/tls)"`, 1, 10*time.Second)
	client := start(t, pod.command(grpcapp, "-client", fmt.Sprintf("localhost:%d", port), "-tls"))
	agent.waitOutput(t, `(Go crypto/tls)"`, 2, 10*time.Second)
	// Then 1000 calls, 200 at a time on the one connection: grpc-go
	// batches their frames into writes and reads of many KB, whose
	// plaintext must come whole for the HPACK tables to stay in step.
	lines := []string{"say alice " + traceparent, "fail bob", "list 3", "say carol"}
	for range 5 {
		lines = append(lines, "par 200")
	}
	for _, line := range lines {
		fmt.Fprintln(client.stdin, line)
	}
	client.waitOutput(t, "ok 200", 5, 20*time.Second)
	// And Node.js's @grpc/grpc-js over TLS: HTTP/2 through OpenSSL linked
	// into node, which decrypts from memory (TestTLSMemoryBIO). It is
	// probed at its start, before it connects.
	js := pod.command(node, filepath.Join(fixtureDir(t, "grpcjs"), "client.js"), fmt.Sprintf("localhost:%d", port), "nodejs", "tls")
	js.Env = append(os.Environ(), "NODE_PATH="+grpcJS)
	if out := run(t, js); !strings.Contains(out, "list 3") {
		t.Fatalf("node client: %s", out)
	}

	spans := rcv.WaitSpans(t, 20*time.Second, func(s []otlptest.Span) bool {
		return countRPC(s, trace.SpanKindServer, "Say") >= 1003 && countRPC(s, trace.SpanKindClient, "Say") >= 1002 &&
			findRPC(s, trace.SpanKindServer, "Fail") != nil && findRPC(s, trace.SpanKindClient, "Fail") != nil &&
			findRPC(s, trace.SpanKindServer, "List") != nil && findRPC(s, trace.SpanKindClient, "List") != nil &&
			findRPC(s, trace.SpanKindClient, "Say", withService("node")) != nil && findRPC(s, trace.SpanKindClient, "List", withService("node")) != nil
	})
	for _, method := range []string{"Say", "List"} {
		c := mustFindRPC(t, spans, trace.SpanKindClient, method, withService("node"))
		expectRPC(t, c, method, 0)
		expect(t, c, map[string]any{"server.address": "localhost", "server.port": int64(port)})
	}
	for _, kind := range []trace.SpanKind{trace.SpanKindServer, trace.SpanKindClient} {
		expectRPC(t, mustFindRPC(t, spans, kind, "Say", withTrace(traceID)), "Say", 0)
		expectRPC(t, mustFindRPC(t, spans, kind, "Fail"), "Fail", 5)
		expectRPC(t, mustFindRPC(t, spans, kind, "List"), "List", 0)
	}
	s := mustFindRPC(t, spans, trace.SpanKindServer, "Say", withTrace(traceID))
	if s.ParentSpanID.String() != parentID {
		t.Errorf("server span's parent %s, want %s", s.ParentSpanID, parentID)
	}
	expect(t, s, map[string]any{"server.port": int64(port)})
	expectResource(t, s, "grpcapp")
}

// skipBefore610 skips a test that expects a Go program probed before its
// first TLS connection: on kernels without uprobe_multi links (before
// 6.10) its uprobes wait for its first handshake.
func skipBefore610(t *testing.T) {
	if !kernel.AtLeast(6, 10) {
		t.Skip("a Go program is probed before its first TLS connection on Linux 6.10+ only")
	}
}

// nodeTLSServer is a Node.js HTTPS server (its OpenSSL linked into the
// node executable, decrypting from memory: the socket read, then
// SSL_read), and an HTTP/2 one over TLS (node:http2). argv: the port, the
// certificate, the key, the HTTP/2 server's port.
const nodeTLSServer = `
const fs = require("fs"), https = require("https"), http2 = require("http2");
const [port, cert, key, h2port] = process.argv.slice(1);
const tls = {cert: fs.readFileSync(cert), key: fs.readFileSync(key)};
const answer = (req, res) => {
  req.resume();
  req.on("end", () => { res.writeHead(200, {"content-type": "text/plain"}); res.end("node " + req.url + "\n"); });
};
https.createServer(tls, answer).listen(Number(port), "127.0.0.1", () => {
  http2.createSecureServer(tls, answer).listen(Number(h2port), "127.0.0.1", () => console.log("listening"));
});
`

// asyncioTLSServer is a Python asyncio server of HTTP/1.1 over TLS
// (asyncio's SSLObject: libssl decrypting from memory), keep-alive, a 200
// for every request. A request for /asyncio-backend-N first makes one of
// its own, blocking, with http.client (libssl on the socket) to
// https://localhost:BACKEND/from-asyncio-N: an SSL object of the other
// kind, in the same thread, whose memory the next connection's object
// may get. argv: the port, the certificate, the key, BACKEND.
const asyncioTLSServer = `
import asyncio, http.client, ssl, sys
async def serve(reader, writer):
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            writer.close()
            return
        path = head.split(b" ")[1]
        if path.startswith(b"/asyncio-backend-"):
            c = http.client.HTTPSConnection("localhost", int(sys.argv[4]), context=ssl._create_unverified_context())
            c.request("GET", "/from-asyncio-" + path.decode().rsplit("-", 1)[1])
            c.getresponse().read()
            c.close()
        body = b"asyncio " + path + b"\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
LIMIT = 2 ** 16  # asyncio's default
` + asyncioTLSMain

// asyncioTLSMain ends an asyncio TLS server's script: it serves the
// script's serve() on the port with the certificate and key (argv 1-3),
// a stream's buffer limited to the script's LIMIT.
const asyncioTLSMain = `
async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), ssl=ctx, limit=LIMIT)
    print("listening", flush=True)
    await server.serve_forever()
asyncio.run(main())
`

// tlsClientInterleaved is a Python HTTPS client (libssl on the socket)
// with two keep-alive connections whose requests alternate, so that the
// server reads one connection's, then the other's. It prints each
// connection's local port. argv: the file to wait for, the port, the
// path prefix.
const tlsClientInterleaved = `
import http.client, os, ssl, sys, time
print("pid", os.getpid(), flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
conns = {}
for name in ("a", "b"):
    c = http.client.HTTPSConnection("localhost", int(sys.argv[2]), context=ssl._create_unverified_context())
    c.connect()
    print("port", name, c.sock.getsockname()[1], flush=True)
    conns[name] = c
for i in (1, 2, 3):
    for name, c in conns.items():
        path = "%s-%s-%d" % (sys.argv[3], name, i)
        c.request("GET", path)
        r = c.getresponse(); r.read()
        print(path, r.status, flush=True)
`

// nodeTLSClient is a Node.js HTTPS client: four requests at once over a
// keep-alive agent of two sockets, twice; then, one after the other, four
// requests each on a connection of its own (a new SSL object, which often
// gets the last one's memory), and three for /asyncio-backend-N. It
// prints each request's path, status and local port. argv: the file to
// wait for, the port, the path prefix.
const nodeTLSClient = `
const fs = require("fs"), https = require("https");
const [ready, port, prefix] = process.argv.slice(1);
console.log("pid", process.pid);
const agent = new https.Agent({keepAlive: true, maxSockets: 2, rejectUnauthorized: false});
const get = (path, pooled) => new Promise((resolve, reject) => {
  https.get({host: "127.0.0.1", port: Number(port), path, agent: pooled ? agent : false, rejectUnauthorized: false}, (res) => {
    const local = res.socket.localPort;
    res.resume();
    res.on("end", () => { console.log(path, res.statusCode, local); resolve(); });
  }).on("error", reject);
});
(async () => {
  while (!fs.existsSync(ready)) await new Promise((r) => setTimeout(r, 50));
  for (const round of [1, 2]) {
    await Promise.all([1, 2, 3, 4].map((i) => get(prefix + "-" + round + "-" + i, true)));
  }
  for (const i of [1, 2, 3, 4]) await get(prefix + "-new-" + i, false);
  for (const i of [1, 2, 3]) await get(prefix + "-backend-" + i, false);
  agent.destroy();
})();
`

// tlsClientEarly is a Python HTTPS client (libssl on the socket) with one
// keep-alive connection: a request at once, then, once a file exists, two
// more. Started before the agent, its connection and the server's thread
// are older than the uprobes. argv: the file, the port.
const tlsClientEarly = `
import http.client, os, ssl, sys, time
c = http.client.HTTPSConnection("localhost", int(sys.argv[2]), context=ssl._create_unverified_context())
c.request("GET", "/early-1"); c.getresponse().read()
print("early 1", c.sock.getsockname()[1], flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
for path in ("/early-2", "/early-3"):
    c.request("GET", path)
    r = c.getresponse(); r.read()
    print(path, r.status, flush=True)
`

// TestTLSMemoryBIO: TLS libraries that decrypt from memory rather than
// on the socket: Node.js's HTTPS servers (HTTP/1.1 and HTTP/2) and client
// (Node.js's OpenSSL) and a Python asyncio server (libssl through
// SSLObject). The socket calls come before SSL_read, not inside it, so the
// agent pairs the SSL object with the connection the thread received
// records on just before. Every
// request's server span must carry its own connection's peer port: two
// connections whose requests alternate; connections made one after the
// other, whose SSL objects reuse the memory of those freed before; and
// between them, in the asyncio server's thread, an SSL object of
// http.client's (libssl on the socket), freed too.
func TestTLSMemoryBIO(t *testing.T) {
	privileged(t)
	python := testenv.LookPath(t, "python3")
	node := testenv.LookPath(t, "node")
	cert, key := selfSigned(t, testenv.LookPath(t, "openssl"))
	rcv := otlptest.Start(t)
	pod := newPod(t)

	nodePort, pyPort, h2Port := freePort(t), freePort(t), freePort(t)
	start(t, pod.command(node, "-e", nodeTLSServer, "--", fmt.Sprint(nodePort), cert, key, fmt.Sprint(h2Port))).waitOutput(t, "listening", 1, 10*time.Second)
	start(t, pod.command(python, "-c", asyncioTLSServer, fmt.Sprint(pyPort), cert, key, fmt.Sprint(nodePort))).waitOutput(t, "listening", 1, 10*time.Second)
	// A connection to the Node.js server from before the agent: its next
	// requests are the first TLS the server's thread receives once the
	// uprobes are in, before any call of its since.
	earlyReady := filepath.Join(t.TempDir(), "early")
	earlyClient := start(t, pod.command(python, "-c", tlsClientEarly, earlyReady, fmt.Sprint(nodePort)))
	earlyClient.waitOutput(t, "early 1", 1, 10*time.Second)
	agent := startAgent(t, pod, agentEnv(rcv))
	agent.waitOutput(t, `msg="reading TLS plaintext"`, 3, 10*time.Second)
	os.WriteFile(earlyReady, nil, 0o644)
	earlyClient.waitOutput(t, "/early-3 200", 1, 10*time.Second)
	ready := filepath.Join(t.TempDir(), "ready")

	// The clients wait until the agent has probed them.
	pyClient := start(t, pod.command(python, "-c", tlsClientInterleaved, ready, fmt.Sprint(nodePort), "/node"))
	nodeClient := start(t, pod.command(node, "-e", nodeTLSClient, "--", ready, fmt.Sprint(pyPort), "/asyncio"))
	waitProbed(t, agent, pyClient)
	waitProbed(t, agent, nodeClient)
	os.WriteFile(ready, nil, 0o644)
	pyClient.waitOutput(t, "/node-b-3 200", 1, 10*time.Second)
	nodeClient.waitOutput(t, "/asyncio-backend-3 200", 1, 20*time.Second)
	// HTTP/2 to Node.js, two requests on one connection: curl's handshake
	// tells the agent of it, and its own spans may come too late.
	h2url := fmt.Sprintf("https://localhost:%d", h2Port)
	run(t, pod.command(testenv.LookPath(t, "curl"), "-sSk", "--http2", "-o", "/dev/null", "-o", "/dev/null", h2url+"/h2-node-1", h2url+"/h2-node-2"))

	var nodePaths, asyncioPaths []string
	for i := 1; i <= 3; i++ {
		nodePaths = append(nodePaths, fmt.Sprintf("/node-a-%d", i), fmt.Sprintf("/node-b-%d", i))
	}
	for round := 1; round <= 2; round++ {
		for i := 1; i <= 4; i++ {
			asyncioPaths = append(asyncioPaths, fmt.Sprintf("/asyncio-%d-%d", round, i))
		}
	}
	for i := 1; i <= 4; i++ {
		asyncioPaths = append(asyncioPaths, fmt.Sprintf("/asyncio-new-%d", i))
	}
	for i := 1; i <= 3; i++ {
		asyncioPaths = append(asyncioPaths, fmt.Sprintf("/asyncio-backend-%d", i))
		nodePaths = append(nodePaths, fmt.Sprintf("/from-asyncio-%d", i))
	}
	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		for _, path := range nodePaths {
			if find(s, trace.SpanKindServer, path) == nil {
				return false
			}
		}
		for _, path := range asyncioPaths {
			if find(s, trace.SpanKindServer, path) == nil || find(s, trace.SpanKindClient, path) == nil {
				return false
			}
		}
		return find(s, trace.SpanKindServer, "/h2-node-1") != nil && find(s, trace.SpanKindServer, "/h2-node-2") != nil &&
			find(s, trace.SpanKindServer, "/early-3") != nil
	})
	// The early connection's requests after the uprobes: the first one
	// too, whose read came before any call of the server's thread.
	var earlyPort int64
	fmt.Sscanf(earlyClient.output(), "early 1 %d", &earlyPort)
	for _, path := range []string{"/early-2", "/early-3"} {
		expect(t, mustFind(t, spans, trace.SpanKindServer, path), map[string]any{"network.peer.port": earlyPort, "http.response.status_code": int64(200)})
	}
	for _, path := range []string{"/h2-node-1", "/h2-node-2"} {
		s := mustFind(t, spans, trace.SpanKindServer, path)
		expect(t, s, map[string]any{"url.scheme": "https", "http.response.status_code": int64(200), "server.port": int64(h2Port),
			"network.protocol.version": "2"})
		expectResource(t, s, "node")
	}
	// The clients' local ports: the Python client's by connection, the
	// Node.js client's by request.
	ports := map[string]int64{}
	for _, line := range strings.Split(pyClient.output(), "\n") {
		var name string
		var port int64
		if n, _ := fmt.Sscanf(line, "port %s %d", &name, &port); n == 2 {
			ports[name] = port
		}
	}
	for _, line := range strings.Split(nodeClient.output(), "\n") {
		var path string
		var status, port int64
		if n, _ := fmt.Sscanf(line, "%s %d %d", &path, &status, &port); n == 3 {
			ports[path] = port
		}
	}
	for _, path := range nodePaths {
		s := mustFind(t, spans, trace.SpanKindServer, path)
		expect(t, s, map[string]any{"url.scheme": "https", "http.response.status_code": int64(200), "server.port": int64(nodePort)})
		expectResource(t, s, "node")
		if strings.HasPrefix(path, "/node-") {
			expect(t, s, map[string]any{"network.peer.port": ports[path[len("/node-"):len("/node-")+1]]}) // the connection's: a or b
		}
	}
	for i := 1; i <= 3; i++ {
		c := mustFind(t, spans, trace.SpanKindClient, fmt.Sprintf("/from-asyncio-%d", i))
		expect(t, c, map[string]any{"url.full": fmt.Sprintf("https://localhost:%d/from-asyncio-%d", nodePort, i)})
	}
	for _, path := range asyncioPaths {
		s := mustFind(t, spans, trace.SpanKindServer, path)
		expect(t, s, map[string]any{"url.scheme": "https", "http.response.status_code": int64(200), "server.port": int64(pyPort),
			"network.peer.port": ports[path]})
		if got := s.Resource["service.name"]; got != "python3" {
			t.Errorf("the server span of %s is %v's, want python3's", path, got)
		}
		c := mustFind(t, spans, trace.SpanKindClient, path)
		expect(t, c, map[string]any{"url.full": fmt.Sprintf("https://127.0.0.1:%d%s", pyPort, path), "http.response.status_code": int64(200)})
		expectResource(t, c, "node")
	}
	for _, s := range rcv.Spans() {
		if s.Attributes["url.scheme"] == "http" {
			t.Errorf("a span of plain HTTP: %s %v", s.Name, s.Attributes)
		}
	}
	// Every read and write of the plaintext found its connection: Node.js
	// writes its first request before it reads the handshake's end.
	syscall.Kill(-agent.cmd.Process.Pid, syscall.SIGTERM)
	agent.waitOutput(t, "final stats", 1, 20*time.Second)
	if lost := finalStats(agent.output())["tls_plaintext_lost"]; lost != 0 {
		t.Errorf("tls_plaintext_lost=%d, want 0", lost)
	}
}

// asyncioPausedServer is a Python asyncio server of HTTP/1.1 over TLS with
// a small read limit: a request's body waits in its stream, so that
// asyncio pauses reading the connection (its socket is still read, into
// the memory BIO, with no SSL_read), and resumes it later with an
// SSL_read and no receive of its own. /slow's handler waits 3 s before it
// reads its body, /fast's 1 s; each answers with its own status. argv:
// the port, the certificate, the key.
const asyncioPausedServer = `
import asyncio, ssl, sys
async def serve(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ")[1]
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    await asyncio.sleep(1.0 if path == b"/fast" else 3.0)
    await reader.readexactly(n)
    status = b"202" if path == b"/fast" else b"201"
    writer.write(b"HTTP/1.1 " + status + b" OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()
LIMIT = 1024
` + asyncioTLSMain

// pausedClient posts to asyncioPausedServer on two connections: /fast's
// body at once, /slow's trickled for about 3 s, so that the server receives
// /slow's records while it has stopped reading them, and meanwhile
// resumes /fast. argv: the file to wait for, the port.
const pausedClient = `
import os, socket, ssl, sys, threading, time
print("pid", os.getpid(), flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
ctx = ssl._create_unverified_context()
conn = lambda: ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))), server_hostname="localhost")
slow, fast = conn(), conn()
print("port /slow", slow.getsockname()[1], flush=True)
print("port /fast", fast.getsockname()[1], flush=True)
NS, NF = 2400 * 50, 200000
slow.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % NS)
fast.sendall(b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % NF + b"f" * NF)
def trickle():
    for i in range(2400):
        slow.sendall(b"s" * 50)
        time.sleep(0.001)
t = threading.Thread(target=trickle)
t.start()
print("fast got", fast.recv(100), flush=True)
t.join()
print("slow got", slow.recv(100), flush=True)
`

// TestTLSMemoryBIOPaused: asyncio reads a connection whose reading its
// application paused (flow control of an upload) into the memory BIO
// without decrypting it, and resumes another with an SSL_read that no
// receive of its own set off. That read must not take the connection just
// received on: each request's span keeps its own status and peer.
func TestTLSMemoryBIOPaused(t *testing.T) {
	privileged(t)
	python := testenv.LookPath(t, "python3")
	cert, key := selfSigned(t, testenv.LookPath(t, "openssl"))
	rcv := otlptest.Start(t)
	pod := newPod(t)
	port := freePort(t)
	start(t, pod.command(python, "-c", asyncioPausedServer, fmt.Sprint(port), cert, key)).waitOutput(t, "listening", 1, 10*time.Second)
	agent := startAgent(t, pod, agentEnv(rcv))
	agent.waitOutput(t, `msg="reading TLS plaintext"`, 1, 10*time.Second)
	ready := filepath.Join(t.TempDir(), "ready")
	client := start(t, pod.command(python, "-c", pausedClient, ready, fmt.Sprint(port)))
	waitProbed(t, agent, client)
	os.WriteFile(ready, nil, 0o644)
	client.waitOutput(t, "slow got", 1, 20*time.Second)

	ports := map[string]int64{}
	for _, line := range strings.Split(client.output(), "\n") {
		var path string
		var p int64
		if n, _ := fmt.Sscanf(line, "port %s %d", &path, &p); n == 2 {
			ports[path] = p
		}
	}
	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		return find(s, trace.SpanKindServer, "/slow") != nil && find(s, trace.SpanKindServer, "/fast") != nil
	})
	for path, status := range map[string]int64{"/slow": 201, "/fast": 202} {
		expect(t, mustFind(t, spans, trace.SpanKindServer, path), map[string]any{"http.response.status_code": status, "network.peer.port": ports[path]})
	}
}
