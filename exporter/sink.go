package exporter

import (
	"context"
	"sync"
	"sync/atomic"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// spanSink is one span destination (OTLP or the printer): one SDK
// BatchSpanProcessor in front of one exporter, shared by every process's
// TracerProvider.
//
// Sharing the processor rather than only the exporter keeps one bounded queue
// and one goroutine however many processes there are, and OTLP batches still
// group spans by resource. The sink is registered with each provider as a
// SpanProcessor whose Shutdown does nothing, so releasing one process's
// provider cannot stop the pipeline the others use.
//
// It also makes drops observable. The SDK's processor counts its drops in a
// private field, reachable only through a debug log line or the experimental
// OTEL_GO_X_OBSERVABILITY metrics on the global MeterProvider. So the sink
// counts spans in flight itself (handed to the processor, not yet returned
// by the exporter) and refuses spans beyond the processor's queue size before
// the processor sees them: the processor then never drops, and every loss is
// counted here, exactly.
type spanSink struct {
	name  string
	bsp   sdktrace.SpanProcessor
	exp   *countingExporter
	limit int64

	inflight atomic.Int64
	dropped  atomic.Uint64
	exported atomic.Uint64
	failed   atomic.Uint64
}

func newSpanSink(name string, exp sdktrace.SpanExporter, queue int, rep *reporter, opts ...sdktrace.BatchSpanProcessorOption) *spanSink {
	k := &spanSink{name: name, limit: int64(queue)}
	k.exp = &countingExporter{SpanExporter: exp, sink: k, rep: rep}
	opts = append(opts, sdktrace.WithMaxQueueSize(queue))
	if queue < sdktrace.DefaultMaxExportBatchSize {
		opts = append(opts, sdktrace.WithMaxExportBatchSize(queue))
	}
	k.bsp = sdktrace.NewBatchSpanProcessor(k.exp, opts...)
	return k
}

// processor is what a process's TracerProvider registers.
func (k *spanSink) processor() sdktrace.SpanProcessor { return sinkProcessor{k} }

func (k *spanSink) shutdown(ctx context.Context) error {
	err := k.bsp.Shutdown(ctx)
	if err != nil {
		// The processor gave up waiting for an export stuck on a hung
		// collector and so never shut the exporter down; do it here, which
		// aborts that export and closes the connection.
		_ = k.exp.Shutdown(ctx)
	}
	return err
}

// sinkProcessor is the spanSink as a process's provider sees it.
type sinkProcessor struct{ k *spanSink }

func (sinkProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

func (p sinkProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return // the batch processor ignores these too
	}
	k := p.k
	if k.inflight.Add(1) > k.limit {
		k.inflight.Add(-1)
		k.dropped.Add(1)
		return
	}
	k.bsp.OnEnd(s)
}

// Shutdown does nothing: the sink outlives the providers that use it and is
// shut down once, by Exporter.Shutdown.
func (sinkProcessor) Shutdown(context.Context) error { return nil }

// ForceFlush does nothing for the same reason: a provider being released
// need not wait for other processes' spans; its own are already queued.
func (sinkProcessor) ForceFlush(context.Context) error { return nil }

// countingExporter wraps a destination to count what it exported and what
// failed, and to report failures through the rate-limited reporter instead
// of the global OpenTelemetry error handler, which logs every failed batch.
type countingExporter struct {
	sdktrace.SpanExporter
	sink     *spanSink
	rep      *reporter
	shutOnce sync.Once
	shutErr  error
}

func (c *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := c.SpanExporter.ExportSpans(ctx, spans)
	n := len(spans)
	c.sink.inflight.Add(-int64(n))
	if err != nil {
		c.sink.failed.Add(uint64(n))
		c.rep.spanError(c.sink.name, err)
	} else {
		c.sink.exported.Add(uint64(n))
	}
	// The error is counted and logged; returning it would only log it again.
	return nil
}

// Shutdown may be called by the batch processor and by spanSink.shutdown;
// the OTLP exporter accepts only one.
func (c *countingExporter) Shutdown(ctx context.Context) error {
	c.shutOnce.Do(func() { c.shutErr = c.SpanExporter.Shutdown(ctx) })
	return c.shutErr
}

// metricSink is the one OTLP metric exporter that every process's periodic
// reader exports through. Its Shutdown does nothing, so releasing a process's
// MeterProvider (whose reader shuts its exporter down) does not close the
// connection the others use; Exporter.Shutdown closes the real one.
type metricSink struct {
	sdkmetric.Exporter
	rep    *reporter
	failed atomic.Uint64
}

func (m *metricSink) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	err := m.Exporter.Export(ctx, rm)
	if err != nil {
		m.failed.Add(1)
		m.rep.metricError(err)
	}
	// Counted and logged; the reader would hand it to the global handler.
	return nil
}

func (*metricSink) Shutdown(context.Context) error { return nil }
