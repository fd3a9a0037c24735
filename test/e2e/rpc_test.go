package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/internal/testenv"
)

// TestGRPC runs a grpc-go server in a pod with the agent, and clients of it
// in the pod: grpc-go (unary, server, client and bidirectional streaming, a
// failing call, a cancelled stream, and a connection opened before the agent
// started), Node.js @grpc/grpc-js, and, against the same binary's plain
// HTTP/2 server, nghttp and h2load from nghttp2.
func TestGRPC(t *testing.T) {
	privileged(t)
	node := testenv.LookPath(t, "node")
	nghttp := testenv.LookPath(t, "nghttp")
	curl := testenv.LookPath(t, "curl")
	h2load := testenv.LookPath(t, "h2load")
	grpcapp := fixture(t, "grpcapp")
	grpcJS := grpcJSModules(t)

	rcv := otlptest.Start(t)
	pod := newPod(t)
	grpcPort, h2Port := freePort(t), freePort(t)
	start(t, pod.command(grpcapp, "-grpc", fmt.Sprintf("127.0.0.1:%d", grpcPort), "-h2c", fmt.Sprintf("127.0.0.1:%d", h2Port)))
	waitListening(t, grpcPort)
	waitListening(t, h2Port)
	// A server of its own for the big messages' calls, to count them.
	bigPort := freePort(t)
	start(t, pod.command(grpcapp, "-grpc", fmt.Sprintf("127.0.0.1:%d", bigPort)))
	waitListening(t, bigPort)

	// A client whose connection is older than the agent: its HPACK tables
	// hold entries the agent never saw.
	early := start(t, pod.command(grpcapp, "-client", fmt.Sprintf("127.0.0.1:%d", grpcPort)))
	fmt.Fprintln(early.stdin, "say early")
	early.waitOutput(t, "ok hello early", 1, 10*time.Second)

	agent := startAgent(t, pod, agentEnv(rcv))

	client := start(t, pod.command(grpcapp, "-client", fmt.Sprintf("127.0.0.1:%d", grpcPort)))
	// The cancelled stream comes last: the server writes its messages
	// faster than the client reads, in writes of many frames, which may be
	// more than the kernel follows in one write; that direction's HPACK
	// table is then lost, and later statuses on the connection unknown.
	for _, line := range []string{"say alice " + traceparent, "fail bob", "list 5", "collect 3", "say again", "cancel x"} {
		fmt.Fprintln(client.stdin, line)
	}
	client.waitOutput(t, "\n", 6, 20*time.Second)
	// Big messages each way: writes whose frames go on far past the
	// capture prefix, and calls after them whose headers refer to HPACK
	// entries made before. The kernel's pieces keep the agent's place in
	// the frames, so every call gets its spans.
	bigClient := start(t, pod.command(grpcapp, "-client", fmt.Sprintf("127.0.0.1:%d", bigPort)))
	for _, line := range []string{"say first", "big 100000", "say a", "big 300000", "say b", "par 4"} {
		fmt.Fprintln(bigClient.stdin, line)
	}
	bigClient.waitOutput(t, "\n", 6, 20*time.Second)
	const bigCalls = 9
	// On the early connection, Say's :path is an entry from before the
	// agent: no span may name a wrong method. Chat is new to it: its
	// request decodes.
	fmt.Fprintln(early.stdin, "say later")
	fmt.Fprintln(early.stdin, "chat 2")
	early.waitOutput(t, "\n", 3, 10*time.Second)

	// By name: its calls' :authority is "localhost", their server.address.
	js := pod.command(node, filepath.Join(fixtureDir(t, "grpcjs"), "client.js"), fmt.Sprintf("localhost:%d", grpcPort), "nodejs")
	js.Env = append(os.Environ(), "NODE_PATH="+grpcJS)
	if out := run(t, js); !strings.Contains(out, "list 3") {
		t.Fatalf("node client: %s", out)
	}
	h2url := fmt.Sprintf("http://127.0.0.1:%d", h2Port)
	run(t, pod.command(nghttp, "-n", "-H", "traceparent: "+traceparent, h2url+"/users/7", h2url+"/fail"))
	run(t, pod.command(h2load, "-n", "10", "-c", "1", "-m", "4", h2url+"/users/9"))
	// h2c by Upgrade: the first request in HTTP/1.1, answered in HTTP/2.
	run(t, pod.command(curl, "-sS", "--http2", "-o", "/dev/null", "-H", "traceparent: "+traceparent, h2url+"/users/11"))
	run(t, pod.command(nghttp, "-u", "-n", h2url+"/users/12", h2url+"/users/13"))

	spans := rcv.WaitSpans(t, 30*time.Second, func(s []otlptest.Span) bool {
		return findRPC(s, trace.SpanKindServer, "Chat") != nil &&
			findRPC(s, trace.SpanKindClient, "Chat") != nil &&
			findRPC(s, trace.SpanKindClient, "List", withService("node")) != nil &&
			findRPC(s, trace.SpanKindServer, "List", withGRPCStatus(1)) != nil &&
			find(s, trace.SpanKindClient, "/fail") != nil && find(s, trace.SpanKindServer, "/fail") != nil &&
			find(s, trace.SpanKindClient, "/users/7") != nil && find(s, trace.SpanKindServer, "/users/7") != nil &&
			count(s, trace.SpanKindServer, "/users/9") >= 10 &&
			// Every upgraded request: nghttp -u's /users/12, stream 1, is
			// often answered after /users/13 (stream 13).
			find(s, trace.SpanKindClient, "/users/11") != nil && find(s, trace.SpanKindServer, "/users/11") != nil &&
			find(s, trace.SpanKindClient, "/users/12") != nil && find(s, trace.SpanKindServer, "/users/12") != nil &&
			find(s, trace.SpanKindClient, "/users/13") != nil && find(s, trace.SpanKindServer, "/users/13") != nil &&
			countRPC(s, trace.SpanKindServer, "Say", withPort(bigPort)) >= bigCalls && countRPC(s, trace.SpanKindClient, "Say", withPort(bigPort)) >= bigCalls
	})
	if t.Failed() {
		t.Logf("agent log:\n%s", agent.output())
		return
	}

	t.Run("grpc-go server", func(t *testing.T) {
		s := mustFindRPC(t, spans, trace.SpanKindServer, "Say", withTrace(traceID))
		expectRPC(t, s, "Say", 0)
		if s.Name != "demo.Echo/Say" {
			t.Errorf("name %q", s.Name)
		}
		if s.ParentSpanID.String() != parentID {
			t.Errorf("parent %s, want %s", s.ParentSpanID, parentID)
		}
		expect(t, s, map[string]any{"server.port": int64(grpcPort), "client.address": "127.0.0.1"})
		expectResource(t, s, "grpcapp")
		if d := s.End.Sub(s.Start); d <= 0 || d > 5*time.Second {
			t.Errorf("duration %v", d)
		}
		fail := mustFindRPC(t, spans, trace.SpanKindServer, "Fail")
		expectRPC(t, fail, "Fail", 5)
		if fail.StatusCode == codes.Error {
			t.Error("NOT_FOUND is the caller's problem: a server span without error")
		}
		for _, m := range []string{"List", "Collect"} {
			expectRPC(t, mustFindRPC(t, spans, trace.SpanKindServer, m, withGRPCStatus(0)), m, 0)
		}
		cancelled := mustFindRPC(t, spans, trace.SpanKindServer, "List", withGRPCStatus(1))
		expectRPC(t, cancelled, "List", 1)
	})

	t.Run("grpc-go client", func(t *testing.T) {
		s := mustFindRPC(t, spans, trace.SpanKindClient, "Say", withTrace(traceID))
		expectRPC(t, s, "Say", 0)
		expect(t, s, map[string]any{"server.address": "127.0.0.1", "server.port": int64(grpcPort)})
		expectResource(t, s, "grpcapp")
		fail := mustFindRPC(t, spans, trace.SpanKindClient, "Fail")
		if fail.StatusCode != codes.Error {
			t.Errorf("client span of a failed call: status %v", fail.StatusCode)
		}
		mustFindRPC(t, spans, trace.SpanKindClient, "Collect")
		mustFindRPC(t, spans, trace.SpanKindClient, "List", withGRPCStatus(1))
	})

	t.Run("connection older than the agent", func(t *testing.T) {
		// Chat exists only on the early connection. Its request decodes;
		// the server's trailers refer to "grpc-status: 0" as a table entry
		// from before the agent: the status is unknown, so left out.
		for _, kind := range []trace.SpanKind{trace.SpanKindClient, trace.SpanKindServer} {
			s := mustFindRPC(t, spans, kind, "Chat")
			if code, ok := s.Attributes["rpc.grpc.status_code"]; ok && code != int64(0) {
				t.Errorf("%v Chat: status %v", kind, code)
			}
		}
		for _, s := range spans {
			if s.Attributes["rpc.service"] == nil {
				continue
			}
			if m := rpcMethod(s); !slices.Contains([]string{"Say", "Fail", "List", "Collect", "Chat"}, m) || s.Attributes["rpc.service"] != "demo.Echo" {
				t.Errorf("span of a method never called: %s %v", s.Name, s.Attributes)
			}
		}
		if s := findRPC(spans, trace.SpanKindServer, "Say", func(s otlptest.Span) bool { return s.Attributes["rpc.grpc.status_code"] != int64(0) }); s != nil {
			t.Errorf("a Say call with a status other than OK: %v %v", s.Attributes, s.Resource["process.pid"])
		}
	})

	t.Run("big messages", func(t *testing.T) {
		if !strings.Contains(agent.output(), "http2_frames=true") {
			testenv.Skip(t, "the agent runs without the kernel's HTTP/2 frame walk (the syscall hooks, before Linux 6.3): calls after a big message may get no span")
		}
		for _, kind := range []trace.SpanKind{trace.SpanKindServer, trace.SpanKindClient} {
			if n, ok := countRPC(spans, kind, "Say", withPort(bigPort)), countRPC(spans, kind, "Say", withPort(bigPort), withGRPCStatus(0)); n != bigCalls || ok != bigCalls {
				t.Errorf("%v: %d Say spans, %d of them OK; want %d, all OK", kind, n, ok, bigCalls)
			}
		}
	})

	t.Run("node grpc-js client", func(t *testing.T) {
		s := mustFindRPC(t, spans, trace.SpanKindClient, "Say", withService("node"))
		expectRPC(t, s, "Say", 0)
		expect(t, s, map[string]any{"server.address": "localhost", "server.port": int64(grpcPort), "network.peer.address": "127.0.0.1"})
		mustFindRPC(t, spans, trace.SpanKindClient, "List", withService("node"))
	})

	t.Run("plain HTTP/2", func(t *testing.T) {
		s := mustFind(t, spans, trace.SpanKindServer, "/users/7")
		expect(t, s, map[string]any{
			"http.request.method":       "GET",
			"http.response.status_code": int64(200),
			"http.route":                "/users/{id}",
			"network.protocol.version":  "2",
			"server.port":               int64(h2Port),
		})
		if s.Name != "GET /users/{id}" || s.TraceID.String() != traceID {
			t.Errorf("name %q trace %s", s.Name, s.TraceID)
		}
		expectResource(t, s, "grpcapp")
		c := mustFind(t, spans, trace.SpanKindClient, "/users/7")
		expect(t, c, map[string]any{"network.protocol.version": "2", "http.response.status_code": int64(200)})
		if c.Resource["service.name"] != "nghttp" {
			t.Errorf("client resource %v", c.Resource["service.name"])
		}
		fail := mustFind(t, spans, trace.SpanKindServer, "/fail")
		if fail.StatusCode != codes.Error || fail.Attributes["http.response.status_code"] != int64(503) {
			t.Errorf("503: status %v attributes %v", fail.StatusCode, fail.Attributes)
		}
		if n := count(spans, trace.SpanKindClient, "/users/9"); n < 10 {
			t.Errorf("%d h2load client spans, want 10", n)
		}
		for _, s := range spans {
			if s.Attributes["network.protocol.version"] == "2" && s.Attributes["rpc.service"] != nil {
				t.Errorf("span both HTTP and gRPC: %v", s.Attributes)
			}
		}
	})

	t.Run("h2c upgrade", func(t *testing.T) {
		for _, c := range []struct{ path, client string }{{"/users/11", "curl"}, {"/users/12", "nghttp"}, {"/users/13", "nghttp"}} {
			s := mustFind(t, spans, trace.SpanKindServer, c.path)
			expect(t, s, map[string]any{"network.protocol.version": "2", "http.response.status_code": int64(200), "http.route": "/users/{id}"})
			cl := mustFind(t, spans, trace.SpanKindClient, c.path)
			expect(t, cl, map[string]any{"network.protocol.version": "2", "http.response.status_code": int64(200)})
			if cl.Resource["service.name"] != c.client {
				t.Errorf("%s: client %v, want %s", c.path, cl.Resource["service.name"], c.client)
			}
		}
		if s := mustFind(t, spans, trace.SpanKindServer, "/users/11"); s.TraceID.String() != traceID {
			t.Errorf("upgraded request's trace %s, want %s from its traceparent", s.TraceID, traceID)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		points := rcv.WaitMetric(t, 10*time.Second, func(m []otlptest.MetricPoint) bool {
			return rpcHistogram(m, "rpc.server.call.duration", "Say") != nil && rpcHistogram(m, "rpc.client.call.duration", "Say") != nil
		})
		p := rpcHistogram(points, "rpc.server.call.duration", "Say")
		if p == nil || p.Unit != "s" || p.Count < 2 {
			t.Fatalf("rpc.server.call.duration for Say: %+v", p)
		}
	})
}

// rpcMethod is the method of a gRPC span, whether rpc.method holds
// "Method" (semantic conventions before 1.38) or "pkg.Service/Method".
func rpcMethod(s otlptest.Span) string {
	m, _ := s.Attributes["rpc.method"].(string)
	if i := strings.LastIndexByte(m, '/'); i >= 0 {
		m = m[i+1:]
	}
	return m
}

func withService(name string) spanFilter {
	return func(s otlptest.Span) bool { return s.Resource["service.name"] == name }
}

func withTrace(id string) spanFilter {
	return func(s otlptest.Span) bool { return s.TraceID.String() == id }
}

func withGRPCStatus(code int64) spanFilter {
	return withAttr("rpc.grpc.status_code", code)
}

func rpcFilters(kind trace.SpanKind, method string) []spanFilter {
	return []spanFilter{withKind(kind), withAttr("rpc.service", "demo.Echo"),
		func(s otlptest.Span) bool { return rpcMethod(s) == method }}
}

// countRPC counts the gRPC spans of this kind and method that meet the
// filters.
func countRPC(spans []otlptest.Span, kind trace.SpanKind, method string, filters ...spanFilter) int {
	n := 0
	for i := range spans {
		if firstSpan(spans[i:i+1], append(rpcFilters(kind, method), filters...)...) != nil {
			n++
		}
	}
	return n
}

func findRPC(spans []otlptest.Span, kind trace.SpanKind, method string, filters ...spanFilter) *otlptest.Span {
	return firstSpan(spans, append(rpcFilters(kind, method), filters...)...)
}

func mustFindRPC(t *testing.T, spans []otlptest.Span, kind trace.SpanKind, method string, filters ...spanFilter) *otlptest.Span {
	t.Helper()
	return mustFirstSpan(t, spans, fmt.Sprintf("%v %s", kind, method),
		func(s otlptest.Span) string {
			return fmt.Sprintf("%v %s %v %v", s.Kind, s.Name, s.Resource["service.name"], s.Attributes["rpc.grpc.status_code"])
		},
		append(rpcFilters(kind, method), filters...)...)
}

func expectRPC(t *testing.T, s *otlptest.Span, method string, code int64) {
	t.Helper()
	expect(t, s, map[string]any{"rpc.system": "grpc", "rpc.service": "demo.Echo", "rpc.grpc.status_code": code})
	if m := rpcMethod(*s); m != method {
		t.Errorf("%s: rpc.method %v, want %s", s.Name, s.Attributes["rpc.method"], method)
	}
}

func count(spans []otlptest.Span, kind trace.SpanKind, path string) int {
	n := 0
	for _, s := range spans {
		if s.Kind == kind && urlPath(s) == path {
			n++
		}
	}
	return n
}

func rpcHistogram(points []otlptest.MetricPoint, name, method string) *otlptest.MetricPoint {
	for i := range points {
		p := &points[i]
		if p.Name != name || p.Resource["service.name"] != "grpcapp" {
			continue
		}
		m, _ := p.Attributes["rpc.method"].(string)
		if m == method || strings.HasSuffix(m, "/"+method) {
			return p
		}
	}
	return nil
}

var (
	fixtureMu    sync.Mutex
	fixtureBuilt = map[string]string{}
)

// fixture builds the Go fixture test/fixtures/<name> once per test run.
// Fixtures with their own go.mod (kafkaapp: franz-go and kfake stay out of
// the main go.mod) are built in their folder.
func fixture(t *testing.T, name string) string {
	t.Helper()
	binaries(t) // makes binDir
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	if bin, ok := fixtureBuilt[name]; ok {
		return bin
	}
	dir := fixtureDir(t, name)
	bin := filepath.Join(binDir, name)
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	fixtureBuilt[name] = bin
	return bin
}

func fixtureDir(t *testing.T, name string) string {
	dir, err := filepath.Abs(filepath.Join("..", "fixtures", name))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// grpcJSModules installs test/fixtures/grpcjs/package.json's modules from
// npm, once per version of that file, into a cache folder
// ($PODTRACER_TEST_CACHE, or the user cache folder), and returns its
// node_modules for NODE_PATH.
func grpcJSModules(t *testing.T) string {
	t.Helper()
	npm := testenv.LookPath(t, "npm")
	pkg, err := os.ReadFile(filepath.Join(fixtureDir(t, "grpcjs"), "package.json"))
	if err != nil {
		t.Fatal(err)
	}
	cache := os.Getenv("PODTRACER_TEST_CACHE")
	if cache == "" {
		if cache, err = os.UserCacheDir(); err != nil {
			cache = os.TempDir()
		}
		cache = filepath.Join(cache, "podtracer-test")
	}
	sum := sha256.Sum256(pkg)
	dir := filepath.Join(cache, "grpcjs-"+hex.EncodeToString(sum[:6]))
	modules := filepath.Join(dir, "node_modules")
	if _, err := os.Stat(filepath.Join(modules, "@grpc", "grpc-js", "package.json")); err == nil {
		return modules
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "package.json"), pkg, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(npm, "install", "--no-audit", "--no-fund", "--ignore-scripts")
	cmd.Dir = dir
	done := make(chan struct{})
	time.AfterFunc(5*time.Minute, func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
		}
	})
	out, err := cmd.CombinedOutput()
	close(done)
	if err != nil {
		t.Fatalf("npm install @grpc/grpc-js: %v\n%s", err, out)
	}
	return modules
}

// relayScript is a TCP relay, as a collector in the pod would stand
// between the agent and the backend: it accepts on argv[1] and forwards
// each connection to argv[2] on 127.0.0.1.
const relayScript = `
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen()
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
while True:
    c, _ = srv.accept()
    u = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    threading.Thread(target=pump, args=(c, u), daemon=True).start()
    threading.Thread(target=pump, args=(u, c), daemon=True).start()
`

// TestCollectorInPod: the agent exports to a collector in its own pod (the
// OpenTelemetry Operator's sidecar mode), here a relay to the receiver. The
// collector's side of the agent's export connections is not traced: each
// export would make a server span for the next export to carry, for ever.
// The pod's own traffic still is.
func TestCollectorInPod(t *testing.T) {
	privileged(t)
	python := testenv.LookPath(t, "python3")
	curl := testenv.LookPath(t, "curl")
	_, httpapp := binaries(t)
	rcv := otlptest.Start(t)
	pod := newPod(t)
	relayPort, appPort := freePort(t), freePort(t)
	rcvPort := netip.MustParseAddrPort(rcv.Endpoint()).Port()
	start(t, pod.command(python, "-c", relayScript, fmt.Sprint(relayPort), fmt.Sprint(rcvPort)))
	start(t, pod.command(httpapp, "-server", fmt.Sprintf("127.0.0.1:%d", appPort)))
	waitListening(t, relayPort)
	waitListening(t, appPort)
	agent := startAgent(t, pod, agentEnv(rcv, fmt.Sprintf("OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:%d", relayPort)))
	for i := range 5 {
		run(t, pod.command(curl, "-sS", "-o", "/dev/null", fmt.Sprintf("http://127.0.0.1:%d/users/%d", appPort, i)))
		time.Sleep(300 * time.Millisecond) // an export or two between requests
	}
	spans := rcv.WaitSpans(t, 20*time.Second, func(s []otlptest.Span) bool { return count(s, trace.SpanKindServer, "/users/4") > 0 })
	time.Sleep(2 * time.Second) // exports go on meanwhile
	spans = rcv.Spans()
	if t.Failed() {
		t.Logf("agent log:\n%s", agent.output())
		return
	}
	for _, s := range spans {
		if m, _ := s.Attributes["rpc.method"].(string); s.Kind == trace.SpanKindServer && strings.HasPrefix(m, "opentelemetry.proto.collector.") {
			t.Fatalf("the collector's side of the agent's own export: %s %v", s.Name, s.Attributes)
		}
	}
}
