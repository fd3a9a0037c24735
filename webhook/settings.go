package webhook

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Setting is an agent environment variable that a Deployment annotation sets
// on the injected sidecar.
type Setting struct {
	Annotation string
	Env        string
	Doc        string
	check      func(string) error
	// clean, if set, rewrites a valid value into the form the agent reads.
	clean func(string) string
}

// Settings are the annotations the webhook passes to the sidecar, in the
// order the variables appear in its env. The checks catch what would make
// the agent exit at start: a crash-looping sidecar makes the pod not ready.
var Settings = []Setting{
	{"podtracer.io/service-name", "OTEL_SERVICE_NAME", "service name (default: the Deployment's name)", nonEmpty, nil},
	{"podtracer.io/resource-attributes", "OTEL_RESOURCE_ATTRIBUTES", "extra resource attributes, key=value,... (k8s.deployment.name is set but for a generated name)", checkAttributes, nil},
	{"podtracer.io/otlp-endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP/gRPC endpoint, http://host:port or https://host:port", checkEndpoint, nil},
	{"podtracer.io/otlp-insecure", "OTEL_EXPORTER_OTLP_INSECURE", "true: plaintext gRPC even to an https:// endpoint", checkBool, cleanBool},
	{"podtracer.io/sampler", "OTEL_TRACES_SAMPLER", "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio", oneOf("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"), nil},
	{"podtracer.io/sampler-arg", "OTEL_TRACES_SAMPLER_ARG", "sampling ratio, 0 to 1", checkRatio, nil},
	{"podtracer.io/metric-export-interval", "OTEL_METRIC_EXPORT_INTERVAL", "milliseconds between metric exports", checkMillis, nil},
	{"podtracer.io/open-ports", "PODTRACER_OPEN_PORTS", "trace only processes listening on these ports, e.g. 8080,9000-9100", checkPorts, removeSpaces},
	{"podtracer.io/executable-name", "PODTRACER_EXECUTABLE_NAME", "trace only processes whose executable matches this regular expression", checkRegexp, nil},
	{"podtracer.io/trace-printer", "PODTRACER_TRACE_PRINTER", "print spans to the sidecar's stdout: text, json or off", oneOf("text", "json", "off"), nil},
	{"podtracer.io/log-level", "PODTRACER_LOG_LEVEL", "debug, info, warn or error", oneOf("debug", "info", "warn", "error"), nil},
	{"podtracer.io/shutdown-wait", "PODTRACER_SHUTDOWN_WAIT", "after SIGTERM, how long at most the sidecar goes on tracing the draining pod, e.g. 10s (default: 0s, since a native sidecar's SIGTERM comes once the pod's containers have ended)", checkDuration, nil},
	{"podtracer.io/protocols", "PODTRACER_PROTOCOLS", "the protocols to parse, comma-separated, the others off: " + strings.Join(protocols, ", ") + " (default: all)", checkProtocols, cleanProtocols},
	{"podtracer.io/query-text", "PODTRACER_QUERY_TEXT", "db.query.text: sanitized, full or off (all but full also take the quoted values out of database error messages)", oneOf("sanitized", "full", "off"), nil},
	{"podtracer.io/opt-in-attributes", "PODTRACER_OPT_IN_ATTRIBUTES", "attributes the semantic conventions make opt-in, comma-separated: " + strings.Join(optInAttributes, ", "), checkOptIn, removeSpaces},
	{"podtracer.io/ring-buffer-bytes", "PODTRACER_RING_BUFFER_BYTES", "kernel-to-agent ring buffer, a power of two from 4096 to 1073741824 (raise it if the sidecar's log reports kernel events lost)", checkRingBuffer, nil},
}

// protocols are the agent's (tracer.Protocols, which a test compares).
var protocols = []string{"http2", "http", "postgresql", "mysql", "redis", "kafka"}

// checkProtocols accepts a comma-separated list of protocol names that
// names at least one, as the agent does.
func checkProtocols(v string) error { return checkNames(strings.ToLower(v), protocols, "protocol") }

// checkNames accepts a comma-separated list of names from known that
// names at least one: an empty one is likelier a typo than a wish for
// nothing.
func checkNames(v string, known []string, what string) error {
	named := false
	for name := range strings.SplitSeq(v, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(known, name) {
			return fmt.Errorf("%s is not a %s the agent knows; known: %s", quote(name), what, strings.Join(known, ", "))
		}
		named = true
	}
	if !named {
		return fmt.Errorf("names no %s", what)
	}
	return nil
}

func cleanProtocols(v string) string { return strings.ToLower(removeSpaces(v)) }

// optInAttributes are the agent's (exporter.OptInNames, which a test
// compares).
var optInAttributes = []string{"client.port", "http.request.body.size", "http.response.body.size", "url.scheme", "url.template", "user_agent.original"}

// checkOptIn accepts a comma-separated list of the opt-in attributes the
// agent knows that names at least one.
func checkOptIn(v string) error { return checkNames(v, optInAttributes, "opt-in attribute") }

// checkRingBuffer accepts what the kernel takes as a ring buffer's size.
func checkRingBuffer(v string) error {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n < 4096 || n > 1<<30 || n&(n-1) != 0 {
		return fmt.Errorf("%s is not a power of two from 4096 to 1073741824", quote(v))
	}
	return nil
}

// checkDuration accepts a Go duration of 0 or more, as the agent reads it.
func checkDuration(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("%s is not a duration such as 10s or 500ms", quote(v))
	}
	if d < 0 {
		return fmt.Errorf("%s is negative", quote(v))
	}
	return nil
}

var settingByAnnotation = func() map[string]Setting {
	m := map[string]Setting{}
	for _, s := range Settings {
		m[s.Annotation] = s
	}
	return m
}()

// quote quotes a value for a message, shortened: warnings the API server
// passes on should stay short, and annotation values can be long.
func quote(v string) string {
	if r := []rune(v); len(r) > 48 {
		v = string(r[:48]) + "..."
	}
	return strconv.Quote(v)
}

func removeSpaces(v string) string { return strings.ReplaceAll(v, " ", "") }

func nonEmpty(v string) error {
	if v == "" {
		return errors.New("empty")
	}
	return nil
}

func checkBool(v string) error {
	if _, err := strconv.ParseBool(v); err != nil {
		return fmt.Errorf("%s is not true or false", quote(v))
	}
	return nil
}

// cleanBool writes a boolean checkBool took ("1", "T", ...) as the
// OpenTelemetry SDK reads one: only "true" is true to it, and the agent
// refuses anything but true or false.
func cleanBool(v string) string {
	b, _ := strconv.ParseBool(v)
	return strconv.FormatBool(b)
}

func oneOf(values ...string) func(string) error {
	return func(v string) error {
		for _, ok := range values {
			if v == ok {
				return nil
			}
		}
		return fmt.Errorf("%s is not one of %s", quote(v), strings.Join(values, ", "))
	}
}

// checkEndpoint accepts what the OpenTelemetry specification defines for
// OTEL_EXPORTER_OTLP_ENDPOINT: a URL with scheme http or https.
func checkEndpoint(v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%s is not a URL like http://collector:4317", quote(v))
	}
	return nil
}

func checkRatio(v string) error {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 0 && f <= 1) { // NaN too
		return fmt.Errorf("%s is not a number from 0 to 1", quote(v))
	}
	return nil
}

func checkMillis(v string) error {
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil || n == 0 || n > math.MaxInt64/uint64(time.Millisecond) {
		return fmt.Errorf("%s is not a positive number of milliseconds", quote(v))
	}
	return nil
}

// checkAttributes accepts key=value pairs separated by commas, the
// OTEL_RESOURCE_ATTRIBUTES format.
func checkAttributes(v string) error {
	for pair := range strings.SplitSeq(v, ",") {
		k, val, ok := strings.Cut(pair, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("%s is not key=value", quote(pair))
		}
		// Values are percent-encoded, as the specification says.
		if _, err := url.QueryUnescape(val); err != nil {
			return fmt.Errorf("value of %s is not percent-encoded correctly", quote(k))
		}
	}
	return nil
}

// checkPorts accepts ports and ranges separated by commas: 8080,9000-9100.
func checkPorts(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		first, err1 := parsePort(lo)
		last, err2 := first, error(nil)
		if isRange {
			last, err2 = parsePort(hi)
		}
		if err1 != nil || err2 != nil || last < first {
			return fmt.Errorf("%s is not a port (1-65535) or range of ports like 9000-9100", quote(part))
		}
	}
	return nil
}

func parsePort(s string) (uint64, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err == nil && n == 0 {
		err = errors.New("port 0")
	}
	return n, err
}

// checkRegexp uses Go's syntax, which is what the agent compiles.
func checkRegexp(v string) error {
	if v == "" {
		return errors.New("empty")
	}
	if _, err := regexp.Compile(v); err != nil {
		var se *syntax.Error
		if errors.As(err, &se) {
			return fmt.Errorf("%s is not a regular expression: %s", quote(v), se.Code)
		}
		return fmt.Errorf("%s is not a regular expression", quote(v))
	}
	return nil
}
