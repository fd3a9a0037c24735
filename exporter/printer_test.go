package exporter

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/internal/testenv"
)

func TestPrinterText(t *testing.T) {
	out := startPrinter(t, "")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got:\n%s", out)
	}
	for i, re := range []string{
		`^2026-11-22T05:00:00\.123Z SERVER python3\[412\] GET /users/\{id\} 200 1\.234ms trace=0102030405060708090a0b0c0d0e0f10 span=[0-9a-f]{16} parent=0101010102020202 client=10\.0\.0\.1:5555$`,
		`^2026-11-22T05:00:00\.123Z CLIENT curl\[77\] POST http://10\.0\.0\.9:9000/orders 404 3\.000ms trace=[0-9a-f]{32} span=[0-9a-f]{16} peer=10\.0\.0\.9:9000 error$`,
		`^2026-11-22T05:00:00\.123Z SERVER python3\[412\] PURGE /users/42 - 2\.500s trace=[0-9a-f]{32} span=[0-9a-f]{16} client=10\.0\.0\.1:5555$`,
	} {
		if !regexp.MustCompile(re).MatchString(lines[i]) {
			t.Errorf("line %d:\n got %s\nwant %s", i, lines[i], re)
		}
	}
}

func TestPrinterJSON(t *testing.T) {
	out := startPrinter(t, "json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got:\n%s", out)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("line 0 is not JSON: %v\n%s", err, lines[0])
	}
	for k, v := range map[string]any{
		"time": "2026-11-22T05:00:00.123Z", "kind": "SERVER", "service": "python3", "process": "python3",
		"pid": 412.0, "name": "GET /users/{id}", "method": "GET", "target": "/users/{id}", "status": 200.0,
		"duration_ms": 1.234, "trace_id": "0102030405060708090a0b0c0d0e0f10", "parent_span_id": "0101010102020202",
		"client": "10.0.0.1:5555",
	} {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	attrs, _ := got["attributes"].(map[string]any)
	if attrs["url.path"] != "/users/42" || attrs["http.route"] != "/users/{id}" || attrs["server.port"] != 8080.0 {
		t.Errorf("attributes = %v", attrs)
	}
	if _, ok := attrs["url.query"]; ok {
		t.Error("url.query printed although CaptureQuery is off")
	}
}

// startPrinter runs an exporter with only the printer, exports a server, a
// client and an odd request, and returns what it printed.
func startPrinter(t *testing.T, format string) string {
	t.Setenv("OTEL_TRACES_SAMPLER", "")
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	var out testenv.Buffer
	logger, _ := testLogger(t)
	e, err := New(context.Background(), Config{Printer: format, PrinterOut: &out, Metadata: meta}, logger)
	if err != nil {
		t.Fatal(err)
	}
	e.Export(serverReq())
	e.Export(clientReq())
	odd := serverReq()
	odd.Method, odd.Route, odd.StatusCode = "PURGE", "", 0
	odd.End = odd.Start.Add(2500 * 1e6)
	odd.Parent = trace.SpanContext{}
	e.Export(odd)
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := e.Stats(); s.ExportedSpans != 3 {
		t.Errorf("ExportedSpans = %d, want 3", s.ExportedSpans)
	}
	return out.String()
}

// A gRPC call to a method the server does not have is the span "grpc";
// the printer shows the path that was called (rpc.method_original).
func TestPrinterUnknownGRPCMethod(t *testing.T) {
	rec := &spanRecord{name: "grpc", kind: trace.SpanKindServer, res: &spanResource{service: "grpcapp"}, attrs: []attribute.KeyValue{
		semconv.RPCSystemNameGRPC, semconv.RPCMethod("_OTHER"), semconv.RPCMethodOriginal("scan.Svc/Probe"),
	}}
	if got := describe(rec, false).Target; got != "scan.Svc/Probe" {
		t.Errorf("target %q, want the method called", got)
	}
	rec.attrs = rec.attrs[:2]
	if got := describe(rec, false).Target; got != "grpc" {
		t.Errorf("target %q without rpc.method_original, want the span's name", got)
	}
}

// A target, method or process name with control characters prints on its
// one line, escaped: a request (or a table name) with a newline cannot
// print a forged span of its own, nor an escape sequence drive the
// terminal.
func TestPrinterTextEscapes(t *testing.T) {
	l := printed{Time: "2026-11-22T05:00:00.123Z", Kind: "SERVER", Process: "evil\x1b[31m", PID: 1, Method: "GET\r",
		Target: "/x\n2026-11-22T05:00:00.000Z SERVER fake[1] GET /admin 200 0.100ms\u2028\u0085é", Status: 200, TraceID: "t", SpanID: "s"}
	got := string(l.text())
	if strings.Count(got, "\n") != 1 || !strings.HasSuffix(got, "\n") {
		t.Fatalf("not one line: %q", got)
	}
	want := `2026-11-22T05:00:00.123Z SERVER evil\x1b[31m[1] GET\r /x\n2026-11-22T05:00:00.000Z SERVER fake[1] GET /admin 200 0.100ms\u2028\u0085é 200 `
	if !strings.HasPrefix(got, want) {
		t.Errorf("got  %s\nwant %s...", got, want)
	}
}
