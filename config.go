package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/hashicorp/go-multierror"
	"golang.org/x/net/http/httpguts"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/exporter"
	"github.com/podtracer/podtracer/internal/cli"
	"github.com/podtracer/podtracer/internal/envname"
	"github.com/podtracer/podtracer/pod"
	"github.com/podtracer/podtracer/tracer"
)

// config is the agent's whole configuration: environment variables only.
// The OTEL_* variables are the ones every OpenTelemetry SDK reads; the SDK
// exporters read them again themselves, but they are checked here so that
// every mistake is reported at once, before anything starts.
type config struct {
	OTLPEndpoint        string `env:"OTEL_EXPORTER_OTLP_ENDPOINT" desc:"OTLP/gRPC collector endpoint for traces and metrics (e.g. http://otel-collector:4317); unset: spans are printed to stdout"`
	OTLPTracesEndpoint  string `env:"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" desc:"OTLP/gRPC endpoint for traces only, overrides OTEL_EXPORTER_OTLP_ENDPOINT"`
	OTLPMetricsEndpoint string `env:"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" desc:"OTLP/gRPC endpoint for metrics only, overrides OTEL_EXPORTER_OTLP_ENDPOINT"`
	OTLPInsecure        string `env:"OTEL_EXPORTER_OTLP_INSECURE" desc:"true: plaintext gRPC even to an https:// endpoint; false: TLS even to an http:// one; unset: as the endpoint's scheme says (also _TRACES_ and _METRICS_INSECURE; true or false only, any case)"`
	OTLPHeaders         string `env:"OTEL_EXPORTER_OTLP_HEADERS" desc:"headers for every OTLP export, key1=value1,key2=value2 (e.g. auth tokens)"`
	OTLPTracesHeaders   string `env:"OTEL_EXPORTER_OTLP_TRACES_HEADERS" desc:"headers for trace exports, instead of OTEL_EXPORTER_OTLP_HEADERS"`
	OTLPMetricsHeaders  string `env:"OTEL_EXPORTER_OTLP_METRICS_HEADERS" desc:"headers for metric exports, instead of OTEL_EXPORTER_OTLP_HEADERS"`
	TracesExporter      string `env:"OTEL_TRACES_EXPORTER" envDefault:"otlp" desc:"comma-separated: otlp (to the traces endpoint, or printed when there is none), console (printed to stdout), none; others are warned of and ignored"`
	MetricsExporter     string `env:"OTEL_METRICS_EXPORTER" envDefault:"otlp" desc:"comma-separated: otlp (to the metrics endpoint, if there is one), none; others are warned of and ignored"`
	SDKDisabled         string `env:"OTEL_SDK_DISABLED" desc:"true (any case): nothing is exported (the agent still runs, and logs its counters); anything else: false"`
	ServiceName         string `env:"OTEL_SERVICE_NAME" desc:"service.name of every traced process; unset: each process's executable name"`
	ResourceAttributes  string `env:"OTEL_RESOURCE_ATTRIBUTES" desc:"extra resource attributes, key1=value1,key2=value2"`
	Sampler             string `env:"OTEL_TRACES_SAMPLER" envDefault:"parentbased_always_on" desc:"always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"`
	SamplerArg          string `env:"OTEL_TRACES_SAMPLER_ARG" desc:"sampling ratio 0..1 for the traceidratio samplers"`
	MetricInterval      string `env:"OTEL_METRIC_EXPORT_INTERVAL" envDefault:"60000" desc:"milliseconds between metric exports"`
	MetricTimeout       string `env:"OTEL_METRIC_EXPORT_TIMEOUT" envDefault:"30000" desc:"milliseconds a metric export may take"`
	ExemplarFilter      string `env:"OTEL_METRICS_EXEMPLAR_FILTER" envDefault:"trace_based" desc:"which requests leave exemplars on the duration histograms: trace_based (those with a sampled span), always_on or always_off"`
	BatchQueue          string `env:"OTEL_BSP_MAX_QUEUE_SIZE" envDefault:"2048" desc:"spans waiting for export per destination (at most 1048576); beyond it they are dropped and counted"`
	BatchSize           string `env:"OTEL_BSP_MAX_EXPORT_BATCH_SIZE" envDefault:"512" desc:"spans per export at most; an export request also stays under 4 MiB, what a gRPC server takes by default (the Collector's max_recv_msg_size_mib): a batch of larger spans (long URLs or queries) goes out in several"`
	BatchDelay          string `env:"OTEL_BSP_SCHEDULE_DELAY" envDefault:"5000" desc:"milliseconds a span may wait for a fuller batch"`
	BatchTimeout        string `env:"OTEL_BSP_EXPORT_TIMEOUT" envDefault:"30000" desc:"milliseconds a span export may take (0: no limit)"`
	AttrValueLimit      string `env:"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT" desc:"the most characters a span attribute's string value keeps (a long URL, a query's text); unset: no limit"`
	SpanAttrValueLimit  string `env:"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT" desc:"the same for span attributes, instead of OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"`
	KnownMethods        string `env:"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS" desc:"the HTTP methods spans and metrics name, comma-separated and case-sensitive, instead of the conventions' CONNECT, DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, QUERY, TRACE (a whole list, not additions: GET,POST,PROPFIND); other methods are _OTHER, with the method in http.request.method_original on spans. HTTP/1 requests are recognised by a method of 3 to 20 capital letters: others (M-SEARCH) are not traced, named or not"`
	OTLPProtocol        string `env:"OTEL_EXPORTER_OTLP_PROTOCOL" envDefault:"grpc" desc:"grpc only (also OTEL_EXPORTER_OTLP_TRACES_PROTOCOL and OTEL_EXPORTER_OTLP_METRICS_PROTOCOL): the agent exports OTLP over gRPC, and refuses http/protobuf rather than send it gRPC"`

	OpenPorts      string        `env:"PODTRACER_OPEN_PORTS" desc:"trace only processes that listen on these TCP ports or serve connections accepted on them (Node.js cluster workers), e.g. 8080,9000-9100 (a range over the ephemeral ports, 32768-60999, takes clients too); the connections such a process opened before it listened (a database pool) are followed within 5 s of it, from the middle of their streams; unset: every neighbour"`
	ExecutableName string        `env:"PODTRACER_EXECUTABLE_NAME" desc:"trace only processes whose executable path, the name of the link they were run by, or their argv[0] matches this regular expression (python3$ takes the python image's /usr/local/bin/python3.12)"`
	TracePrinter   string        `env:"PODTRACER_TRACE_PRINTER" desc:"print spans to stdout: text, json or off; unset: text without a traces endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or _TRACES_ENDPOINT), else off"`
	CaptureBytes   int           `env:"PODTRACER_CAPTURE_BYTES" envDefault:"1024" desc:"bytes of each read and write copied from the kernel (64-4096); longer heads are parsed from their prefix; a TLS read or write that moved more is copied up to 4096 bytes, and on an HTTP/2 connection whole, as far as 32 KB, in events of 4096 bytes, when the ring buffer has room for all of it (its frames past the prefix are not followed otherwise)"`
	RingBuffer     int           `env:"PODTRACER_RING_BUFFER_BYTES" envDefault:"1048576" desc:"kernel-to-agent ring buffer size in bytes (a power of two, 4096 to 1073741824); raise it if the log reports kernel events lost"`
	KernelHooks    string        `env:"PODTRACER_KERNEL_HOOKS" envDefault:"auto" desc:"kernel hooks that capture traffic: socket (tracepoints on socket sends and receives, Linux 6.3+), syscall (raw tracepoints on every syscall, Linux 5.8+), or auto (socket where the kernel has it)"`
	KernelMetrics  bool          `env:"PODTRACER_KERNEL_METRICS" envDefault:"true" desc:"when spans are sampled (OTEL_TRACES_SAMPLER ratio below 1, or off) and metrics are exported, the kernel measures HTTP/1 requests of methods and paths already seen itself (with a body, if it comes in the same read), and only those picked for spans reach the agent; with spans sampled, metrics or not, it also drops the server-side Redis commands not picked for a span (socket hooks only); false: every request goes through the agent"`
	KernelSpans    bool          `env:"PODTRACER_KERNEL_SPANS" envDefault:"true" desc:"the kernel measures the HTTP/1 server requests picked for a span whose head (every header but a traceparent's value) the agent has already parsed twice, and a Redis server's commands whose shape (name and argument count) it has: when the response goes out whole in one send the agent makes the span from a record, without copying or parsing the bytes, else from a stand-in for the request and the response's bytes (socket hooks only; no effect without spans or the protocol's parsing); false: every such request or command goes through the agent whole"`
	TLS            bool          `env:"PODTRACER_TLS" envDefault:"true" desc:"read the plaintext of the neighbours' TLS connections (HTTPS, TLS to databases) where they use OpenSSL's libssl, dynamically linked (nginx, Python, curl, PHP, Ruby, libpq), Node.js's OpenSSL, or Go's crypto/tls (Go 1.18+, amd64): uprobes on their TLS reads and writes, for those processes alone, cost each TLS read two traps and each write one or two (see TLS); a statically linked TLS library that exports nothing is not read (socket hooks only); false: TLS connections give no spans"`
	MaxConnections int           `env:"PODTRACER_MAX_CONNECTIONS" envDefault:"65536" desc:"connections followed at once (at most 1048576); more are counted and skipped"`
	QueueSize      int           `env:"PODTRACER_QUEUE_SIZE" envDefault:"8192" desc:"requests waiting for export (at most 1048576); beyond it they are dropped and counted"`
	CaptureQuery   bool          `env:"PODTRACER_CAPTURE_QUERY" envDefault:"false" desc:"put the query on spans: a server's url.query, the query in a client's url.full, with the values of signed URLs' X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, sig and X-Goog-Signature replaced by REDACTED, as the conventions want (off: queries often carry other secrets too)"`
	OptIn          string        `env:"PODTRACER_OPT_IN_ATTRIBUTES" desc:"attributes the semantic conventions leave off HTTP spans unless asked for, comma-separated: client.port (server spans; behind proxies the port they name, if they name one), http.request.body.size, http.response.body.size, and for clients url.scheme, url.template (on their spans and http.client.request.duration), user_agent.original; unset: none"`
	CommandArgs    bool          `env:"PODTRACER_COMMAND_ARGS" envDefault:"false" desc:"put process.command_args (each traced process's full command line) on its resource (off: arguments often carry secrets, as in redis-server --requirepass)"`
	RouteHeuristic bool          `env:"PODTRACER_ROUTE_HEURISTIC" envDefault:"true" desc:"derive the route from the path, ids replaced by {id} (/users/{id}): http.route on servers, url.template on clients (their span names; the attribute, on their spans and metric, is opt-in); false: no route"`
	Protocols      string        `env:"PODTRACER_PROTOCOLS" desc:"the protocols to parse, comma-separated, the others off: http, http2, postgresql, mysql, redis, kafka; unset: all"`
	QueryText      string        `env:"PODTRACER_QUERY_TEXT" envDefault:"sanitized" desc:"db.query.text on database spans: sanitized (literals replaced by ?), full, or off; all but full also replace the quoted values and numbers in a database's error message (the span's status)"`
	RedisKeys      bool          `env:"PODTRACER_REDIS_KEYS" envDefault:"false" desc:"keep the key of Redis commands in db.query.text (off: keys may hold user data)"`
	LogLevel       string        `env:"PODTRACER_LOG_LEVEL" envDefault:"info" desc:"debug, info, warn or error"`
	LogFormat      string        `env:"PODTRACER_LOG_FORMAT" envDefault:"text" desc:"text or json"`
	ShutdownWait   time.Duration `env:"PODTRACER_SHUTDOWN_WAIT" envDefault:"15s" desc:"after SIGTERM, how long at most the agent goes on tracing while its neighbours drain (Kubernetes stops an ordinary sidecar with the other containers, a native one after them): it stops as soon as the kernel has seen nothing of them for a second, then flushes (up to 10 s); 0: stop at once"`

	Metadata pod.Metadata `desc:"downward API"`

	// Parsed from the strings above by validate.
	ports           pod.Ports
	executable      *regexp.Regexp
	protocols       []string
	optIn           exporter.OptIn
	knownMethods    map[string]bool // nil: the conventions'
	level           slog.Level
	traces, metrics map[string]bool // the exporters named, of those the agent has
	disabled        bool            // OTEL_SDK_DISABLED
	// warnings are settings that are not mistakes but have no effect,
	// logged once the logger exists.
	warnings []string
}

// metadataDesc documents the downward-API variables in -h.
var metadataDesc = map[string]string{
	"POD_NAME":      "k8s.pod.name (downward API: metadata.name)",
	"POD_NAMESPACE": "k8s.namespace.name (downward API: metadata.namespace)",
	"NODE_NAME":     "k8s.node.name (downward API: spec.nodeName)",
	"POD_UID":       "k8s.pod.uid (downward API: metadata.uid)",
}

// maxConnections bounds PODTRACER_MAX_CONNECTIONS: the syscall hooks'
// connection map is allocated whole in the kernel at start.
const maxConnections = 1 << 20

// loadConfig reads and checks the whole configuration from environ
// ("KEY=value" strings), reporting every mistake in one error.
func loadConfig(environ []string) (config, error) {
	var cfg config
	var errs *multierror.Error
	environment := env.ToMap(environ)
	err := env.ParseWithOptions(&cfg, env.Options{Environment: environment})
	var agg env.AggregateError
	unparsed := map[string]bool{}
	switch {
	case errors.As(err, &agg):
		for _, e := range agg.Errors {
			var pe env.ParseError
			if errors.As(e, &pe) {
				// Name the variable, not the Go field.
				name := envName(pe.Name)
				unparsed[name] = true
				e = fmt.Errorf("%s=%q: want %s", name, environment[name], kindName(pe.Type))
			}
			errs = multierror.Append(errs, e)
		}
	case err != nil:
		errs = multierror.Append(errs, err)
	}
	// The standard variables the exporter reads, as it reads them.
	std := exporter.CheckEnv(func(k string) string { return environment[k] })
	for _, e := range append(cfg.validate(), std...) {
		if name, _, _ := strings.Cut(e.Error(), "="); !unparsed[name] {
			errs = multierror.Append(errs, e)
		}
	}
	cfg.warnings = append(cfg.warnings, unknownVariables(environment)...)
	cfg.warnings = append(cfg.warnings, plaintextToHTTPS(environment)...)
	if errs == nil {
		return cfg, nil
	}
	errs.ErrorFormat = listErrors
	return cfg, errs.ErrorOrNil()
}

// plaintextToHTTPS warns of a signal sent as plaintext gRPC to an https://
// endpoint: what the Go SDK does with OTEL_EXPORTER_OTLP_INSECURE=true (or
// the signal's own), headers included, where the specification has https
// win. Each signal's endpoint and setting are its own, else the general's.
func plaintextToHTTPS(environment map[string]string) []string {
	var warnings []string
	for _, signal := range []string{"TRACES", "METRICS"} {
		endpoint := environment["OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT"]
		if endpoint == "" {
			endpoint = environment["OTEL_EXPORTER_OTLP_ENDPOINT"]
		}
		insecure, ok := environment["OTEL_EXPORTER_OTLP_"+signal+"_INSECURE"]
		if !ok {
			insecure = environment["OTEL_EXPORTER_OTLP_INSECURE"]
		}
		if strings.HasPrefix(endpoint, "https://") && strings.EqualFold(strings.TrimSpace(insecure), "true") {
			warnings = append(warnings, fmt.Sprintf("%s go to %s as plaintext gRPC, headers included, despite its https://: OTEL_EXPORTER_OTLP_(%s_)INSECURE=true, as the Go SDK reads it (the specification has https win)",
				strings.ToLower(signal), endpoint, signal))
		}
	}
	return warnings
}

// unknownVariables warns of PODTRACER_ variables the agent does not read:
// a misspelt one (PODTRACER_OPEN_PORT) would otherwise leave its default
// in force without a word. The webhook's, and the developers' (a profile,
// the tests' kernels and caches), are not the agent's to judge.
func unknownVariables(environment map[string]string) []string {
	known := map[string]bool{}
	var names []string
	for _, v := range variables() {
		known[v.name] = true
		names = append(names, v.name)
	}
	var warnings []string
	for _, name := range slices.Sorted(maps.Keys(environment)) {
		if !strings.HasPrefix(name, "PODTRACER_") || known[name] || strings.HasPrefix(name, "PODTRACER_WEBHOOK_") ||
			strings.HasPrefix(name, "PODTRACER_DEV_") || strings.HasPrefix(name, "PODTRACER_TEST_") || name == "PODTRACER_CACHE" {
			continue
		}
		w := name + " is not a podtracer variable, and has no effect"
		if near := envname.Nearest(name, names); near != "" {
			w += "; did you mean " + near + "?"
		}
		warnings = append(warnings, w)
	}
	return warnings
}

// envName returns the variable behind a config field.
func envName(field string) string {
	if f, ok := reflect.TypeOf(config{}).FieldByName(field); ok {
		return f.Tag.Get("env")
	}
	return field
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int:
		return "an integer"
	}
	if t == reflect.TypeFor[time.Duration]() {
		return "a duration such as 15s or 500ms"
	}
	return "a " + t.String()
}

func listErrors(errs []error) string {
	lines := make([]string, len(errs))
	for i, e := range errs {
		lines[i] = "  - " + e.Error()
	}
	return fmt.Sprintf("%d configuration error(s):\n%s", len(errs), strings.Join(lines, "\n"))
}

func (c *config) validate() []error {
	var errs []error
	bad := func(name, value, want string) {
		errs = append(errs, fmt.Errorf("%s=%q: %s", name, value, want))
	}
	for name, v := range map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":         c.OTLPEndpoint,
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":  c.OTLPTracesEndpoint,
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": c.OTLPMetricsEndpoint,
	} {
		if v == "" {
			continue
		}
		if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad(name, v, "want a URL like http://collector:4317 or https://collector:4317")
		} else if u, ok := cli.PlaintextWithoutPort(v); ok {
			c.warnings = append(c.warnings, fmt.Sprintf("%s=%q names no port, so gRPC dials port 443 in plaintext; an OpenTelemetry Collector's OTLP/gRPC port is 4317 (http://%s)", name, v, net.JoinHostPort(u.Hostname(), "4317")))
		}
	}
	for _, kv := range []struct{ name, v string }{
		{"OTEL_EXPORTER_OTLP_HEADERS", c.OTLPHeaders},
		{"OTEL_EXPORTER_OTLP_TRACES_HEADERS", c.OTLPTracesHeaders},
		{"OTEL_EXPORTER_OTLP_METRICS_HEADERS", c.OTLPMetricsHeaders},
	} {
		if err := checkKeyValues(kv.v, httpguts.ValidHeaderFieldName, grpcMetadataValue); err != nil {
			bad(kv.name, kv.v, err.Error())
		}
	}
	if err := checkKeyValues(c.ResourceAttributes, nil, nil); err != nil {
		bad("OTEL_RESOURCE_ATTRIBUTES", c.ResourceAttributes, err.Error())
	}
	// Shared with an application's environment (envFrom), these may name
	// exporters the agent has not: warned of, not fatal.
	c.traces = c.exporters("OTEL_TRACES_EXPORTER", c.TracesExporter, "otlp", "console", "none")
	c.metrics = c.exporters("OTEL_METRICS_EXPORTER", c.MetricsExporter, "otlp", "none")
	c.disabled = strings.EqualFold(strings.TrimSpace(c.SDKDisabled), "true")
	c.ServiceName = strings.TrimSpace(c.ServiceName)
	if c.SamplerArg != "" && !strings.HasSuffix(strings.ToLower(strings.TrimSpace(c.Sampler)), "traceidratio") { // as the exporter reads it
		c.warnings = append(c.warnings, fmt.Sprintf("OTEL_TRACES_SAMPLER_ARG=%q has no effect with OTEL_TRACES_SAMPLER=%s: only the traceidratio samplers read it", c.SamplerArg, c.Sampler))
	}
	// The sampler, the metric and batch settings, the OTLP exporters'
	// own: the exporter's checks (loadConfig).

	var err error
	if c.ports, err = pod.ParsePorts(c.OpenPorts); err != nil {
		bad("PODTRACER_OPEN_PORTS", c.OpenPorts, err.Error())
	}
	if c.ExecutableName != "" {
		if c.executable, err = regexp.Compile(c.ExecutableName); err != nil {
			bad("PODTRACER_EXECUTABLE_NAME", c.ExecutableName, "not a regular expression: "+err.Error())
		}
	}
	switch c.TracePrinter {
	case "", "text", "json", "off":
	default:
		bad("PODTRACER_TRACE_PRINTER", c.TracePrinter, "want text, json or off")
	}
	if c.CaptureBytes < bpf.MinCaptureBytes || c.CaptureBytes > bpf.MaxCaptureBytes {
		bad("PODTRACER_CAPTURE_BYTES", strconv.Itoa(c.CaptureBytes), fmt.Sprintf("want %d to %d", bpf.MinCaptureBytes, bpf.MaxCaptureBytes))
	}
	if c.RingBuffer < 4096 || c.RingBuffer > 1<<30 || c.RingBuffer&(c.RingBuffer-1) != 0 {
		bad("PODTRACER_RING_BUFFER_BYTES", strconv.Itoa(c.RingBuffer), "want a power of two, 4096 to 1073741824")
	}
	if !slices.Contains(bpf.HookSets, c.KernelHooks) {
		bad("PODTRACER_KERNEL_HOOKS", c.KernelHooks, "want "+strings.Join(bpf.HookSets, ", "))
	}
	if c.ShutdownWait < 0 {
		bad("PODTRACER_SHUTDOWN_WAIT", c.ShutdownWait.String(), "want a duration of 0 or more, e.g. 15s")
	}
	if c.MaxConnections <= 0 || c.MaxConnections > maxConnections {
		bad("PODTRACER_MAX_CONNECTIONS", strconv.Itoa(c.MaxConnections), fmt.Sprintf("want 1 to %d", maxConnections))
	}
	if c.QueueSize <= 0 || c.QueueSize > exporter.MaxQueue {
		bad("PODTRACER_QUEUE_SIZE", strconv.Itoa(c.QueueSize), fmt.Sprintf("want 1 to %d", exporter.MaxQueue))
	}
	unknown := false
	for _, p := range strings.Split(c.Protocols, ",") {
		p = strings.TrimSpace(strings.ToLower(p))
		if p == "" {
			continue
		}
		if !slices.Contains(tracer.Protocols(), p) {
			bad("PODTRACER_PROTOCOLS", c.Protocols, fmt.Sprintf("unknown protocol %q; known: %s", p, strings.Join(tracer.Protocols(), ", ")))
			unknown = true
			continue
		}
		c.protocols = append(c.protocols, p)
	}
	if strings.TrimSpace(c.Protocols) != "" && len(c.protocols) == 0 && !unknown {
		// "," would otherwise mean every protocol, as unset does.
		bad("PODTRACER_PROTOCOLS", c.Protocols, "names no protocol; unset it to parse all")
	}
	if c.optIn, err = exporter.ParseOptIn(c.OptIn); err != nil {
		bad("PODTRACER_OPT_IN_ATTRIBUTES", c.OptIn, err.Error())
	}
	if c.knownMethods, err = exporter.ParseKnownMethods(c.KnownMethods); err != nil {
		bad("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", c.KnownMethods, err.Error())
	}
	switch c.QueryText {
	case tracer.QuerySanitized, tracer.QueryFull, tracer.QueryOff:
	default:
		bad("PODTRACER_QUERY_TEXT", c.QueryText, "want sanitized, full or off")
	}
	if err := c.level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		bad("PODTRACER_LOG_LEVEL", c.LogLevel, "want debug, info, warn or error")
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("PODTRACER_LOG_FORMAT", c.LogFormat, "want text or json")
	}
	return errs
}

// checkKeyValues checks the W3C baggage-like "k=v,k2=v2" lists that
// OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS use; validKey
// and validValue (of the decoded value), when not nil, check each pair
// too.
func checkKeyValues(s string, validKey func(string) bool, validValue func(k, v string) bool) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	for _, item := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(item, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("want key=value pairs separated by commas, got %q", item)
		}
		if validKey != nil && !validKey(strings.TrimSpace(k)) {
			// The SDK would drop the header, and every export would then
			// fail to authenticate.
			return fmt.Errorf("%q is not a header name (letters, digits and !#$%%&'*+-.^_`|~ only)", strings.TrimSpace(k))
		}
		dec, err := url.QueryUnescape(v)
		if err != nil {
			return fmt.Errorf("value of %q is not URL-encoded correctly", k)
		}
		if validValue != nil && !validValue(strings.TrimSpace(k), strings.TrimSpace(dec)) {
			// gRPC would refuse it in every export.
			return fmt.Errorf("value of %q has a character gRPC metadata cannot carry: printable ASCII only (no control character such as %%0A)", strings.TrimSpace(k))
		}
	}
	return nil
}

// grpcMetadataValue tells whether v can be the value of gRPC metadata k:
// printable ASCII, as grpc-go checks it, but in binary (-bin) keys.
func grpcMetadataValue(k, v string) bool {
	if strings.HasSuffix(strings.ToLower(k), "-bin") {
		return true
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// exporters reads an OTEL_*_EXPORTER list (case-insensitive) into the set
// of the known names it holds, warning of the others; a list of none of
// them is otlp, the default.
func (c *config) exporters(name, value string, known ...string) map[string]bool {
	set := map[string]bool{}
	for _, e := range strings.Split(value, ",") {
		e = strings.ToLower(strings.TrimSpace(e))
		switch {
		case e == "":
		case slices.Contains(known, e):
			set[e] = true
		default:
			c.warnings = append(c.warnings, fmt.Sprintf("%s: %q is not an exporter the agent has (%s): ignored", name, e, strings.Join(known, ", ")))
		}
	}
	if len(set) == 0 {
		set["otlp"] = true // unset, or only exporters the agent has not
	}
	return set
}

// parses tells whether the agent parses protocol p (PODTRACER_PROTOCOLS).
func (c *config) parses(p string) bool {
	return len(c.protocols) == 0 || slices.Contains(c.protocols, p)
}

// tracesOTLP and metricsOTLP tell whether OTLP export is on.
func (c *config) tracesOTLP() bool {
	return !c.disabled && c.traces["otlp"] && (c.OTLPEndpoint != "" || c.OTLPTracesEndpoint != "")
}

func (c *config) metricsOTLP() bool {
	return !c.disabled && c.metrics["otlp"] && (c.OTLPEndpoint != "" || c.OTLPMetricsEndpoint != "")
}

// printer is the trace printer's setting for the exporter: as set, or
// what OTEL_TRACES_EXPORTER and OTEL_SDK_DISABLED ask for.
func (c *config) printer() string {
	switch {
	case c.TracePrinter != "":
		return c.TracePrinter
	case c.disabled || !c.traces["otlp"] && !c.traces["console"]:
		return "off"
	case c.traces["console"]:
		return "text"
	}
	return "" // the exporter's default: text when there is no traces endpoint
}

// variable is one documented environment variable.
type variable struct{ name, def, desc string }

// variables lists every environment variable the agent reads, in the
// order of the config struct, for -h and the README.
func variables() []variable {
	var vars []variable
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Type.Kind() == reflect.Struct && f.Tag.Get("env") == "" {
				walk(f.Type)
				continue
			}
			name := f.Tag.Get("env")
			if name == "" {
				continue
			}
			desc := f.Tag.Get("desc")
			if desc == "" {
				desc = metadataDesc[name]
			}
			vars = append(vars, variable{name, f.Tag.Get("envDefault"), desc})
		}
	}
	walk(reflect.TypeOf(config{}))
	return vars
}

func usage(w io.Writer) {
	fmt.Fprint(w, `podtracer: zero-code OpenTelemetry traces and metrics for the processes of its pod.

Usage:
  podtracer            run the agent (needs root or CAP_BPF+CAP_PERFMON, and shareProcessNamespace)
  podtracer webhook    run the mutating admission webhook: the podtracer-webhook binary beside this one
                       (see PODTRACER_WEBHOOK_* in the README)
  podtracer wait       return once the pod's agent has started (-timeout 10s at most; never fails):
                       the sidecar's postStart hook, which holds the application's start until then
  podtracer -h         this help

The agent is configured by environment variables only:

`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range variables() {
		def := v.def
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.name, def, v.desc)
	}
	tw.Flush()
}
