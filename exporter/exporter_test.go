package exporter

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/internal/testenv"
	"github.com/podtracer/podtracer/pod"
	"github.com/podtracer/podtracer/tracer"
)

const waitFor = 10 * time.Second

var (
	python = &pod.Process{PID: 412, PPID: 1, Exe: "/usr/bin/python3.12", Name: "python3", Cmdline: []string{"python3", "app.py"}, ContainerID: "abc123"}
	curl   = &pod.Process{PID: 77, Exe: "/usr/bin/curl", Name: "curl"}
	meta   = pod.Metadata{PodName: "shop-1", Namespace: "prod", NodeName: "node-a", PodUID: "uid-1"}

	t0 = time.Date(2026, 11, 22, 5, 0, 0, 123_000_000, time.UTC)

	parent = trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 1, 1, 1, 2, 2, 2, 2},
		TraceFlags: trace.FlagsSampled,
		Remote:     true,
	})
)

// serverReq is a typical request a python server answered.
func serverReq() *tracer.Request {
	return &tracer.Request{
		Role: tracer.RoleServer, Protocol: "http", Process: python,
		Start: t0, End: t0.Add(1234 * time.Microsecond),
		Local:  netip.MustParseAddrPort("10.0.0.2:8080"),
		Remote: netip.MustParseAddrPort("10.0.0.1:5555"),
		Method: "GET", Path: "/users/42", Query: "token=secret", Route: "/users/{id}",
		Host: "shop.example", HostPort: 8080, StatusCode: 200, ProtocolVersion: "1.1",
		UserAgent: "curl/8.5.0", RequestSize: 0, ResponseSize: 17,
		Parent: parent,
	}
}

// clientReq is a typical request curl sent.
func clientReq() *tracer.Request {
	return &tracer.Request{
		Role: tracer.RoleClient, Protocol: "http", Process: curl,
		Start: t0, End: t0.Add(3 * time.Millisecond),
		Local:  netip.MustParseAddrPort("10.0.0.1:5555"),
		Remote: netip.MustParseAddrPort("10.0.0.9:9000"),
		Method: "POST", Path: "/orders", Query: "dry=1",
		StatusCode: 404, ProtocolVersion: "1.1", UserAgent: "curl/8.5.0",
		RequestSize: 12, ResponseSize: 3,
	}
}

// otlpEnv points both OTLP exporters at addr and makes everything quick.
func otlpEnv(t *testing.T, endpoint string) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	for _, k := range []string{"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER",
		"OTEL_TRACES_SAMPLER_ARG", "OTEL_BSP_MAX_QUEUE_SIZE"} {
		t.Setenv(k, "")
	}
}

func testLogger(t *testing.T) (*slog.Logger, *testenv.Buffer) {
	var buf testenv.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("exporter log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// startOTLP starts a receiver and an exporter sending to it.
func startOTLP(t *testing.T, cfg Config, opts ...otlptest.Option) (*Exporter, *otlptest.Receiver, *testenv.Buffer) {
	t.Helper()
	rcv := otlptest.Start(t, opts...)
	otlpEnv(t, rcv.URL())
	cfg.TracesOTLP, cfg.MetricsOTLP = true, true
	if cfg.Metadata == (pod.Metadata{}) {
		cfg.Metadata = meta
	}
	logger, logs := testLogger(t)
	e, err := New(context.Background(), cfg, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { shutdown(t, e) })
	return e, rcv, logs
}

func shutdown(t *testing.T, e *Exporter) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func spansNamed(name string, n int) func([]otlptest.Span) bool {
	return func(s []otlptest.Span) bool { return len(find(s, name)) >= n }
}

func find(spans []otlptest.Span, name string) []otlptest.Span {
	var out []otlptest.Span
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func checkAttrs(t *testing.T, what string, got, want map[string]any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s attributes:\n got %v\nwant %v", what, got, want)
	}
}

func TestServerSpan(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	e.Export(serverReq())
	s := rcv.WaitSpans(t, waitFor, spansNamed("GET /users/{id}", 1))[0]

	if s.Kind != trace.SpanKindServer {
		t.Errorf("kind = %v, want server", s.Kind)
	}
	if s.TraceID != parent.TraceID() || s.ParentSpanID != parent.SpanID() {
		t.Errorf("trace %v parent %v, want trace %v parent %v", s.TraceID, s.ParentSpanID, parent.TraceID(), parent.SpanID())
	}
	if !s.Start.Equal(t0) || !s.End.Equal(t0.Add(1234*time.Microsecond)) {
		t.Errorf("start %v end %v", s.Start, s.End)
	}
	if s.StatusCode != codes.Unset {
		t.Errorf("status = %v, want unset", s.StatusCode)
	}
	if s.Scope != scopeName {
		t.Errorf("scope = %q", s.Scope)
	}
	checkAttrs(t, "span", s.Attributes, map[string]any{
		"http.request.method":       "GET",
		"url.scheme":                "http",
		"url.path":                  "/users/42",
		"http.route":                "/users/{id}",
		"http.response.status_code": int64(200),
		"server.address":            "shop.example",
		"server.port":               int64(8080),
		"client.address":            "10.0.0.1",
		"network.peer.address":      "10.0.0.1",
		"network.peer.port":         int64(5555),
		"network.protocol.version":  "1.1",
		"user_agent.original":       "curl/8.5.0",
	})
	for k, v := range map[string]any{
		"service.name":            "python3",
		"process.pid":             int64(412),
		"process.parent_pid":      int64(1),
		"process.executable.name": "python3",
		"process.executable.path": "/usr/bin/python3.12",
		"process.command_args":    nil, // off by default: PODTRACER_COMMAND_ARGS
		"container.id":            "abc123",
		"k8s.pod.name":            "shop-1",
		"k8s.namespace.name":      "prod",
		"k8s.node.name":           "node-a",
		"k8s.pod.uid":             "uid-1",
		"telemetry.sdk.language":  "go",
		"telemetry.sdk.name":      "opentelemetry",
	} {
		if !reflect.DeepEqual(s.Resource[k], v) {
			t.Errorf("resource %s = %#v, want %#v", k, s.Resource[k], v)
		}
	}
}

// The attributes the conventions make opt-in are on spans when asked for,
// and only then (TestServerSpan has them off).
func TestOptInAttributes(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{OptIn: OptIn{ClientPort: true, ResponseBodySize: true}})
	e.Export(serverReq())
	s := rcv.WaitSpans(t, waitFor, spansNamed("GET /users/{id}", 1))[0]
	for k, v := range map[string]any{"client.port": int64(5555), "http.response.body.size": int64(17)} {
		if s.Attributes[k] != v {
			t.Errorf("%s = %v, want %v", k, s.Attributes[k], v)
		}
	}
	e.Export(clientReq())
	c := find(rcv.WaitSpans(t, waitFor, spansNamed("POST", 1)), "POST")[0]
	if _, ok := c.Attributes["http.request.body.size"]; ok {
		t.Errorf("http.request.body.size on a span although not asked for: %v", c.Attributes)
	}
	if c.Attributes["http.response.body.size"] != int64(3) {
		t.Errorf("http.response.body.size = %v, want 3", c.Attributes["http.response.body.size"])
	}
	// A client span's scheme, route and user agent are opt-in too; its
	// name still has the route.
	for _, k := range []string{"url.scheme", "url.template", "user_agent.original"} {
		if _, ok := c.Attributes[k]; ok {
			t.Errorf("%s on a client span although not asked for: %v", k, c.Attributes)
		}
	}
	r := clientReq()
	r.StatusCode, r.Path, r.Route = 200, "/orders/7", "/orders/{id}"
	e.Export(r)
	if c := find(rcv.WaitSpans(t, waitFor, spansNamed("POST /orders/{id}", 1)), "POST /orders/{id}")[0]; c.Attributes["url.template"] != nil {
		t.Errorf("url.template on a client span although not asked for: %v", c.Attributes)
	}
	// The client's metric leaves them out too: the 200 with a route and
	// the 404 without one are two series, told apart by status alone.
	ps := rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		n := 0
		for _, p := range ps {
			if p.Name == "http.client.request.duration" && p.Count > 0 {
				n++
			}
		}
		return n >= 2
	})
	for _, p := range ps {
		if p.Name != "http.client.request.duration" {
			continue
		}
		for _, k := range []string{"url.scheme", "url.template"} {
			if _, ok := p.Attributes[k]; ok {
				t.Errorf("%s on the client metric although not asked for: %v", k, p.Attributes)
			}
		}
	}
}

func TestClientSpan(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{CaptureQuery: true, OptIn: OptIn{RequestBodySize: true, ResponseBodySize: true, ClientScheme: true, ClientUserAgent: true}})
	e.Export(clientReq())
	s := rcv.WaitSpans(t, waitFor, spansNamed("POST", 1))[0]

	if s.Kind != trace.SpanKindClient {
		t.Errorf("kind = %v, want client", s.Kind)
	}
	if s.ParentSpanID.IsValid() {
		t.Errorf("root span has parent %v", s.ParentSpanID)
	}
	if s.StatusCode != codes.Error {
		t.Errorf("status = %v, want error for a client's 404", s.StatusCode)
	}
	checkAttrs(t, "span", s.Attributes, map[string]any{
		"http.request.method":       "POST",
		"url.scheme":                "http",
		"url.full":                  "http://10.0.0.9:9000/orders?dry=1",
		"http.response.status_code": int64(404),
		"error.type":                "404",
		"server.address":            "10.0.0.9",
		"server.port":               int64(9000),
		"network.peer.address":      "10.0.0.9",
		"network.peer.port":         int64(9000),
		"network.protocol.version":  "1.1",
		"user_agent.original":       "curl/8.5.0",
		"http.request.body.size":    int64(12),
		"http.response.body.size":   int64(3),
	})
	if s.Resource["service.name"] != "curl" {
		t.Errorf("service.name = %v", s.Resource["service.name"])
	}
}

// A client's route is url.template, on its span and its metric: the
// conventions give http.route to servers only. Both are opt-in there, as
// is url.scheme.
func TestClientRouteIsURLTemplate(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{OptIn: OptIn{ClientTemplate: true, ClientScheme: true}})
	r := clientReq()
	r.StatusCode, r.Path, r.Route = 200, "/orders/7", "/orders/{id}"
	e.Export(r)
	s := rcv.WaitSpans(t, waitFor, spansNamed("POST /orders/{id}", 1))[0]
	if s.Attributes["url.template"] != "/orders/{id}" || s.Attributes["http.route"] != nil {
		t.Errorf("span url.template %v, http.route %v: want /orders/{id} and none", s.Attributes["url.template"], s.Attributes["http.route"])
	}
	rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		for _, p := range ps {
			if p.Name == "http.client.request.duration" && p.Attributes["url.template"] == "/orders/{id}" && p.Attributes["http.route"] == nil &&
				p.Attributes["url.scheme"] == "http" {
				return true
			}
		}
		return false
	})
}

func TestSpanRules(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	tests := []struct {
		name   string
		edit   func(r *tracer.Request)
		span   string // expected span name
		status codes.Code
		want   map[string]any // attributes that must be present with these values
		absent []string
	}{
		{"server 404 is not an error", func(r *tracer.Request) { r.StatusCode = 404; r.Route = "/a" },
			// No route: /a was never answered with success (TestNotFoundHasNoRoute).
			"GET", codes.Unset, map[string]any{"http.response.status_code": int64(404)}, []string{"error.type"}},
		{"server 503 is an error", func(r *tracer.Request) { r.StatusCode = 503; r.Route = "/b" },
			"GET /b", codes.Error, map[string]any{"error.type": "503"}, nil},
		{"no response leaves status unset", func(r *tracer.Request) { r.StatusCode = 0; r.Route = "/c" },
			"GET /c", codes.Unset, nil, []string{"http.response.status_code", "error.type"}},
		{"HTTP/2 stream reset before the response", func(r *tracer.Request) {
			r.StatusCode, r.Route, r.ProtocolVersion, r.ErrorCode = 0, "/r", "2", "CANCEL"
		}, "GET /r", codes.Error, map[string]any{"error.type": "CANCEL", "network.protocol.version": "2"}, []string{"http.response.status_code"}},
		{"no route names the span by method", func(r *tracer.Request) { r.Method = "DELETE"; r.Route = "" },
			"DELETE", codes.Unset, nil, []string{"http.route"}},
		{"unknown method", func(r *tracer.Request) { r.Method = "PURGE"; r.Route = "/d" },
			// The conventions' name is "{method} {target}", "HTTP" for the method.
			"HTTP /d", codes.Unset, map[string]any{"http.request.method": "_OTHER", "http.request.method_original": "PURGE"}, nil},
		{"unknown method without a route", func(r *tracer.Request) { r.Method = "BREW"; r.Route = "" },
			"HTTP", codes.Unset, map[string]any{"http.request.method": "_OTHER", "http.request.method_original": "BREW"}, nil},
		{"query is not captured by default", func(r *tracer.Request) { r.Route = "/e" },
			"GET /e", codes.Unset, nil, []string{"url.query"}},
		{"host without port means 80", func(r *tracer.Request) { r.Route = "/f"; r.HostPort = 0 },
			"GET /f", codes.Unset, map[string]any{"server.address": "shop.example", "server.port": int64(80)}, nil},
		// Behind proxies: the host the client addressed, as they say,
		// and the port of the scheme it used.
		{"behind an ingress", func(r *tracer.Request) {
			r.Route, r.OriginalHost, r.OriginalScheme = "/ingress", "shop.example.com", "https"
		}, "GET /ingress", codes.Unset, map[string]any{"server.address": "shop.example.com", "server.port": int64(443), "url.scheme": "https"}, nil},
		// url.scheme is the original client request's, as the proxies
		// say (X-Forwarded-Proto), over the connection's.
		{"a TLS-terminating proxy's scheme", func(r *tracer.Request) {
			r.Route, r.OriginalScheme = "/terminated", "https"
		}, "GET /terminated", codes.Unset, map[string]any{"url.scheme": "https"}, nil},
		{"a proxy that says http over TLS", func(r *tracer.Request) {
			r.Route, r.OriginalScheme, r.TLS = "/downgraded", "http", true
		}, "GET /downgraded", codes.Unset, map[string]any{"url.scheme": "http"}, nil},
		{"a client's X-Forwarded-Proto is not its scheme", func(r *tracer.Request) {
			*r = *clientReq()
			r.Method, r.Host, r.HostPort, r.StatusCode, r.OriginalScheme = "POST", "api.internal", 9000, 200, "https"
		}, "POST", codes.Unset, map[string]any{"url.full": "http://api.internal:9000/orders"}, nil},
		{"behind a proxy that names a port", func(r *tracer.Request) {
			r.Route, r.OriginalHost, r.OriginalPort = "/proxy-port", "shop.example.com", 8443
		}, "GET /proxy-port", codes.Unset, map[string]any{"server.address": "shop.example.com", "server.port": int64(8443)}, nil},
		// A proxy that names no host may have written its own in Host
		// (nginx's $proxy_host): its scheme is the connection's.
		{"a proxy's scheme without its host", func(r *tracer.Request) {
			r.Route, r.HostPort, r.OriginalScheme = "/proxy-scheme", 0, "https"
		}, "GET /proxy-scheme", codes.Unset, map[string]any{"server.address": "shop.example", "server.port": int64(80)}, nil},
		{"a client's X-Forwarded-Host is not its server", func(r *tracer.Request) {
			*r = *clientReq()
			r.Method, r.Host, r.HostPort, r.StatusCode = "PATCH", "api.internal", 0, 200
			r.OriginalHost, r.OriginalScheme = "shop.example.com", "https"
		}, "PATCH", codes.Unset, map[string]any{"server.address": "api.internal", "server.port": int64(80)}, nil},
		{"no host header uses the local address", func(r *tracer.Request) { r.Route = "/g"; r.Host, r.HostPort = "", 0 },
			"GET /g", codes.Unset, map[string]any{"server.address": "10.0.0.2", "server.port": int64(8080)}, nil},
		{"ipv4-mapped peer", func(r *tracer.Request) {
			r.Route = "/h"
			r.Remote = netip.MustParseAddrPort("[::ffff:10.0.0.7]:6000")
		}, "GET /h", codes.Unset, map[string]any{"client.address": "10.0.0.7", "network.peer.address": "10.0.0.7"}, nil},
		{"client 0 is not an error", func(r *tracer.Request) {
			*r = *clientReq()
			r.StatusCode = 0
			r.Method = "PUT"
		}, "PUT", codes.Unset, nil, []string{"error.type", "url.query"}},
		{"client with host header", func(r *tracer.Request) {
			*r = *clientReq()
			r.Method, r.Host, r.HostPort, r.StatusCode = "HEAD", "api.internal", 0, 200
		}, "HEAD", codes.Unset, map[string]any{"url.full": "http://api.internal/orders", "server.address": "api.internal", "server.port": int64(80)}, nil},
		// TLS: the scheme is https, and its default port is 443.
		{"server over TLS", func(r *tracer.Request) { r.Route, r.TLS = "/tls", true },
			"GET /tls", codes.Unset, map[string]any{"url.scheme": "https"}, nil},
		{"client over TLS, no port: 443", func(r *tracer.Request) {
			*r = *clientReq()
			r.Method, r.Host, r.HostPort, r.StatusCode, r.TLS = "OPTIONS", "api.internal", 0, 200, true
		}, "OPTIONS", codes.Unset, map[string]any{"url.full": "https://api.internal/orders", "server.port": int64(443)}, nil},
		{"client over TLS, port 80", func(r *tracer.Request) {
			*r = *clientReq()
			r.Method, r.Host, r.HostPort, r.StatusCode, r.TLS = "TRACE", "api.internal", 80, 200, true
		}, "TRACE", codes.Unset, map[string]any{"url.full": "https://api.internal:80/orders"}, nil},
	}
	for _, tt := range tests {
		r := serverReq()
		tt.edit(r)
		e.Export(r)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := rcv.WaitSpans(t, waitFor, spansNamed(tt.span, 1))
			got := find(s, tt.span)[0]
			if got.StatusCode != tt.status {
				t.Errorf("status = %v, want %v", got.StatusCode, tt.status)
			}
			for k, v := range tt.want {
				if !reflect.DeepEqual(got.Attributes[k], v) {
					t.Errorf("%s = %#v, want %#v", k, got.Attributes[k], v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := got.Attributes[k]; ok {
					t.Errorf("%s = %#v, want absent", k, v)
				}
			}
		})
	}
}

// OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS (Config.KnownMethods) replaces
// the conventions' list of methods whole: a WebDAV server's PROPFIND is
// named, and POST, not in the list, is _OTHER, on spans and metrics alike.
func TestKnownMethodsOverride(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{KnownMethods: map[string]bool{"GET": true, "PROPFIND": true}})
	dav := serverReq()
	dav.Method, dav.Route, dav.StatusCode = "PROPFIND", "/dav", 207
	e.Export(dav)
	post := serverReq()
	post.Method, post.Route = "POST", "/p"
	e.Export(post)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(find(s, "PROPFIND /dav")) > 0 && len(find(s, "HTTP /p")) > 0 })
	if s := find(spans, "PROPFIND /dav")[0]; s.Attributes["http.request.method"] != "PROPFIND" || s.Attributes["http.request.method_original"] != nil {
		t.Errorf("PROPFIND span: %v", s.Attributes)
	}
	if s := find(spans, "HTTP /p")[0]; s.Attributes["http.request.method"] != "_OTHER" || s.Attributes["http.request.method_original"] != "POST" {
		t.Errorf("POST span: %v", s.Attributes)
	}
	rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		methods := map[any]bool{}
		for _, p := range ps {
			if p.Name == "http.server.request.duration" {
				methods[p.Attributes["http.request.method"]] = true
			}
		}
		return methods["PROPFIND"] && methods["_OTHER"] && !methods["POST"]
	})
}

// exportEach exports a server request of each of procs, in turn.
func exportEach(e *Exporter, procs ...*pod.Process) {
	for _, p := range procs {
		r := serverReq()
		r.Process = p
		e.Export(r)
	}
}

// exportFrom is exportEach, then the spans the receiver got of them.
func exportFrom(t *testing.T, e *Exporter, rcv *otlptest.Receiver, procs ...*pod.Process) []otlptest.Span {
	t.Helper()
	exportEach(e, procs...)
	return rcv.WaitSpans(t, waitFor, spansNamed("GET /users/{id}", len(procs)))
}

func TestResourcePerProcess(t *testing.T) {
	t.Run("executable names", func(t *testing.T) {
		e, rcv, _ := startOTLP(t, Config{})
		other := &pod.Process{PID: 413, Exe: "/usr/bin/node", Name: "node"}
		spans := exportFrom(t, e, rcv, python, other, python)
		names := map[string]int64{}
		for _, s := range spans {
			names[s.Resource["service.name"].(string)] = s.Resource["process.pid"].(int64)
		}
		if want := map[string]int64{"python3": 412, "node": 413}; !reflect.DeepEqual(names, want) {
			t.Errorf("services = %v, want %v", names, want)
		}
		if got := e.Stats().Processes; got != 2 {
			t.Errorf("Processes = %d, want 2", got)
		}
	})
	t.Run("service.instance.id", func(t *testing.T) {
		// Two workers of one server (nginx's, gunicorn's) differ in
		// process.pid alone, which a Prometheus translation drops: their
		// service.instance.id tells them apart, and stays the same for
		// a process's life.
		e, rcv, _ := startOTLP(t, Config{})
		worker1 := &pod.Process{PID: 501, Exe: "/usr/sbin/nginx", Name: "nginx"}
		worker2 := &pod.Process{PID: 502, Exe: "/usr/sbin/nginx", Name: "nginx"}
		spans := exportFrom(t, e, rcv, worker1, worker2, worker1)
		ids := map[int64]map[string]bool{}
		for _, s := range spans {
			pid := s.Resource["process.pid"].(int64)
			id, _ := s.Resource["service.instance.id"].(string)
			if u, err := uuid.Parse(id); err != nil || u.Version() != 5 {
				t.Errorf("pid %d: service.instance.id %q is not a UUID v5", pid, id)
			}
			if ids[pid] == nil {
				ids[pid] = map[string]bool{}
			}
			ids[pid][id] = true
		}
		if len(ids[501]) != 1 || len(ids[502]) != 1 {
			t.Fatalf("ids per pid: %v", ids)
		}
		if reflect.DeepEqual(ids[501], ids[502]) {
			t.Errorf("both workers have service.instance.id %v", ids[501])
		}
	})
	t.Run("environment", func(t *testing.T) {
		rcv := otlptest.Start(t)
		otlpEnv(t, rcv.URL())
		t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,k8s.pod.name=override")
		t.Setenv("OTEL_SERVICE_NAME", "shop")
		logger, _ := testLogger(t)
		e, err := New(context.Background(), Config{TracesOTLP: true, Metadata: meta}, logger)
		if err != nil {
			t.Fatal(err)
		}
		defer shutdown(t, e)
		e.Export(serverReq())
		s := rcv.WaitSpans(t, waitFor, spansNamed("GET /users/{id}", 1))[0]
		for k, v := range map[string]any{
			"service.name":                "shop",
			"deployment.environment.name": "staging",
			"k8s.pod.name":                "override",
			"process.executable.name":     "python3",
		} {
			if s.Resource[k] != v {
				t.Errorf("resource %s = %v, want %v", k, s.Resource[k], v)
			}
		}
	})
	t.Run("config service name wins", func(t *testing.T) {
		e, rcv, _ := startOTLP(t, Config{ServiceName: "checkout"})
		e.Export(serverReq())
		s := rcv.WaitSpans(t, waitFor, spansNamed("GET /users/{id}", 1))[0]
		if s.Resource["service.name"] != "checkout" {
			t.Errorf("service.name = %v", s.Resource["service.name"])
		}
	})
}

func TestSampling(t *testing.T) {
	t.Run("unsampled parent is honoured", func(t *testing.T) {
		e, rcv, _ := startOTLP(t, Config{})
		r := serverReq()
		r.Parent = r.Parent.WithTraceFlags(0)
		r.Route = "/unsampled"
		e.Export(r)
		marker := serverReq()
		marker.Route = "/marker"
		marker.Parent = trace.SpanContext{}
		e.Export(marker)
		spans := rcv.WaitSpans(t, waitFor, spansNamed("GET /marker", 1))
		if got := find(spans, "GET /unsampled"); len(got) != 0 {
			t.Errorf("unsampled request made a span: %v", got)
		}
		// The metric still counts it.
		rcv.WaitMetric(t, waitFor, hasPoint("http.server.request.duration", "/unsampled", 1))
	})
	t.Run("always_off from the environment", func(t *testing.T) {
		rcv := otlptest.Start(t)
		otlpEnv(t, rcv.URL())
		t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
		logger, _ := testLogger(t)
		e, err := New(context.Background(), Config{TracesOTLP: true, MetricsOTLP: true}, logger)
		if err != nil {
			t.Fatal(err)
		}
		e.Export(serverReq())
		rcv.WaitMetric(t, waitFor, hasPoint("http.server.request.duration", "/users/{id}", 1))
		shutdown(t, e)
		if s := rcv.Spans(); len(s) != 0 {
			t.Errorf("always_off exported %d spans", len(s))
		}
	})
}

// pointWith waits for a point of metric name whose attribute key is value.
func pointWith(name, key string, value any) func([]otlptest.MetricPoint) bool {
	return func(ps []otlptest.MetricPoint) bool {
		return slices.ContainsFunc(ps, func(p otlptest.MetricPoint) bool { return p.Name == name && p.Attributes[key] == value })
	}
}

func hasPoint(name, route string, count uint64) func([]otlptest.MetricPoint) bool {
	return func(ps []otlptest.MetricPoint) bool { return lastPoint(ps, name, route).Count >= count }
}

// lastPoint returns the newest point of a cumulative series.
func lastPoint(ps []otlptest.MetricPoint, name, route string) otlptest.MetricPoint {
	var last otlptest.MetricPoint
	for _, p := range ps {
		if p.Name == name && (route == "" || p.Attributes["http.route"] == route) {
			last = p
		}
	}
	return last
}

func TestMetrics(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	for range 3 {
		e.Export(serverReq()) // 1.234 ms
	}
	slow := serverReq()
	slow.End = slow.Start.Add(300 * time.Millisecond)
	slow.StatusCode = 500
	e.Export(slow)
	e.Export(clientReq()) // 3 ms, 404

	ps := rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		var n uint64
		for _, p := range ps {
			if p.Name == "http.server.request.duration" {
				n = max(n, p.Count)
			}
		}
		return n >= 3 && lastPoint(ps, "http.client.request.duration", "").Count >= 1
	})
	bounds := []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

	var ok, failed otlptest.MetricPoint
	for _, p := range ps {
		if p.Name != "http.server.request.duration" {
			continue
		}
		switch p.Attributes["http.response.status_code"] {
		case int64(200):
			ok = p
		case int64(500):
			failed = p
		}
	}
	if ok.Unit != "s" || ok.Type != "histogram" || !reflect.DeepEqual(ok.Bounds, bounds) {
		t.Errorf("server histogram: unit %q type %q bounds %v", ok.Unit, ok.Type, ok.Bounds)
	}
	if ok.Count != 3 || ok.BucketCounts[0] != 3 || abs(ok.Sum-3*0.001234) > 1e-9 {
		t.Errorf("200 point: count %d sum %v buckets %v", ok.Count, ok.Sum, ok.BucketCounts)
	}
	checkAttrs(t, "200 point", ok.Attributes, map[string]any{
		"http.request.method":       "GET",
		"http.response.status_code": int64(200),
		"http.route":                "/users/{id}",
		"network.protocol.name":     "http",
		"network.protocol.version":  "1.1",
		"url.scheme":                "http",
	})
	if failed.Count != 1 || failed.BucketCounts[7] != 1 || failed.Attributes["error.type"] != "500" {
		t.Errorf("500 point: count %d buckets %v attrs %v", failed.Count, failed.BucketCounts, failed.Attributes)
	}
	if ok.Resource["service.name"] != "python3" {
		t.Errorf("resource service.name = %v", ok.Resource["service.name"])
	}

	cli := lastPoint(ps, "http.client.request.duration", "")
	checkAttrs(t, "client point", cli.Attributes, map[string]any{
		"http.request.method":       "POST",
		"http.response.status_code": int64(404),
		"error.type":                "404",
		"network.protocol.name":     "http",
		"network.protocol.version":  "1.1",
		"server.address":            "10.0.0.9",
		"server.port":               int64(9000),
	})
	if cli.Resource["service.name"] != "curl" {
		t.Errorf("client resource service.name = %v", cli.Resource["service.name"])
	}
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func TestNewValidates(t *testing.T) {
	t.Setenv("OTEL_TRACES_SAMPLER", "sometimes")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "novalue")
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "-3")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "10s")
	_, err := New(context.Background(), Config{Printer: "yaml", QueueSize: -1}, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("New accepted a bad configuration")
	}
	for _, want := range []string{"printer", "queue size", "OTEL_TRACES_SAMPLER", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_METRIC_EXPORT_INTERVAL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
	t.Setenv("OTEL_TRACES_SAMPLER", "traceidratio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "1.5")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "")
	if _, err := New(context.Background(), Config{}, nil); err == nil || !strings.Contains(err.Error(), "OTEL_TRACES_SAMPLER_ARG") {
		t.Errorf("bad ratio: err = %v", err)
	}
}

func TestDoubleShutdown(t *testing.T) {
	e, _, _ := startOTLP(t, Config{})
	e.Export(serverReq())
	ctx := context.Background()
	err1 := e.Shutdown(ctx)
	err2 := e.Shutdown(ctx)
	if err1 != nil || err2 != nil {
		t.Errorf("Shutdown twice: %v, %v", err1, err2)
	}
	before := e.Stats().DroppedRequests
	e.Export(serverReq()) // after Shutdown: counted, no panic
	if got := e.Stats().DroppedRequests; got != before+1 {
		t.Errorf("DroppedRequests after Shutdown = %d, want %d", got, before+1)
	}
}

// freeAddr returns an address nothing listens on: a collector that is down.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestCollectorDown(t *testing.T) {
	otlpEnv(t, "http://"+freeAddr(t))
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
	testBadCollector(t)
}

func TestCollectorHangs(t *testing.T) {
	rcv := otlptest.Start(t, otlptest.WithHang())
	otlpEnv(t, rcv.URL())
	// Metric exports every 100 ms: one is under way, hanging, at the
	// shutdown, which must still keep its deadline.
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
	testBadCollector(t)
	if tr, _ := rcv.Calls(); tr == 0 {
		t.Error("the hanging collector was never called")
	}
}

// testBadCollector floods the exporter while the collector is unusable and
// checks that the caller never waits, memory stays bounded, drops are
// counted and logged, and Shutdown keeps its deadline.
func testBadCollector(t *testing.T) {
	defer func(d time.Duration) { reportInterval = d }(reportInterval)
	reportInterval = 50 * time.Millisecond
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "256")
	logger, logs := testLogger(t)
	e, err := New(context.Background(), Config{TracesOTLP: true, MetricsOTLP: true, Printer: "off", QueueSize: 512, Metadata: meta}, logger)
	if err != nil {
		t.Fatal(err)
	}

	heapBefore := heapInUse()
	const n = 200_000
	start := time.Now()
	var slowest time.Duration
	for i := range n {
		r := serverReq()
		r.Parent = trace.SpanContext{}
		r.Path = "/users/" + string(rune('a'+i%26))
		t1 := time.Now()
		e.Export(r)
		slowest = max(slowest, time.Since(t1))
	}
	elapsed := time.Since(start)
	// Generous bounds: this guards against blocking (which would take
	// export timeouts, i.e. seconds), not against being slow.
	if elapsed > 20*time.Second || slowest > time.Second {
		t.Errorf("Export blocked: %d calls took %v, slowest %v", n, elapsed, slowest)
	}
	// Let the worker catch up, then look at what is held.
	deadline := time.Now().Add(waitFor)
	for len(e.queue) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	grown := int64(heapInUse()) - int64(heapBefore)
	// 200k spans held would be hundreds of MB; the queues hold under 1k.
	if grown > 50<<20 {
		t.Errorf("heap grew by %d MB while the collector was unusable", grown>>20)
	}

	s := e.Stats()
	t.Logf("stats: %+v, heap growth %d KB, %d Exports in %v", s, grown>>10, n, elapsed)
	if s.Requests != n {
		t.Errorf("Requests = %d, want %d", s.Requests, n)
	}
	if s.DroppedSpans+s.DroppedRequests == 0 {
		t.Error("nothing dropped although the collector is unusable")
	}
	if s.ExportedSpans != 0 {
		t.Errorf("ExportedSpans = %d, want 0", s.ExportedSpans)
	}
	for _, k := range e.sinks {
		if in := k.inflight.Load(); in > k.limit {
			t.Errorf("%s: %d spans in flight, limit %d", k.name, in, k.limit)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	t1 := time.Now()
	err = e.Shutdown(ctx)
	took := time.Since(t1)
	t.Logf("Shutdown with a 500ms deadline took %v: %v", took, err)
	if took > 3*time.Second {
		t.Errorf("Shutdown took %v with a 500ms deadline", took)
	}
	if err == nil {
		t.Error("Shutdown reported success although nothing could be sent")
	}
	if err := e.Shutdown(context.Background()); err == nil {
		t.Error("second Shutdown should repeat the first's error")
	}
	if !strings.Contains(logs.String(), "dropped") {
		t.Errorf("drops were not logged:\n%s", logs.String())
	}
}

func TestExportFailuresCounted(t *testing.T) {
	defer func(d time.Duration) { reportInterval = d }(reportInterval)
	reportInterval = 50 * time.Millisecond
	// PermissionDenied is not retried, so failures show at once.
	e, rcv, logs := startOTLP(t, Config{}, otlptest.WithError(status.Error(grpccodes.PermissionDenied, "go away")))
	e.Export(serverReq())
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		s := e.Stats()
		if s.FailedSpans > 0 && s.FailedMetricExports > 0 && strings.Contains(logs.String(), "metric export failed") &&
			strings.Contains(logs.String(), "span export failed") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s := e.Stats()
	if s.FailedSpans != 1 || s.FailedMetricExports == 0 {
		t.Errorf("stats %+v, want 1 failed span and failed metric exports", s)
	}
	if !e.Failing() {
		t.Error("Failing() = false after failed exports")
	}
	if !strings.Contains(logs.String(), "go away") {
		t.Errorf("the collector's error was not logged:\n%s", logs.String())
	}
	// The collector recovers: later spans arrive.
	rcv.Set()
	r := serverReq()
	r.Route = "/later"
	e.Export(r)
	rcv.WaitSpans(t, waitFor, spansNamed("GET /later", 1))
	for deadline := time.Now().Add(waitFor); e.Failing(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Failing() = true after the collector took spans again")
		}
	}
}

// TestFailingBeforeMetrics: a collector that refused the spans is failing
// though no metric export was tried yet (they go out once a minute): a
// pod that ends in its first minute with its collector down must not
// hold its flush ten seconds for the metrics (TestCollectorDown).
func TestFailingBeforeMetrics(t *testing.T) {
	rcv := otlptest.Start(t, otlptest.WithError(status.Error(grpccodes.PermissionDenied, "go away")))
	otlpEnv(t, rcv.URL())
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
	logger, _ := testLogger(t)
	e, err := New(context.Background(), Config{TracesOTLP: true, MetricsOTLP: true, Metadata: meta}, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, e) })
	if e.Failing() {
		t.Fatal("Failing() = true before any export")
	}
	e.Export(serverReq())
	for deadline := time.Now().Add(waitFor); !e.Failing(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Failing() = false after the spans' export failed, no metric export tried (stats %+v)", e.Stats())
		}
	}
	if s := e.Stats(); s.FailedMetricExports != 0 {
		t.Errorf("%d metric exports failed: the test meant none tried", s.FailedMetricExports)
	}
}

func TestIdleProcessesReleased(t *testing.T) {
	defer func(i, s time.Duration, m int) { idleTimeout, sweepInterval, maxProcesses = i, s, m }(idleTimeout, sweepInterval, maxProcesses)
	idleTimeout, sweepInterval, maxProcesses = 100*time.Millisecond, 20*time.Millisecond, 2

	e, rcv, _ := startOTLP(t, Config{})
	for pid := 1; pid <= 3; pid++ {
		r := serverReq()
		r.Process = &pod.Process{PID: pid, Name: "worker"}
		e.Export(r)
	}
	// The bound holds at once: the third process released the first.
	deadline := time.Now().Add(waitFor)
	for e.Stats().Requests != 3 || len(e.queue) > 0 {
		time.Sleep(time.Millisecond)
		if time.Now().After(deadline) {
			t.Fatal("requests not handled")
		}
	}
	if got := e.Stats().Processes; got > 2 {
		t.Errorf("Processes = %d, want at most maxProcesses (2)", got)
	}
	// Idle, everything goes, and each process's last metric points are
	// flushed on the way out.
	for e.Stats().Processes != 0 {
		time.Sleep(10 * time.Millisecond)
		if time.Now().After(deadline) {
			t.Fatalf("processes not released: %+v", e.Stats())
		}
	}
	rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		pids := map[int64]bool{}
		for _, p := range ps {
			pids[p.Resource["process.pid"].(int64)] = true
		}
		return len(pids) == 3
	})
	// A process that comes back gets fresh providers (one that runs: an
	// exited one would go again at the second sweep).
	r := serverReq()
	r.Route = "/back"
	r.Process = &pod.Process{PID: os.Getpid(), Name: "worker"}
	e.Export(r)
	rcv.WaitSpans(t, waitFor, spansNamed("GET /back", 1))
	if got := e.Stats().Processes; got != 1 {
		t.Errorf("Processes = %d, want 1", got)
	}
}

// A process that exited goes at the second sweep without a request, its
// last points exported, long before idleTimeout; one that runs stays.
func TestExitedProcessesReleased(t *testing.T) {
	defer func(i, s time.Duration) { idleTimeout, sweepInterval = i, s }(idleTimeout, sweepInterval)
	idleTimeout, sweepInterval = time.Hour, 20*time.Millisecond

	exited := exec.Command("sleep", "0")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e, rcv, _ := startOTLP(t, Config{})
	exportEach(e, &pod.Process{PID: exited.Process.Pid, Exe: exited.Path, Name: "sleep"}, &pod.Process{PID: os.Getpid(), Exe: self, Name: "exporter.test"})
	deadline := time.Now().Add(waitFor)
	for e.Stats().Requests != 2 || e.Stats().Processes != 1 {
		time.Sleep(5 * time.Millisecond)
		if time.Now().After(deadline) {
			t.Fatalf("the exited process not released: %+v", e.Stats())
		}
	}
	rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		for _, p := range ps {
			if p.Resource["process.pid"].(int64) == int64(exited.Process.Pid) {
				return true
			}
		}
		return false
	})
	time.Sleep(10 * sweepInterval)
	if got := e.Stats().Processes; got != 1 {
		t.Errorf("Processes = %d: the running process was released too", got)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func TestMetricsOnly(t *testing.T) {
	rcv := otlptest.Start(t)
	otlpEnv(t, rcv.URL())
	var printed testenv.Buffer
	logger, _ := testLogger(t)
	// A metrics endpoint and no traces endpoint, printer explicitly off: no
	// spans are even created.
	e, err := New(context.Background(), Config{MetricsOTLP: true, Printer: "off", PrinterOut: &printed}, logger)
	if err != nil {
		t.Fatal(err)
	}
	e.Export(serverReq())
	rcv.WaitMetric(t, waitFor, hasPoint("http.server.request.duration", "/users/{id}", 1))
	shutdown(t, e)
	if len(rcv.Spans()) != 0 || printed.String() != "" {
		t.Errorf("spans went somewhere: %d received, printed %q", len(rcv.Spans()), printed.String())
	}
	if len(e.sinks) != 0 {
		t.Errorf("%d span sinks, want none", len(e.sinks))
	}
}

func TestPrinterOffWithTracesEndpoint(t *testing.T) {
	var printed testenv.Buffer
	e, rcv, _ := startOTLP(t, Config{PrinterOut: &printed})
	e.Export(serverReq())
	rcv.WaitSpans(t, waitFor, spansNamed("GET /users/{id}", 1))
	shutdown(t, e)
	if printed.String() != "" {
		t.Errorf("printed with a traces endpoint set: %q", printed.String())
	}
}

// TestBatcher: requests handed over in batches all become spans, in one
// wake-up of the worker per batch, and the queue bound counts requests, not
// batches: what does not fit is dropped and counted exactly.
func TestBatcher(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	b := e.NewBatcher()
	const n = 3*maxBatch + 10 // full batches flush by themselves
	for i := range n {
		r := serverReq()
		r.Route = fmt.Sprintf("/batched/%d", i%3)
		b.Add(r)
	}
	b.Flush()
	b.Flush() // nothing left: a no-op
	rcv.WaitSpans(t, waitFor, func(spans []otlptest.Span) bool { return len(spans) >= n })
	if s := e.Stats(); s.Requests != n || s.DroppedRequests != 0 {
		t.Errorf("stats %+v, want %d requests, none dropped", s, n)
	}

	// Without a worker, the queue fills: QueueSize requests are taken.
	q := benchNew(t, nil, nil)
	q.cfg.QueueSize = 100
	qb := q.NewBatcher()
	for range 70 {
		qb.Add(serverReq())
	}
	qb.Flush()
	for range 70 {
		qb.Add(serverReq())
	}
	qb.Flush()
	q.Export(serverReq())
	if s := q.Stats(); s.Requests != 141 || s.DroppedRequests != 41 || q.queued.Load() != 100 {
		t.Errorf("stats %+v, %d queued; want 141 requests, 41 dropped, 100 queued", s, q.queued.Load())
	}
}

// TestInvalidUTF8: captured bytes are not always UTF-8 (a Latin-1 path, a
// binary key, a garbage stream that looked like a request). OTLP strings
// must be, and one bad string would fail the whole batch, or every metric
// export of its process from then on. Such strings arrive with U+FFFD in
// place of the bad bytes, and the requests around them are not lost.
func TestInvalidUTF8(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	bad := serverReq()
	bad.Method, bad.Path, bad.Route, bad.UserAgent, bad.Host = "G\xffT", "/caf\xe9", "/caf\xe9", "agent\xc3", "h\xfest"
	e.Export(bad)
	good := serverReq()
	good.Route = "/fine"
	e.Export(good)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) >= 2 })
	var got *otlptest.Span
	for i := range spans {
		if spans[i].Name != "GET /fine" {
			got = &spans[i]
		}
	}
	if got == nil {
		t.Fatalf("spans %v: the one with bad bytes is missing", spans)
	}
	want := map[string]any{"url.path": "/caf\uFFFD", "http.route": "/caf\uFFFD", "user_agent.original": "agent\uFFFD", "server.address": "h\uFFFDst", "http.request.method_original": "G\uFFFDT"}
	for k, v := range want {
		if got.Attributes[k] != v {
			t.Errorf("%s = %q, want %q", k, got.Attributes[k], v)
		}
	}
	rcv.WaitMetric(t, waitFor, func(points []otlptest.MetricPoint) bool {
		for _, p := range points {
			if p.Name == "http.server.request.duration" && p.Attributes["http.route"] == "/caf\uFFFD" {
				return true
			}
		}
		return false
	})
	if s := e.Stats(); s.FailedSpans != 0 || s.FailedMetricExports != 0 {
		t.Errorf("stats %+v: exports failed", s)
	}
}

// TestInvalidUTF8Resource: a process whose executable path and arguments
// (exported when asked for) are not UTF-8 still gets its spans through.
func TestInvalidUTF8Resource(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{CommandArgs: true})
	r := serverReq()
	r.Process = &pod.Process{PID: 99, Exe: "/opt/\xffapp", Name: "\xffapp", Cmdline: []string{"/opt/\xffapp", "--name=caf\xe9"}}
	e.Export(r)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) >= 1 })
	res := spans[0].Resource
	if res["process.executable.path"] != "/opt/\uFFFDapp" || res["service.name"] != "\uFFFDapp" {
		t.Errorf("resource %v", res)
	}
	if args, _ := res["process.command_args"].([]any); len(args) != 2 || args[1] != "--name=caf\uFFFD" {
		t.Errorf("process.command_args = %#v", res["process.command_args"])
	}
}

// TestNotFoundHasNoRoute: a 404 on a route the process never served has no
// http.route: the paths a scanner tries make no series of their own.
func TestNotFoundHasNoRoute(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	for _, path := range []string{"/wp-admin", "/phpmyadmin", "/.env"} {
		r := serverReq()
		r.Path, r.Route, r.StatusCode = path, path, 404
		e.Export(r)
	}
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) >= 3 })
	for _, s := range spans {
		if s.Name != "GET" || s.Attributes["http.route"] != nil || s.Attributes["url.path"] == nil {
			t.Errorf("span %q: route %v, path %v; want GET, no route, the path", s.Name, s.Attributes["http.route"], s.Attributes["url.path"])
		}
	}
	// A route the process has served keeps its 404s: a user not found.
	found, missing := serverReq(), serverReq()
	missing.StatusCode = 404
	e.Export(found)
	e.Export(missing)
	rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool {
		n := 0
		for _, sp := range s {
			if sp.Name == "GET /users/{id}" && sp.Attributes["http.response.status_code"] == int64(404) {
				n++
			}
		}
		return n == 1
	})
	points := rcv.WaitMetric(t, waitFor, func(points []otlptest.MetricPoint) bool {
		for _, p := range points {
			if p.Name == "http.server.request.duration" && p.Attributes["http.response.status_code"] != nil {
				return true
			}
		}
		return false
	})
	series := map[string]bool{} // each export repeats the series: count attribute sets
	for _, p := range points {
		if p.Name == "http.server.request.duration" {
			series[fmt.Sprint(p.Attributes)] = true // fmt sorts map keys
			if p.Attributes["http.route"] != nil && p.Attributes["http.route"] != "/users/{id}" {
				t.Errorf("404 point with http.route %v", p.Attributes["http.route"])
			}
		}
	}
	if len(series) != 3 { // the scanner's 404s, and /users/{id} with 200 and with 404
		t.Errorf("%d series, want 3: %v", len(series), series)
	}
}

// TestRoutesLearntPerRole: a route the process called as a client is not
// one of its own: its own 404s there have no route.
func TestRoutesLearntPerRole(t *testing.T) {
	s := &process{routes: make(map[routeKey]struct{})}
	s.routeOf(true, "/users/{id}", 200)
	if got := s.routeOf(false, "/users/{id}", 404); got != "" {
		t.Errorf("server 404 route %q after a client's 200", got)
	}
	if got := s.routeOf(true, "/users/{id}", 404); got != "/users/{id}" {
		t.Errorf("client 404 route %q, want it kept", got)
	}
	s.routeOf(false, "/users/{id}", 302)
	if got := s.routeOf(false, "/users/{id}", 404); got != "/users/{id}" {
		t.Errorf("server 404 route %q after its own redirect, want it kept", got)
	}
	// A scanner's paths refused by an authentication layer or a router
	// (401, 403, 400, 405) are no more routes than its 404s.
	for _, status := range []int{400, 401, 403, 405} {
		if got := s.routeOf(false, "/.env", status); got != "" {
			t.Errorf("route %q for a never-answered path refused with %d", got, status)
		}
	}
	if got := s.routeOf(false, "/users/{id}", 403); got != "/users/{id}" {
		t.Errorf("403 for a known route: %q, want it kept", got)
	}
	// A server error keeps its route: the route exists, and fails.
	if got := s.routeOf(false, "/orders/{id}", 500); got != "/orders/{id}" {
		t.Errorf("500 route %q, want it kept", got)
	}
}

// TestResetAfterResponseHeadersFails: an HTTP/2 response reset after its
// headers (a 200 whose body was cut short) failed the client: error.type is
// the reset. The server did not fail (its client cancelled a video's range,
// a prefetch); a reset before any response fails either.
func TestResetAfterResponseHeadersFails(t *testing.T) {
	if got := httpErrorType(tracer.RoleClient, 200, "INTERNAL_ERROR"); got != "INTERNAL_ERROR" {
		t.Errorf("client: error.type %q, want INTERNAL_ERROR", got)
	}
	if got := httpErrorType(tracer.RoleServer, 206, "CANCEL"); got != "" {
		t.Errorf("server: error.type %q for a response its client cancelled", got)
	}
	for _, role := range []tracer.Role{tracer.RoleServer, tracer.RoleClient} {
		if got := httpErrorType(role, 0, "CANCEL"); got != "CANCEL" {
			t.Errorf("%v: error.type %q for a reset before the response, want CANCEL", role, got)
		}
		if got := httpErrorType(role, 200, ""); got != "" {
			t.Errorf("%v: error.type %q for a plain 200", role, got)
		}
	}
}

// TestShutdownSpansBesideHangingMetrics: at shutdown the last spans go out
// while the final metric exports run, not after them: a metrics endpoint
// that hangs (another collector than the traces') must not use up the
// deadline the spans needed.
func TestShutdownSpansBesideHangingMetrics(t *testing.T) {
	traces := otlptest.Start(t)
	metrics := otlptest.Start(t, otlptest.WithHang())
	otlpEnv(t, traces.URL())
	t.Setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics.URL())
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000") // only the final export
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")     // the span waits for the shutdown
	logger, _ := testLogger(t)
	e, err := New(context.Background(), Config{TracesOTLP: true, MetricsOTLP: true, Printer: "off", QueueSize: 512, Metadata: meta}, logger)
	if err != nil {
		t.Fatal(err)
	}
	e.Export(serverReq())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_ = e.Shutdown(ctx) // the metric export's deadline error is expected
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Shutdown took %v with a 2 s deadline", took)
	}
	if got := len(traces.Spans()); got != 1 {
		t.Errorf("%d spans reached the healthy traces endpoint, want 1 (stats %+v)", got, e.Stats())
	}
	if _, m := metrics.Calls(); m == 0 {
		t.Error("the hanging metrics endpoint was never called: the test proves nothing")
	}
}

// Signed URLs' signatures and credentials are redacted in a captured
// query, as the conventions want by default (url.query, url.full): the
// key stays, the value is REDACTED; matched case-sensitively.
func TestQueryRedacted(t *testing.T) {
	for q, want := range map[string]string{
		"q=otel":               "q=otel",
		"q=otel&sig=abc%2Fdef": "q=otel&sig=REDACTED",
		"X-Amz-Credential=AKIA%2F20261207&X-Amz-Signature=f00d&X-Amz-Expires=60": "X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Expires=60",
		"X-Amz-Security-Token=t&X-Goog-Signature=g":                              "X-Amz-Security-Token=REDACTED&X-Goog-Signature=REDACTED",
		"Sig=abc&xsig=abc&sig": "Sig=abc&xsig=abc&sig",
		"sig=":                 "sig=REDACTED",
	} {
		if got := redactQuery(q); got != want {
			t.Errorf("redactQuery(%q) = %q, want %q", q, got, want)
		}
	}

	e, rcv, _ := startOTLP(t, Config{CaptureQuery: true})
	srv := serverReq()
	srv.Route, srv.Query = "/blob", "name=a&sig=secret"
	e.Export(srv)
	cli := clientReq()
	cli.Query = "X-Goog-Signature=secret&x=1"
	e.Export(cli)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(find(s, "GET /blob")) > 0 && len(find(s, "POST")) > 0 })
	if q := find(spans, "GET /blob")[0].Attributes["url.query"]; q != "name=a&sig=REDACTED" {
		t.Errorf("server url.query %v", q)
	}
	if u := find(spans, "POST")[0].Attributes["url.full"]; u != "http://10.0.0.9:9000/orders?X-Goog-Signature=REDACTED&x=1" {
		t.Errorf("client url.full %v", u)
	}
}

// Behind a proxy, a server span's client.address is the client the proxy
// named (Request.ForwardedFor), network.peer.address the proxy; client.port,
// when asked for, is the one the proxy named, and none when it named none
// (the peer's would be the proxy's). A gRPC server span gets the same
// client.address; without proxies, the peer's.
func TestClientBehindProxy(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{OptIn: OptIn{ClientPort: true}})
	r := serverReq()
	r.Route, r.ForwardedFor = "/proxied", netip.MustParseAddrPort("203.0.113.7:0")
	e.Export(r)
	withPort := serverReq()
	withPort.Route, withPort.ForwardedFor = "/proxied-port", netip.MustParseAddrPort("[2001:db8::17]:4711")
	e.Export(withPort)
	direct := serverReq()
	direct.Route = "/direct"
	e.Export(direct)
	for _, fwd := range []netip.AddrPort{{}, netip.MustParseAddrPort("198.51.100.1:0")} {
		g := otherReq(tracer.ProtoGRPC, tracer.RoleServer)
		g.RPCService, g.RPCMethod, g.GRPCStatus, g.ForwardedFor = "shop.Orders", "Get", 0, fwd
		if fwd.IsValid() {
			g.RPCMethod = "GetProxied"
		}
		e.Export(g)
	}
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) >= 5 })
	for name, want := range map[string]map[string]any{
		"GET /proxied":           {"client.address": "203.0.113.7", "network.peer.address": "10.0.0.1", "client.port": nil},
		"GET /proxied-port":      {"client.address": "2001:db8::17", "client.port": int64(4711)},
		"GET /direct":            {"client.address": "10.0.0.1", "client.port": int64(5555)},
		"shop.Orders/Get":        {"client.address": "10.0.0.9"},
		"shop.Orders/GetProxied": {"client.address": "198.51.100.1", "network.peer.address": "10.0.0.9"},
	} {
		s := find(spans, name)
		if len(s) != 1 {
			t.Errorf("%s: %d spans", name, len(s))
			continue
		}
		for k, v := range want {
			if got := s[0].Attributes[k]; got != v {
				t.Errorf("%s: %s = %v, want %v", name, k, got, v)
			}
		}
	}
}

// Spans of long URLs make batches larger than the 4 MiB a gRPC server
// (the receiver here, the Collector's) takes: every span still arrives,
// in smaller requests.
func TestLargeSpansUnderReceiveLimit(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	long := "/" + strings.Repeat("a", 12<<10)
	for range 600 {
		r := serverReq()
		r.Path, r.Route = long, "/long"
		e.Export(r)
	}
	rcv.WaitSpans(t, 3*waitFor, func(s []otlptest.Span) bool { return len(s) >= 600 })
	if s := e.Stats(); s.FailedSpans != 0 {
		t.Errorf("%d spans failed", s.FailedSpans)
	}
}

// A collector that takes an export but rejects some spans (OTLP partial
// success): those are counted failed, the others exported, and the
// collector is not taken for failing.
func TestPartialSuccess(t *testing.T) {
	e, rcv, logs := startOTLP(t, Config{}, otlptest.WithRejectedSpans(3))
	for range 10 {
		e.Export(serverReq())
	}
	deadline := time.Now().Add(waitFor)
	for e.Stats().ExportedSpans+e.Stats().FailedSpans < 10 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// Three rejected per export, whatever the batches were.
	s, stored := e.Stats(), uint64(len(rcv.Spans()))
	if s.ExportedSpans != stored || s.FailedSpans != 10-stored || s.FailedSpans < 3 {
		t.Errorf("exported %d, failed %d; the receiver stored %d of 10\n%s", s.ExportedSpans, s.FailedSpans, stored, logs.String())
	}
	if e.rep.spansFailing.Load() {
		t.Error("a collector that answered is taken for failing")
	}
}

// While a collector is away, the OTLP connections try it again at least
// every reconnect.Backoff.MaxDelay, not at gRPC's own waits, which grow
// to 120 s. Its address here is taken by a listener that counts the
// attempts and refuses each (they fail as against a collector that is
// down), its waits scaled down to 1 s: from 6 to 12 s into the outage,
// gRPC's own backoff would make one attempt per connection.
func TestReconnectAfterOutage(t *testing.T) {
	saved := reconnect
	reconnect.Backoff.MaxDelay = time.Second
	t.Cleanup(func() { reconnect = saved })
	e, rcv, _ := startOTLP(t, Config{})
	e.Export(serverReq())
	rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) == 1 })
	rcv.Down()
	lis, err := net.Listen("tcp", rcv.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var late atomic.Int32 // attempts 6 s or more into the outage
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			if time.Since(start) >= 6*time.Second {
				late.Add(1)
			}
			c.Close()
		}
	}()
	for time.Since(start) < 12*time.Second {
		e.Export(serverReq())
		time.Sleep(200 * time.Millisecond)
	}
	lis.Close()
	if n := late.Load(); n < 6 {
		t.Errorf("%d connection attempts from 6 to 12 s into the outage, want one a second for each connection", n)
	}
	rcv.Up(t)
	for back := time.Now(); len(rcv.Spans()) == 1; time.Sleep(100 * time.Millisecond) {
		if time.Since(back) > 20*time.Second {
			t.Fatal("no export reached the collector after its return")
		}
		e.Export(serverReq())
	}
}

// OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT (else OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT)
// cuts span attributes' string values to that many characters, counting
// a character of several bytes as one; metric points keep theirs.
func TestAttributeValueLengthLimit(t *testing.T) {
	for s, want := range map[string]string{"abc": "abc", "abcdefghij": "abcdefgh", "/café/crème": "/café/cr"} {
		if got := truncateValue(s, 8); got != want {
			t.Errorf("truncateValue(%q, 8) = %q, want %q", s, got, want)
		}
	}
	if got := truncateValue("abcdefghij", -1); got != "abcdefghij" {
		t.Errorf("no limit: %q", got)
	}
	t.Setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100")
	t.Setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "8")
	e, rcv, _ := startOTLP(t, Config{})
	e.Export(serverReq())
	db := otherReq(tracer.ProtoPostgreSQL, tracer.RoleClient)
	db.DBOperation, db.DBCollection, db.DBQuery = "SELECT", "users", "SELECT * FROM users WHERE id = ?"
	e.Export(db)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) >= 2 })
	if p := find(spans, "GET /users/{id}")[0].Attributes; p["url.path"] != "/users/4" || p["http.route"] != "/users/{" {
		t.Errorf("HTTP span: %v", p)
	}
	if q := find(spans, "SELECT users")[0].Attributes["db.query.text"]; q != "SELECT *" {
		t.Errorf("db.query.text %v", q)
	}
	rcv.WaitMetric(t, waitFor, hasPoint("http.server.request.duration", "/users/{id}", 1))
}
