package exporter

import (
	"context"
	"errors"

	"github.com/google/uuid"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/otelconv"
)

// SelfCounts are the agent's counters that are not the exporter's: the
// kernel capture's and the tracer's. ReportSelf reports them beside the
// exporter's own, so that what the agent loses can be alerted on where
// its telemetry goes, not found in its log.
type SelfCounts struct {
	KernelEventsLost     uint64 // events the ring buffer had no room for
	KernelRunsSkipped    uint64 // program runs the kernel skipped (recursion)
	KernelRequestsLost   uint64 // requests the kernel measured but could not count
	CallsUntracked       uint64 // syscalls not followed for want of kernel memory
	TLSPlaintextLost     uint64 // TLS reads and writes whose plaintext was lost
	ConnectionsUntracked uint64 // connections over PODTRACER_MAX_CONNECTIONS
	ParserFailures       uint64 // connections a protocol parser gave up
	HTTP2Lost            uint64 // times an HTTP/2 direction lost its frames
}

// selfCounter is one of SelfCounts as a metric.
type selfCounter struct {
	name, unit, desc string
	value            func(SelfCounts) uint64
}

var selfCounters = []selfCounter{
	{"podtracer.kernel.events.lost", "{event}", "Kernel events lost because the ring buffer to the agent was full (raise PODTRACER_RING_BUFFER_BYTES).", func(c SelfCounts) uint64 { return c.KernelEventsLost }},
	{"podtracer.kernel.runs.skipped", "{run}", "Runs of the agent's kernel programs that the kernel skipped because the same program was running on the CPU.", func(c SelfCounts) uint64 { return c.KernelRunsSkipped }},
	{"podtracer.kernel.requests.lost", "{request}", "Requests measured in the kernel that its histogram map had no room for.", func(c SelfCounts) uint64 { return c.KernelRequestsLost }},
	{"podtracer.kernel.calls.untracked", "{call}", "Socket calls not followed because the kernel had no memory for the thread's state.", func(c SelfCounts) uint64 { return c.CallsUntracked }},
	{"podtracer.tls.plaintext.lost", "{call}", "TLS reads and writes whose plaintext was lost (the connection unknown, or a read begun before the uprobes).", func(c SelfCounts) uint64 { return c.TLSPlaintextLost }},
	{"podtracer.connections.untracked", "{connection}", "Connections not followed because PODTRACER_MAX_CONNECTIONS were followed already.", func(c SelfCounts) uint64 { return c.ConnectionsUntracked }},
	{"podtracer.parser.failures", "{connection}", "Connections a protocol parser gave up on bytes it did not foresee.", func(c SelfCounts) uint64 { return c.ParserFailures }},
	{"podtracer.http2.lost", "{event}", "Times a direction of an HTTP/2 connection lost its place in the frames.", func(c SelfCounts) uint64 { return c.HTTP2Lost }},
}

// ReportSelf starts the metrics about the agent itself, exported with the
// neighbours' (nothing without a metrics destination): the semantic
// conventions' otel.sdk.* counts of its span pipeline (spans exported,
// failed and dropped for a full queue), the requests it dropped, its
// failed metric exports, and counts, read at each collection. They have a
// resource of their own: service.name podtracer and the pod's k8s.*
// attributes and OTEL_RESOURCE_ATTRIBUTES (a Deployment's name, say), so
// that they are the sidecar's, not a neighbour's. Shutdown ends them.
func (e *Exporter) ReportSelf(counts func() SelfCounts) error {
	if e.metrics == nil || e.closed.Load() {
		return nil
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithResource(e.selfResource()),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(e.metrics)),
	)
	started := false
	defer func() {
		if !started {
			// Its reader's goroutine, without a last collection and
			// export (a cancelled context): nothing of it goes out.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = mp.Shutdown(ctx)
		}
	}()
	m := mp.Meter(scopeName, metric.WithInstrumentationVersion(scopeVersion))
	exported, err := otelconv.NewSDKExporterSpanExportedObservable(m)
	if err != nil {
		return err
	}
	processed, err := otelconv.NewSDKProcessorSpanProcessedObservable(m)
	if err != nil {
		return err
	}
	requestsDropped, err := m.Int64ObservableCounter("podtracer.requests.dropped", metric.WithUnit("{request}"),
		metric.WithDescription("Requests dropped before they became spans or metric points, the agent's queue being full (raise PODTRACER_QUEUE_SIZE)."))
	if err != nil {
		return err
	}
	metricExportsFailed, err := m.Int64ObservableCounter("podtracer.metric_exports.failed", metric.WithUnit("{export}"),
		metric.WithDescription("Metric exports that failed."))
	if err != nil {
		return err
	}
	observables := []metric.Observable{exported.Inst(), processed.Inst(), requestsDropped, metricExportsFailed}
	counters := make([]metric.Int64ObservableCounter, len(selfCounters))
	for i, c := range selfCounters {
		if counters[i], err = m.Int64ObservableCounter(c.name, metric.WithUnit(c.unit), metric.WithDescription(c.desc)); err != nil {
			return err
		}
		observables = append(observables, counters[i])
	}

	// One set of attributes per span destination and outcome, made once.
	// Each destination batches as the SDK's batching span processor
	// does, and is named so for dashboards made for the SDK's metrics.
	type sinkSets struct{ ok, rejected, failed, processed, dropped attribute.Set }
	sets := make([]sinkSets, len(e.sinks))
	for i, k := range e.sinks {
		typ := otelconv.ComponentTypeAttr(scopeName + "/exporter.printer")
		if _, otlp := k.exp.(*otlpSpans); otlp {
			typ = otelconv.ComponentTypeOtlpGRPCSpanExporter
		}
		exp := []attribute.KeyValue{exported.AttrComponentType(typ), exported.AttrComponentName(string(typ) + "/" + k.name)}
		proc := []attribute.KeyValue{processed.AttrComponentType(otelconv.ComponentTypeBatchingSpanProcessor),
			processed.AttrComponentName(string(otelconv.ComponentTypeBatchingSpanProcessor) + "/" + k.name)}
		sets[i] = sinkSets{
			ok:        attribute.NewSet(exp...),
			rejected:  attribute.NewSet(append(exp, exported.AttrErrorType("rejected"))...),
			failed:    attribute.NewSet(append(exp, semconv.ErrorTypeOther)...),
			processed: attribute.NewSet(proc...),
			dropped:   attribute.NewSet(append(proc, processed.AttrErrorType("queue_full"))...),
		}
	}
	// Every series from the start, errors' at 0: a first burst of them
	// is then an increase, for backends that compute rates.
	observe := func(o metric.Observer, inst metric.Int64Observable, n uint64, set attribute.Set) {
		o.ObserveInt64(inst, int64(n), metric.WithAttributeSet(set))
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for i, k := range e.sinks {
			// Counted when an export is under way: processed when it
			// starts, exported when it ends (a span in between is the
			// first, not yet the second). Each from a counter of its
			// own, which only grows.
			observe(o, exported.Inst(), k.exported.Load(), sets[i].ok)
			observe(o, exported.Inst(), k.rejected.Load(), sets[i].rejected)
			observe(o, exported.Inst(), k.unsent.Load(), sets[i].failed)
			observe(o, processed.Inst(), k.submitted.Load(), sets[i].processed)
			observe(o, processed.Inst(), k.dropped.Load(), sets[i].dropped)
		}
		o.ObserveInt64(requestsDropped, int64(e.droppedRequests.Load()))
		o.ObserveInt64(metricExportsFailed, int64(e.metrics.failed.Load()))
		c := counts()
		for i, sc := range selfCounters {
			o.ObserveInt64(counters[i], int64(sc.value(c)))
		}
		return nil
	}, observables...)
	if err != nil {
		return err
	}
	if !e.self.CompareAndSwap(nil, mp) {
		return errors.New("the agent's own metrics are reported already")
	}
	started = true
	return nil
}

// selfResource is the agent's own resource: its name, version and
// instance, the pod's k8s.* attributes, and OTEL_RESOURCE_ATTRIBUTES over
// them (as on the neighbours'); not OTEL_SERVICE_NAME, nor a
// service.version from the environment, which are the neighbours'.
func (e *Exporter) selfResource() *resource.Resource {
	res, err := resource.Merge(resource.NewWithAttributes(semconv.SchemaURL, k8sAttributes(e.cfg.Metadata)...), e.envRes)
	if err != nil {
		e.logger.Debug("merge resource", "error", err)
	}
	attrs := []attribute.KeyValue{
		semconv.ServiceName("podtracer"),
		// Every sidecar's series apart, in Prometheus too (its instance
		// label): a UUID v5 of the pod, as the neighbours' are of theirs.
		semconv.ServiceInstanceID(uuid.NewSHA1(instanceNamespace, []byte(podKey(e.cfg.Metadata, e.host)+"/podtracer")).String()),
	}
	for it := res.Iter(); it.Next(); {
		kv := it.Attribute()
		switch kv.Key {
		case semconv.ServiceNameKey, semconv.ServiceInstanceIDKey, semconv.ServiceVersionKey:
		default:
			attrs = append(attrs, kv)
		}
	}
	// Always a version: the SDK merges the environment's resource in
	// again, and a service.version of OTEL_RESOURCE_ATTRIBUTES (the
	// neighbours') would fill the gap of a development build.
	version := scopeVersion
	if version == "" {
		version = "devel"
	}
	attrs = append(attrs, semconv.ServiceVersion(version))
	return resource.NewWithAttributes(res.SchemaURL(), attrs...)
}
