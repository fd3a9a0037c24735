package exporter

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/podtracer/podtracer/pod"
	"github.com/podtracer/podtracer/tracer"
)

// discardSpans is a span destination that costs nothing, so benchmarks
// measure the exporter, not the network.
type discardSpans struct{}

func (discardSpans) exportSpans(context.Context, []*spanRecord) error { return nil }
func (discardSpans) shutdown(context.Context) error                   { return nil }

// sdkDiscard is the same for the SDK's pipeline in BenchmarkSDKFloor.
type sdkDiscard struct{}

func (sdkDiscard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (sdkDiscard) Shutdown(context.Context) error                             { return nil }

// marshalClient is an OTLP client that does what the gRPC client does with
// a batch up to the bytes on the wire: marshal the request with its codec.
type marshalClient struct {
	codec *traceCodec
	bytes int
}

func (*marshalClient) Start(context.Context) error { return nil }
func (*marshalClient) Stop(context.Context) error  { return nil }
func (c *marshalClient) UploadTraces(_ context.Context, rs []*tracepb.ResourceSpans) error {
	data, err := c.codec.Marshal(&coltracepb.ExportTraceServiceRequest{ResourceSpans: rs})
	c.bytes += data.Len()
	data.Free()
	return err
}

// discardMetrics is the same for metrics.
type discardMetrics struct{}

func (discardMetrics) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return sdkmetric.DefaultTemporalitySelector(k)
}

func (discardMetrics) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}
func (discardMetrics) Export(context.Context, *metricdata.ResourceMetrics) error { return nil }
func (discardMetrics) ForceFlush(context.Context) error                          { return nil }
func (discardMetrics) Shutdown(context.Context) error                            { return nil }

// benchExporter is an exporter whose worker does not run, so the benchmark
// goroutine plays the worker.
func benchExporter(b *testing.B, spans, metrics bool) *Exporter {
	b.Setenv("OTEL_TRACES_SAMPLER", "")
	b.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
	var dests []destination
	if spans {
		dests = append(dests, destination{name: "discard", exp: discardSpans{}})
	}
	var me sdkmetric.Exporter
	if metrics {
		me = discardMetrics{}
	}
	return benchNew(b, dests, me)
}

func benchNew(b testing.TB, dests []destination, me sdkmetric.Exporter) *Exporter {
	cfg := Config{QueueSize: DefaultQueueSize, Metadata: meta}
	std, errs := settingsFromEnv(os.Getenv)
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	smp, bc := std.sampler, std.batch
	envRes, err := resource.New(context.Background(), resource.WithTelemetrySDK())
	if err != nil {
		b.Fatal(err)
	}
	e := newExporter(cfg, slog.New(slog.DiscardHandler), envRes, smp, bc, dests, me)
	b.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	return e
}

// BenchmarkHandle is the worker's cost per request: the span record with
// all attributes, the metric point and the hand-off to the sinks. The
// sinks' goroutine batches and exports concurrently; BenchmarkFullPath
// counts it too.
func BenchmarkHandle(b *testing.B) {
	unsampled := serverReq()
	unsampled.Parent = unsampled.Parent.WithTraceFlags(0)
	root := serverReq()
	root.Parent = trace.SpanContext{}
	for _, bc := range []struct {
		name           string
		req            *tracer.Request
		spans, metrics bool
	}{
		{"server", serverReq(), true, true},
		{"server-root", root, true, true},
		{"client", clientReq(), true, true},
		{"grpc-server", otherReq(tracer.ProtoGRPC, tracer.RoleServer), true, true},
		{"unsampled", unsampled, true, true},
		{"spans-only", serverReq(), true, false},
		{"metrics-only", serverReq(), false, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := benchExporter(b, bc.spans, bc.metrics)
			e.handle(bc.req) // create the process outside the loop
			b.ReportAllocs()
			for b.Loop() {
				e.handle(bc.req)
			}
			if s := e.Stats(); s.DroppedSpans > 0 {
				b.ReportMetric(float64(s.DroppedSpans)/float64(b.N), "dropped/op")
			}
		})
	}
}

// BenchmarkFullPath is the whole cost of a sampled span up to the bytes
// sent, on one goroutine: the worker's record and metric point, batching,
// the conversion to OTLP protobuf and its marshalling (the gRPC call itself
// excepted). The batch is exported synchronously every 512 spans, the
// default batch size, so no span is dropped and nothing runs on another
// CPU unmeasured.
func BenchmarkFullPath(b *testing.B) {
	grpcServer := func() *tracer.Request { return otherReq(tracer.ProtoGRPC, tracer.RoleServer) }
	for _, bc := range []struct {
		name  string
		procs []*pod.Process
		req   func() *tracer.Request
	}{
		{"1proc", []*pod.Process{python}, serverReq},
		{"8procs", func() (ps []*pod.Process) {
			for i := range 8 {
				ps = append(ps, &pod.Process{PID: 100 + i, Exe: "/usr/bin/app", Name: "app"})
			}
			return ps
		}(), serverReq},
		{"grpc-server", []*pod.Process{python}, grpcServer},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.Setenv("OTEL_TRACES_SAMPLER", "")
			mc := &marshalClient{codec: newTraceCodec()}
			e := benchNew(b, []destination{{name: "otlp", exp: &otlpSpans{client: mc, codec: mc.codec, partial: &partialSuccess{}}}}, discardMetrics{})
			reqs := make([]*tracer.Request, len(bc.procs))
			for i, p := range bc.procs {
				reqs[i] = bc.req()
				reqs[i].Process = p
				e.handle(reqs[i])
			}
			e.sinks[0].flush(context.Background())
			mc.bytes = 0
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				e.handle(reqs[i%len(reqs)])
				i++
				if i%512 == 0 {
					e.sinks[0].flush(context.Background())
				}
			}
			e.sinks[0].flush(context.Background())
			if s := e.Stats(); s.DroppedSpans > 0 {
				b.Errorf("%d spans dropped", s.DroppedSpans)
			}
			b.ReportMetric(float64(mc.bytes)/float64(i), "wire-B/op")
		})
	}
}

// BenchmarkExport is the caller's cost: putting a request on the queue.
func BenchmarkExport(b *testing.B) {
	e := benchExporter(b, true, true)
	e.start()
	r := serverReq()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e.Export(r)
		}
	})
}

// BenchmarkSDKFloor is the SDK alone making a comparable span (same number
// of attributes, batch processor, discarding exporter): the floor that
// BenchmarkHandle is measured against.
func BenchmarkSDKFloor(b *testing.B) {
	b.Setenv("OTEL_TRACES_SAMPLER", "")
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(sdkDiscard{}))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tp.Tracer("bench")
	r := serverReq()
	attrs := make([]attribute.KeyValue, 14)
	for i := range attrs {
		attrs[i] = attribute.String("key"+strconv.Itoa(i), "value")
	}
	b.ReportAllocs()
	for b.Loop() {
		ctx := trace.ContextWithRemoteSpanContext(context.Background(), r.Parent)
		_, span := tr.Start(ctx, "GET /users/{id}", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(r.Start))
		span.SetAttributes(attrs...)
		span.End(trace.WithTimestamp(r.End))
	}
}
