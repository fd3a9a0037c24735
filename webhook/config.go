package webhook

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/hashicorp/go-multierror"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podtracer/podtracer/internal/envname"
)

// Config is the webhook's configuration, read from the environment only.
type Config struct {
	Addr    string `env:"PODTRACER_WEBHOOK_ADDR" envDefault:":9443" help:"address of the HTTPS server (/mutate, /healthz, /readyz)"`
	TLSCert string `env:"PODTRACER_WEBHOOK_TLS_CERT,required,notEmpty" help:"PEM certificate file (chain first); reloaded when it changes"`
	TLSKey  string `env:"PODTRACER_WEBHOOK_TLS_KEY,required,notEmpty" help:"PEM private key file; reloaded when it changes"`
	// How often the certificate files are read again to see whether they
	// changed (cert-manager renewed them, a Secret was updated).
	CertReloadInterval time.Duration `env:"PODTRACER_WEBHOOK_TLS_RELOAD_INTERVAL" envDefault:"10s" help:"how often the certificate files are checked for changes (0: never)"`

	Image           string `env:"PODTRACER_WEBHOOK_IMAGE,required,notEmpty" help:"image of the injected podtracer container"`
	ImagePullPolicy string `env:"PODTRACER_WEBHOOK_IMAGE_PULL_POLICY" help:"Always, IfNotPresent or Never (default: Kubernetes' default for the tag)"`
	OTLPEndpoint    string `env:"PODTRACER_WEBHOOK_OTLP_ENDPOINT" help:"OTEL_EXPORTER_OTLP_ENDPOINT of the sidecar unless annotated, e.g. http://otel-collector.observability:4317 (default: none, spans go to the sidecar's stdout)"`
	OTLPInsecure    string `env:"PODTRACER_WEBHOOK_OTLP_INSECURE" help:"OTEL_EXPORTER_OTLP_INSECURE of the sidecar unless annotated: true for plaintext gRPC even to an https:// endpoint"`

	CPURequest    resource.Quantity `env:"PODTRACER_WEBHOOK_CPU_REQUEST" envDefault:"50m" help:"sidecar CPU request (0: none)"`
	MemoryRequest resource.Quantity `env:"PODTRACER_WEBHOOK_MEMORY_REQUEST" envDefault:"64Mi" help:"sidecar memory request (0: none)"`
	CPULimit      resource.Quantity `env:"PODTRACER_WEBHOOK_CPU_LIMIT" envDefault:"500m" help:"sidecar CPU limit (0: none)"`
	MemoryLimit   resource.Quantity `env:"PODTRACER_WEBHOOK_MEMORY_LIMIT" envDefault:"256Mi" help:"sidecar memory limit (0: none; else at least 64Mi)"`

	// The webhook's own log, as the agent's (internal/cli reads them
	// before the rest; checked here with it).
	LogLevel  string `env:"PODTRACER_LOG_LEVEL" envDefault:"info" help:"the webhook's log level: debug, info, warn or error"`
	LogFormat string `env:"PODTRACER_LOG_FORMAT" envDefault:"text" help:"the webhook's log format: text or json"`
}

var envOptions = env.Options{FuncMap: map[reflect.Type]env.ParserFunc{
	reflect.TypeFor[resource.Quantity](): func(v string) (any, error) {
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return nil, fmt.Errorf("%q is not a quantity like 100m or 64Mi", v)
		}
		return q, nil
	},
}}

// LoadConfig reads the configuration from environ (os.Environ's format) and
// reports every mistake at once.
func LoadConfig(environ []string) (Config, error) {
	opts := envOptions
	opts.Environment = env.ToMap(environ)
	var c Config
	var errs *multierror.Error
	if err := env.ParseWithOptions(&c, opts); err != nil {
		var agg env.AggregateError
		if errors.As(err, &agg) {
			for _, e := range agg.Errors {
				errs = multierror.Append(errs, envError(e))
			}
		} else {
			errs = multierror.Append(errs, err)
		}
	}
	errs = multierror.Append(errs, c.validate()...)
	if err := errs.ErrorOrNil(); err != nil {
		errs.ErrorFormat = listErrors
		return Config{}, fmt.Errorf("configuration: %w", errs)
	}
	return c, nil
}

// UnknownVariables warns of PODTRACER_WEBHOOK_ variables in environ
// (os.Environ's format) that the webhook does not read: a misspelt one
// (PODTRACER_WEBHOOK_OTLP_ENDPONT) would otherwise leave every sidecar
// printing its spans instead of exporting them, without a word. The
// variables Kubernetes gives a pod for a Service named podtracer-webhook
// (PODTRACER_WEBHOOK_SERVICE_HOST, PODTRACER_WEBHOOK_PORT_443_TCP, ...)
// are not the user's.
func UnknownVariables(environ []string) []string {
	var known []string
	for _, f := range reflect.VisibleFields(reflect.TypeFor[Config]()) {
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		known = append(known, name)
	}
	var warnings []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "PODTRACER_WEBHOOK_") || slices.Contains(known, name) || serviceLink.MatchString(name) {
			continue
		}
		w := name + " is not a webhook variable, and has no effect"
		if near := envname.Nearest(name, known); near != "" {
			w += "; did you mean " + near + "?"
		}
		warnings = append(warnings, w)
	}
	slices.Sort(warnings)
	return warnings
}

// serviceLink matches the names of the variables Kubernetes sets for a
// Service named podtracer-webhook (enableServiceLinks).
var serviceLink = regexp.MustCompile(`^PODTRACER_WEBHOOK_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$`)

// envError names the variable, not the Go field, in a parse error.
func envError(err error) error {
	var pe env.ParseError
	if !errors.As(err, &pe) {
		return err
	}
	if f, ok := reflect.TypeFor[Config]().FieldByName(pe.Name); ok {
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		return fmt.Errorf("%s: %w", name, pe.Err)
	}
	return err
}

func (c Config) validate() []error {
	var errs []error
	switch corev1.PullPolicy(c.ImagePullPolicy) {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("PODTRACER_WEBHOOK_IMAGE_PULL_POLICY: %q is not Always, IfNotPresent or Never", c.ImagePullPolicy))
	}
	if c.OTLPEndpoint != "" {
		if err := checkEndpoint(c.OTLPEndpoint); err != nil {
			errs = append(errs, fmt.Errorf("PODTRACER_WEBHOOK_OTLP_ENDPOINT: %w", err))
		}
	}
	if c.OTLPInsecure != "" {
		if err := checkBool(c.OTLPInsecure); err != nil {
			errs = append(errs, fmt.Errorf("PODTRACER_WEBHOOK_OTLP_INSECURE: %w", err))
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil { // as internal/cli reads it: INFO, warn+2
		errs = append(errs, fmt.Errorf("PODTRACER_LOG_LEVEL: %q is not debug, info, warn or error", c.LogLevel))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("PODTRACER_LOG_FORMAT: %q is not text or json", c.LogFormat))
	}
	if c.CertReloadInterval < 0 {
		errs = append(errs, fmt.Errorf("PODTRACER_WEBHOOK_TLS_RELOAD_INTERVAL: %s is negative", c.CertReloadInterval))
	}
	for _, q := range []struct {
		name     string
		v        resource.Quantity
		resource corev1.ResourceName
	}{
		{"PODTRACER_WEBHOOK_CPU_REQUEST", c.CPURequest, corev1.ResourceCPU},
		{"PODTRACER_WEBHOOK_MEMORY_REQUEST", c.MemoryRequest, corev1.ResourceMemory},
		{"PODTRACER_WEBHOOK_CPU_LIMIT", c.CPULimit, corev1.ResourceCPU},
		{"PODTRACER_WEBHOOK_MEMORY_LIMIT", c.MemoryLimit, corev1.ResourceMemory},
	} {
		if _, err := checkQuantity(q.v.String(), q.resource); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", q.name, err))
		}
	}
	if !c.MemoryLimit.IsZero() && c.MemoryLimit.Cmp(minMemoryLimit) < 0 {
		errs = append(errs, fmt.Errorf("PODTRACER_WEBHOOK_MEMORY_LIMIT: %s is below %s: %s", c.MemoryLimit.String(), minMemoryLimit.String(), minMemoryWhy))
	}
	for _, p := range []struct {
		name     string
		req, lim resource.Quantity
	}{
		{"CPU", c.CPURequest, c.CPULimit},
		{"memory", c.MemoryRequest, c.MemoryLimit},
	} {
		if !p.lim.IsZero() && p.req.Cmp(p.lim) > 0 {
			errs = append(errs, fmt.Errorf("sidecar %s request %s is above its limit %s", p.name, p.req.String(), p.lim.String()))
		}
	}
	return errs
}

// Sidecar is the part of the configuration that the mutation uses.
func (c Config) Sidecar() Sidecar {
	res := corev1.ResourceRequirements{}
	add := func(list *corev1.ResourceList, name corev1.ResourceName, q resource.Quantity) {
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[name] = q
	}
	for _, r := range []struct {
		name     corev1.ResourceName
		req, lim resource.Quantity
	}{
		{corev1.ResourceCPU, c.CPURequest, c.CPULimit},
		{corev1.ResourceMemory, c.MemoryRequest, c.MemoryLimit},
	} {
		// A request of 0 is written out when there is a limit: Kubernetes
		// gives a container with a limit and no request the limit as its
		// request, and 0 means none.
		if !r.req.IsZero() || !r.lim.IsZero() {
			add(&res.Requests, r.name, r.req)
		}
		if !r.lim.IsZero() {
			add(&res.Limits, r.name, r.lim)
		}
	}
	return Sidecar{
		Image:           c.Image,
		ImagePullPolicy: corev1.PullPolicy(c.ImagePullPolicy),
		OTLPEndpoint:    c.OTLPEndpoint,
		OTLPInsecure:    cleanInsecure(c.OTLPInsecure),
		Resources:       res,
	}
}

// cleanInsecure is the sidecar's OTEL_EXPORTER_OTLP_INSECURE for v, as
// the agent takes it (cleanBool), or "" when v is.
func cleanInsecure(v string) string {
	if v == "" {
		return ""
	}
	return cleanBool(v)
}

func listErrors(errs []error) string {
	lines := make([]string, len(errs))
	for i, err := range errs {
		lines[i] = "\n\t" + err.Error()
	}
	return strconv.Itoa(len(errs)) + " problem(s):" + strings.Join(lines, "")
}

// PrintUsage writes the environment variables the webhook reads.
func PrintUsage(w io.Writer) error {
	fmt.Fprint(w, `Usage: podtracer-webhook

The mutating admission webhook that injects the podtracer sidecar into
Deployments annotated podtracer.io/inject=true. It is configured by these
environment variables:

`)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range reflect.VisibleFields(reflect.TypeFor[Config]()) {
		name, opts, _ := strings.Cut(f.Tag.Get("env"), ",")
		def := f.Tag.Get("envDefault")
		if slices.Contains(strings.Split(opts, ","), "required") {
			def = "(required)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, def, f.Tag.Get("help"))
	}
	return tw.Flush()
}
