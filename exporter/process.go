package exporter

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/podtracer/podtracer/pod"
)

// scopeName is the instrumentation scope of every span and metric: the
// instrumentation is podtracer, whatever the process is.
const scopeName = "github.com/podtracer/podtracer"

// procKey identifies a process. The pid alone is not enough: a pid can be
// reused, and exec keeps the pid but changes the program, which must become
// a new resource.
type procKey struct {
	pid       int
	exe, name string
}

// procKeyOf is p's key; the zero key for nil.
func procKeyOf(p *pod.Process) procKey {
	if p == nil {
		return procKey{}
	}
	return procKey{pid: p.PID, exe: p.Exe, name: p.Name}
}

// process is one neighbour's resource, meter provider and span resource,
// plus caches that keep the per-request work allocation-light. Only the
// worker goroutine uses it.
type process struct {
	key     procKey
	res     *resource.Resource
	lastGen uint64

	spans     *spanResource // nil when spans go nowhere
	sinks     []*spanSink   // the exporter's, shared
	encode    bool          // some sink sends OTLP: the worker encodes each span
	keepAttrs bool          // some sink (the printer) reads span attributes as KeyValues
	sampler   sampler
	mp        *sdkmetric.MeterProvider // nil when metrics go nowhere
	hists     *histograms              // the instruments, which mp's reader collects
	server    *histogram
	client    *histogram
	other     *otherInstruments // gRPC, database and messaging histograms, made on first use
	cfg       *Config           // the exporter's: the query and opt-in attributes, for spans and metrics alike

	// Span names and metric attribute sets, built once per distinct
	// combination; bounded by maxSeries, after which the cache is reset.
	seriesCache map[seriesKey]series
	// routes are the routes this process has answered with success or a
	// redirect (see routeOf).
	routes map[routeKey]struct{}
	// The last series (none while its name is "": a series always has
	// one) and the last route known real: a map lookup, which hashes every
	// string of the key, is saved when the next request repeats them.
	lastSeriesKey seriesKey
	lastSeries    series
	lastRoute     routeKey // zero: none (a route is never "")

	// exemplar and exemplarCtx carry each request's span context into its
	// metric point; see spanContext.
	exemplar    exemplarSpan
	exemplarCtx context.Context

	// The last addresses seen and their strings: most requests repeat the
	// previous one's local address (a server) or peer (keep-alive).
	lastLocal, lastRemote       netip.AddrPort
	lastLocalStr, lastRemoteStr string
	lastForwarded               netip.AddrPort // of the last request behind proxies (forwardedFor)
	lastForwardedStr            string

	// The last HTTP span's first attributes, and their encoding (see
	// httpAttributes).
	lastHTTP     httpStable
	lastHTTPWire []byte

	// The last other exchanges' descriptions (describe), the next one to
	// replace, and the last peer address of one with its string.
	lastOther   [4]*otherDesc
	nextOther   int
	lastPeer    netip.Addr
	lastPeerStr string
}

// process returns the state for p, creating it on first sight.
func (e *Exporter) process(p *pod.Process) *process {
	key := procKeyOf(p)
	if s, ok := e.procs[key]; ok {
		s.lastGen = e.gen
		return s
	}
	if len(e.procs) >= e.maxProcesses {
		e.releaseLRU()
	}
	s := e.newProcess(key, p)
	e.procs[key] = s
	e.nprocs.Store(int64(len(e.procs)))
	return s
}

func (e *Exporter) newProcess(key procKey, p *pod.Process) *process {
	s := &process{key: key, lastGen: e.gen, seriesCache: make(map[seriesKey]series), routes: make(map[routeKey]struct{}), cfg: &e.cfg}
	s.res = e.processResource(p)

	if len(e.sinks) > 0 {
		// The resource is converted for OTLP here, once per process.
		s.spans, s.sinks, s.sampler = newSpanResource(s.res), e.sinks, e.sampler
		for _, k := range e.sinks {
			_, otlp := k.exp.(*otlpSpans)
			s.encode = s.encode || otlp
			s.keepAttrs = s.keepAttrs || !otlp
		}
	}
	if e.metrics != nil {
		// The periodic reader applies OTEL_METRIC_EXPORT_INTERVAL and
		// _TIMEOUT itself; it collects the agent's own histograms.
		s.hists = newHistograms(e.histOpts)
		s.mp = sdkmetric.NewMeterProvider(
			sdkmetric.WithResource(s.res),
			sdkmetric.WithReader(sdkmetric.NewPeriodicReader(e.metrics, sdkmetric.WithProducer(s.hists))),
		)
		// The HTTP semconv constructors carry name, unit, description and
		// the recommended explicit buckets.
		srv, _ := httpconv.NewServerRequestDuration(s.hists) // the agent's meter never fails
		cli, _ := httpconv.NewClientRequestDuration(s.hists)
		s.server, s.client = srv.Inst().(*histogram), cli.Inst().(*histogram)
	}
	return s
}

// processResource describes one process. Precedence, lowest first: what
// podtracer observed (the name the process was run by, or its executable's,
// as service.name; process.*, k8s.*),
// then OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME as the SDK defines
// them, then Config.ServiceName.
func (e *Exporter) processResource(p *pod.Process) *resource.Resource {
	attrs := make([]attribute.KeyValue, 0, 12)
	name := ""
	if p != nil {
		name = p.Name
		if name == "" && p.Exe != "" {
			name = filepath.Base(p.Exe)
		}
		attrs = append(attrs, semconv.ProcessPID(p.PID))
		if p.PPID > 0 {
			attrs = append(attrs, semconv.ProcessParentPID(p.PPID))
		}
		if name != "" {
			attrs = append(attrs, semconv.ProcessExecutableName(name))
		}
		if p.Exe != "" {
			attrs = append(attrs, semconv.ProcessExecutablePath(p.Exe))
		}
		if len(p.Cmdline) > 0 && e.cfg.CommandArgs {
			attrs = append(attrs, semconv.ProcessCommandArgs(p.Cmdline...))
		}
		if p.ContainerID != "" {
			attrs = append(attrs, semconv.ContainerID(p.ContainerID))
		}
	}
	svc := name
	if p != nil && p.RunAs != "" {
		svc = p.RunAs // redis-server, not the redis-check-rdb it links to
	}
	if svc == "" {
		svc = "unknown_service" // the spec's default
	}
	attrs = append(attrs, semconv.ServiceName(svc))
	md := e.cfg.Metadata
	if p != nil {
		attrs = append(attrs, semconv.ServiceInstanceID(instanceID(md, e.host, p)))
	}
	validAttrs(attrs) // file names and arguments are bytes
	attrs = append(attrs, k8sAttributes(md)...)
	res, err := resource.Merge(resource.NewWithAttributes(semconv.SchemaURL, attrs...), e.envRes)
	if err != nil {
		// Only a schema URL conflict can fail here; the merged attributes
		// are still right, so keep them.
		e.logger.Debug("merge resource", "error", err)
	}
	if e.cfg.ServiceName != "" {
		res, _ = resource.Merge(res, resource.NewSchemaless(semconv.ServiceName(e.cfg.ServiceName)))
	}
	return res
}

// k8sAttributes are the pod's k8s.* resource attributes that the
// downward API gave.
func k8sAttributes(md pod.Metadata) []attribute.KeyValue {
	var attrs []attribute.KeyValue
	for _, kv := range []attribute.KeyValue{
		semconv.K8SPodName(md.PodName),
		semconv.K8SNamespaceName(md.Namespace),
		semconv.K8SNodeName(md.NodeName),
		semconv.K8SPodUID(md.PodUID),
	} {
		if kv.Value.AsString() != "" {
			attrs = append(attrs, kv)
		}
	}
	return attrs
}

// instanceNamespace is the UUID namespace the semantic conventions give
// for a service.instance.id made from an inherent id.
var instanceNamespace = uuid.MustParse("4d63009a-8d0f-11ee-aad7-4c796ed8e320")

// instanceID is p's service.instance.id. Sibling processes of a service
// (nginx's or gunicorn's workers) share every other resource attribute
// but process.pid, which a translation of their metrics to Prometheus
// drops (its instance label is service.instance.id), merging their
// series into one that goes back and forth. As the conventions recommend
// for an id made from an inherent one: a UUID v5 of the pod (its uid, or
// its namespace and name, or the host's name outside Kubernetes) and the
// process (its pid and executable), the same for the process's life.
func instanceID(md pod.Metadata, host string, p *pod.Process) string {
	return uuid.NewSHA1(instanceNamespace, []byte(podKey(md, host)+"/"+strconv.Itoa(p.PID)+"/"+p.Exe)).String()
}

// podKey names the pod for a service.instance.id: its uid, or its
// namespace and name, or the host's name outside Kubernetes.
func podKey(md pod.Metadata, host string) string {
	switch {
	case md.PodUID != "":
		return md.PodUID
	case md.PodName != "":
		return md.Namespace + "/" + md.PodName
	}
	return host
}

// releaseIdle releases processes idle for idleTimeout, and those that
// exited and sent nothing for a whole sweep interval since: a short-lived
// process (a probe's exec, a script's curl) takes its provider, reader
// goroutine and export per interval with it after a minute or two, not
// ten, and its last points go out then (release).
func (e *Exporter) releaseIdle() {
	idle := uint64(e.idleTimeout / e.sweepInterval)
	for k, s := range e.procs {
		quiet := e.gen - s.lastGen
		if quiet >= idle || (quiet >= 2 && !k.running()) {
			e.release(k, s)
		}
	}
}

// running tells whether the process of k still runs (pod.Running).
func (k procKey) running() bool {
	return pod.Running(procRoot, &pod.Process{PID: k.pid, Exe: k.exe})
}

// releaseLRU makes room for a new process by releasing the one idle longest.
func (e *Exporter) releaseLRU() {
	var victim *process
	for _, s := range e.procs {
		if victim == nil || s.lastGen < victim.lastGen {
			victim = s
		}
	}
	if victim != nil {
		e.release(victim.key, victim)
	}
}

// release forgets a process and flushes its last metric points in the
// background, so a slow collector cannot stall the worker. At most
// cap(releaseSem) flushes run at once; beyond that the providers are shut
// down without a final export, losing at most one interval of metric points
// instead of flushes piling up under process churn. That shutdown is in the
// background too: it waits for the reader's export in progress, which
// waits for the metric exporter, shared by every process and busy for as
// long as a slow collector takes.
func (e *Exporter) release(k procKey, s *process) {
	delete(e.procs, k)
	e.nprocs.Store(int64(len(e.procs)))
	select {
	case e.releaseSem <- struct{}{}:
		e.releasing.Go(func() {
			defer func() { <-e.releaseSem }()
			ctx, cancel := context.WithTimeout(context.Background(), e.releaseTimeout)
			defer cancel()
			_ = s.shutdown(ctx)
		})
	default:
		e.releasing.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = s.shutdown(ctx)
		})
	}
}

// shutdown shuts the process's meter provider down, which makes its final
// export. Its spans need nothing: they are in the shared sinks, which
// outlive it.
func (s *process) shutdown(ctx context.Context) error {
	if s.mp == nil {
		return nil
	}
	if err := s.mp.Shutdown(ctx); err != nil {
		return fmt.Errorf("meter provider of pid %d: %w", s.key.pid, err)
	}
	return nil
}

// addrString returns the address as text, reusing the last result when the
// address repeats, and "" for an unknown address.
func addrString(a netip.AddrPort, last *netip.AddrPort, lastStr *string) string {
	if !a.IsValid() {
		return ""
	}
	if a == *last && *lastStr != "" {
		return *lastStr
	}
	*last = a
	// Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; users know
	// them as a.b.c.d.
	*lastStr = a.Addr().Unmap().String()
	return *lastStr
}
