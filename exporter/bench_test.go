package exporter

import (
	"context"
	"log/slog"
	"strconv"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/tracer"
)

// discardSpans is a span destination that costs nothing, so benchmarks
// measure the exporter and the SDK, not the network.
type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }

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
	cfg := Config{QueueSize: DefaultQueueSize, Metadata: meta}
	e := newExporter(cfg, slog.New(slog.DiscardHandler), resource.Empty(), sdktrace.DefaultMaxQueueSize, dests, me)
	b.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	return e
}

// BenchmarkHandle is the worker's cost per request: span creation with all
// attributes, the metric point and the hand-off to the batch processor.
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
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardSpans{}))
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
