package main

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CaptureBytes != 1024 || cfg.QueueSize != 8192 || !cfg.RouteHeuristic || cfg.CaptureQuery || cfg.tracesOTLP() || cfg.metricsOTLP() {
		t.Errorf("defaults = %+v", cfg)
	}
	if cfg.MetricInterval != "60000" {
		t.Errorf("metric interval %v", cfg.MetricInterval)
	}
}

func TestConfigValid(t *testing.T) {
	cfg, err := loadConfig([]string{
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=https://collector.observability:4317",
		"OTEL_RESOURCE_ATTRIBUTES=team=shop,tier=web",
		"OTEL_TRACES_SAMPLER=parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG=0.25",
		"PODTRACER_OPEN_PORTS=8080,9000-9100", "PODTRACER_EXECUTABLE_NAME=^/usr/bin/(python|node)",
		"PODTRACER_TRACE_PRINTER=json", "PODTRACER_CAPTURE_QUERY=true",
		"POD_NAME=shop-1", "POD_NAMESPACE=prod",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.tracesOTLP() || cfg.metricsOTLP() || !cfg.ports.Contains(9050) || !cfg.executable.MatchString("/usr/bin/node") ||
		cfg.Metadata.PodName != "shop-1" || cfg.Metadata.Namespace != "prod" || !cfg.CaptureQuery {
		t.Errorf("config = %+v", cfg)
	}
}

// Every mistake is reported at once, each naming its variable.
func TestConfigEveryMistakeAtOnce(t *testing.T) {
	bad := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":             "collector:4317",
		"OTEL_EXPORTER_OTLP_INSECURE":             "yes please",
		"OTEL_RESOURCE_ATTRIBUTES":                "novalue",
		"OTEL_TRACES_SAMPLER":                     "sometimes",
		"OTEL_TRACES_SAMPLER_ARG":                 "2",
		"OTEL_METRIC_EXPORT_INTERVAL":             "5s",
		"OTEL_BSP_MAX_QUEUE_SIZE":                 "0",
		"OTEL_EXPORTER_OTLP_PROTOCOL":             "http/protobuf",
		"PODTRACER_OPEN_PORTS":                    "80,http",
		"PODTRACER_EXECUTABLE_NAME":               "python(",
		"PODTRACER_TRACE_PRINTER":                 "xml",
		"PODTRACER_CAPTURE_BYTES":                 "lots",
		"PODTRACER_RING_BUFFER_BYTES":             "5000",
		"PODTRACER_KERNEL_HOOKS":                  "kprobes",
		"PODTRACER_QUEUE_SIZE":                    "-1",
		"PODTRACER_CAPTURE_QUERY":                 "maybe",
		"PODTRACER_LOG_LEVEL":                     "loud",
		"PODTRACER_PROTOCOLS":                     "http,smtp",
		"PODTRACER_QUERY_TEXT":                    "some",
		"PODTRACER_OPT_IN_ATTRIBUTES":             "client.port,http.request.size",
		"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS": "GET,PROP FIND",
	}
	var environ []string
	for k, v := range bad {
		environ = append(environ, k+"="+v)
	}
	_, err := loadConfig(environ)
	if err == nil {
		t.Fatal("bad configuration accepted")
	}
	msg := err.Error()
	for k := range bad {
		if strings.Count(msg, k+"=") != 1 {
			t.Errorf("%s reported %d times in:\n%s", k, strings.Count(msg, k+"="), msg)
		}
	}
	if !strings.HasPrefix(msg, "21 configuration error(s):") {
		t.Errorf("message = %s", msg)
	}
}

// -h and the README list every variable the agent reads.
func TestEveryVariableDocumented(t *testing.T) {
	var help bytes.Buffer
	usage(&help)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range variables() {
		if !strings.Contains(help.String(), v.name) {
			t.Errorf("-h lacks %s", v.name)
		}
		if !bytes.Contains(readme, []byte("`"+v.name+"`")) {
			t.Errorf("README.md lacks %s", v.name)
		}
		if v.desc == "" {
			t.Errorf("%s has no description", v.name)
		}
	}
}

// The agent runs on one P, unless GOMAXPROCS says otherwise.
func TestAgentMaxProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(2)
	agentMaxProcs("2")
	if n := runtime.GOMAXPROCS(0); n != 2 {
		t.Errorf("GOMAXPROCS=2 given: %d Ps", n)
	}
	agentMaxProcs("")
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Errorf("GOMAXPROCS unset: %d Ps, want 1", n)
	}
}

// The agent collects garbage at GOGC=200, unless GOGC says otherwise.
func TestAgentGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	agentGC("50")
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("GOGC=50 given: the agent set %d", p)
	}
	agentGC("")
	if p := debug.SetGCPercent(100); p != agentGCPercent {
		t.Errorf("GOGC unset: %d, want %d", p, agentGCPercent)
	}
}

// The SDK's warnings (logr V(1)) show at the agent's default level, as
// warnings; its information (V(4)) only when debugging.
func TestSDKLogLevels(t *testing.T) {
	var out bytes.Buffer
	lg := sdkLogger(slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo})))
	lg.Error(errors.New("no CA"), "read tls ca cert file")
	lg.V(1).Info("invalid temporality")
	lg.V(4).Info("exporter started")
	lg.V(8).Info("exporting")
	got := out.String()
	for _, want := range []string{`level=ERROR msg="read tls ca cert file" source="opentelemetry sdk" err="no CA"`, `level=WARN msg="invalid temporality"`} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %s:\n%s", want, got)
		}
	}
	if strings.Contains(got, "exporter started") || strings.Contains(got, "exporting") {
		t.Errorf("information and debugging shown at level info:\n%s", got)
	}
}

// TestConfigMistakesFoundByReview: settings the agent took without a word
// and that then did nothing, or the wrong thing.
func TestConfigMistakesFoundByReview(t *testing.T) {
	for _, c := range []struct {
		env  string
		want string // in the error
	}{
		// The SDK drops a header it cannot parse, and exports then fail
		// to authenticate.
		{"OTEL_EXPORTER_OTLP_TRACES_HEADERS=novalue", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"},
		{"OTEL_EXPORTER_OTLP_METRICS_HEADERS=a=1,b", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"},
		{`OTEL_EXPORTER_OTLP_HEADERS="x-api-key"=abc`, "not a header name"},
		{"OTEL_EXPORTER_OTLP_HEADERS=Authorization Bearer=abc", "not a header name"},
		{"PODTRACER_PROTOCOLS=,", "names no protocol"},
		{"PODTRACER_MAX_CONNECTIONS=20000000", "want 1 to 1048576"},
		{"PODTRACER_SHUTDOWN_WAIT=soon", "a duration"},
		{"PODTRACER_OPT_IN_ATTRIBUTES=client.port,network.transport", `unknown attribute "network.transport"; known: client.port, http.request.body.size, http.response.body.size, url.scheme, url.template, user_agent.original`},
		{"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS=GET;POST", `"GET;POST" is not an HTTP method`},
		{"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS=,", "names no method"},
		{"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT=ten", "want a number of characters"},
		{"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=-1", "want a number of characters"},
		// gRPC would refuse every export with it.
		{"OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%0Aabc", "printable ASCII only"},
		{"OTEL_EXPORTER_OTLP_HEADERS=x-team=%C3%A9quipe", "printable ASCII only"},
	} {
		_, err := loadConfig([]string{c.env})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one saying %q", c.env, err, c.want)
		}
	}
	for _, ok := range []string{"OTEL_EXPORTER_OTLP_HEADERS=api-key=abc,X-Scope-OrgID=shop", "OTEL_EXPORTER_OTLP_HEADERS=Authorization=Basic%20dXNlcjpwYXNz", "OTEL_EXPORTER_OTLP_HEADERS=trace-bin=%00%01", "PODTRACER_PROTOCOLS=http, redis", "PODTRACER_OPT_IN_ATTRIBUTES= http.response.body.size ,client.port",
		"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS=GET, POST,PROPFIND", "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS="} {
		if _, err := loadConfig([]string{ok}); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

// TestConfigExporters: OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER and
// OTEL_SDK_DISABLED, as the specification defines them.
func TestConfigExporters(t *testing.T) {
	endpoint := "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317"
	for _, c := range []struct {
		env             []string
		traces, metrics bool
		printer         string
	}{
		{[]string{endpoint}, true, true, ""},
		{[]string{endpoint, "OTEL_TRACES_EXPORTER=none"}, false, true, "off"},
		{[]string{endpoint, "OTEL_METRICS_EXPORTER=none"}, true, false, ""},
		{[]string{endpoint, "OTEL_TRACES_EXPORTER=console"}, false, true, "text"},
		{[]string{endpoint, "OTEL_TRACES_EXPORTER=none", "PODTRACER_TRACE_PRINTER=json"}, false, true, "json"},
		{[]string{endpoint, "OTEL_SDK_DISABLED=true"}, false, false, "off"},
		{[]string{endpoint, "OTEL_SDK_DISABLED=TRUE"}, false, false, "off"},
		{[]string{endpoint, "OTEL_SDK_DISABLED=1"}, true, true, ""}, // only "true" is
		// Lists, any case; exporters the agent has not are ignored (and
		// warned of): an application's environment, shared, is no mistake.
		{[]string{endpoint, "OTEL_TRACES_EXPORTER=OTLP,console"}, true, true, "text"},
		{[]string{endpoint, "OTEL_TRACES_EXPORTER=zipkin", "OTEL_METRICS_EXPORTER=otlp,prometheus"}, true, true, ""},
		{[]string{endpoint, "OTEL_METRICS_EXPORTER=None"}, true, false, ""},
		{nil, false, false, ""},
	} {
		cfg, err := loadConfig(c.env)
		if err != nil {
			t.Fatalf("%q: %v", c.env, err)
		}
		if cfg.tracesOTLP() != c.traces || cfg.metricsOTLP() != c.metrics || cfg.printer() != c.printer {
			t.Errorf("%q: traces %v metrics %v printer %q, want %v %v %q", c.env, cfg.tracesOTLP(), cfg.metricsOTLP(), cfg.printer(), c.traces, c.metrics, c.printer)
		}
	}
	cfg, _ := loadConfig([]string{"OTEL_TRACES_EXPORTER=zipkin"})
	if w := strings.Join(cfg.warnings, "\n"); !strings.Contains(w, `"zipkin" is not an exporter`) {
		t.Errorf("no warning of an exporter the agent has not: %q", w)
	}
}

// TestConfigWarnings: settings that are not mistakes but do nothing are
// said at start.
func TestConfigWarnings(t *testing.T) {
	cfg, err := loadConfig([]string{
		"PODTRACER_OPEN_PORT=8080",          // misspelt
		"PODTRACER_WEBHOOK_IMAGE=podtracer", // the webhook's
		"PODTRACER_DEV_CPUPROFILE=/tmp/x",   // a developer's
		"OTEL_TRACES_SAMPLER_ARG=0.1",       // without a ratio sampler
		"OTEL_SERVICE_NAME=  shop\n",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://collector.observability", // plaintext to 443
		"PODTRACER_TEST_KERNELS=/x", "PODTRACER_CACHE=/y",            // the tests' own
	})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(cfg.warnings, "\n")
	for _, want := range []string{"PODTRACER_OPEN_PORT is not a podtracer variable", "did you mean PODTRACER_OPEN_PORTS?", "OTEL_TRACES_SAMPLER_ARG=\"0.1\" has no effect",
		"names no port, so gRPC dials port 443 in plaintext", "http://collector.observability:4317"} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings lack %q:\n%s", want, got)
		}
	}
	if len(cfg.warnings) != 3 {
		t.Errorf("want 3 warnings, got:\n%s", got)
	}
	// The sampler's name is read as the exporter reads it, in any case;
	// an https:// endpoint's 443 is right.
	if v6, _ := loadConfig([]string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://[fd00::1]"}); len(v6.warnings) != 1 || !strings.Contains(v6.warnings[0], "http://[fd00::1]:4317") {
		t.Errorf("IPv6 endpoint without a port: warnings %q", v6.warnings)
	}
	if ratio, err := loadConfig([]string{"OTEL_TRACES_SAMPLER=ParentBased_TraceIdRatio ", "OTEL_TRACES_SAMPLER_ARG=0.5", "OTEL_EXPORTER_OTLP_ENDPOINT=https://otlp.example.com"}); err != nil || len(ratio.warnings) != 0 {
		t.Errorf("err %v, warnings %q: want none", err, ratio.warnings)
	}
	if cfg.ServiceName != "shop" {
		t.Errorf("service name %q, want it trimmed", cfg.ServiceName)
	}
}

// TestConfigInsecureHTTPS: plaintext to an https:// endpoint is what the
// Go SDK does with OTEL_EXPORTER_OTLP_INSECURE=true, against the
// specification: the agent says so at start.
func TestConfigInsecureHTTPS(t *testing.T) {
	cfg, err := loadConfig([]string{"OTEL_EXPORTER_OTLP_ENDPOINT=https://otlp.vendor.example:443", "OTEL_EXPORTER_OTLP_INSECURE=true"})
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(cfg.warnings, "\n"); !strings.Contains(w, "plaintext") {
		t.Errorf("no warning of plaintext to https://: %q", w)
	}
	cfg, _ = loadConfig([]string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317", "OTEL_EXPORTER_OTLP_INSECURE=true"})
	if len(cfg.warnings) != 0 {
		t.Errorf("warnings for a plain http:// endpoint: %q", cfg.warnings)
	}
	// The signals' own settings: traces' plaintext is warned of, metrics'
	// TLS overrides the general plaintext.
	cfg, _ = loadConfig([]string{"OTEL_EXPORTER_OTLP_ENDPOINT=https://otlp.vendor.example:443", "OTEL_EXPORTER_OTLP_INSECURE=true",
		"OTEL_EXPORTER_OTLP_METRICS_INSECURE=false"})
	if w := strings.Join(cfg.warnings, "\n"); !strings.Contains(w, "traces go to") || strings.Contains(w, "metrics go to") {
		t.Errorf("signal-specific settings: %q", w)
	}
	cfg, _ = loadConfig([]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=https://t.example:443", "OTEL_EXPORTER_OTLP_TRACES_INSECURE=true"})
	if w := strings.Join(cfg.warnings, "\n"); !strings.Contains(w, "traces go to https://t.example:443") {
		t.Errorf("the traces' own insecure setting: %q", w)
	}
}

// OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS replaces the conventions' list
// whole; unset keeps theirs (nil).
func TestConfigKnownMethods(t *testing.T) {
	cfg, err := loadConfig([]string{"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS=GET, POST,PROPFIND"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"GET": true, "POST": true, "PROPFIND": true}; !maps.Equal(cfg.knownMethods, want) {
		t.Errorf("known methods %v, want %v", cfg.knownMethods, want)
	}
	if cfg, _ = loadConfig(nil); cfg.knownMethods != nil {
		t.Errorf("unset: %v, want nil (the conventions' list)", cfg.knownMethods)
	}
}
