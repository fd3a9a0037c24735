package otlptest

import (
	"context"
	"reflect"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func traceExporter(t *testing.T, r *Receiver) sdktrace.SpanExporter {
	exp, err := otlptracegrpc.New(context.Background(),
		otlptracegrpc.WithEndpoint(r.Endpoint()), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exp.Shutdown(context.Background()) })
	return exp
}

// oneSpan makes a finished span to hand to an exporter directly.
func oneSpan(t *testing.T) sdktrace.ReadOnlySpan {
	var got sdktrace.ReadOnlySpan
	rec := recorder(func(s sdktrace.ReadOnlySpan) { got = s })
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSpanProcessor(rec),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "svc"), attribute.Int("process.pid", 7))),
	)
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true,
	})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
	start := time.Unix(1_800_000_000, 5)
	_, span := tp.Tracer("scope", trace.WithInstrumentationVersion("v1")).Start(ctx, "GET /x",
		trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start),
		trace.WithAttributes(attribute.String("s", "v"), attribute.Int("i", 3), attribute.Bool("b", true),
			attribute.Float64("f", 1.5), attribute.StringSlice("l", []string{"a", "b"})))
	span.SetStatus(codes.Error, "boom")
	span.End(trace.WithTimestamp(start.Add(time.Second)))
	return got
}

type recorder func(sdktrace.ReadOnlySpan)

func (recorder) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (r recorder) OnEnd(s sdktrace.ReadOnlySpan)                 { r(s) }
func (recorder) Shutdown(context.Context) error                  { return nil }
func (recorder) ForceFlush(context.Context) error                { return nil }

func TestSpans(t *testing.T) {
	r := Start(t)
	in := oneSpan(t)
	if err := traceExporter(t, r).ExportSpans(context.Background(), []sdktrace.ReadOnlySpan{in}); err != nil {
		t.Fatal(err)
	}
	got := r.WaitSpans(t, 5*time.Second, func(s []Span) bool { return len(s) == 1 })[0]
	want := Span{
		Resource:      map[string]any{"service.name": "svc", "process.pid": int64(7)},
		Scope:         "scope",
		ScopeVersion:  "v1",
		Name:          "GET /x",
		Kind:          trace.SpanKindServer,
		TraceID:       trace.TraceID{1},
		SpanID:        in.SpanContext().SpanID(),
		ParentSpanID:  trace.SpanID{2},
		Flags:         got.Flags,
		Start:         time.Unix(1_800_000_000, 5),
		End:           time.Unix(1_800_000_001, 5),
		Attributes:    map[string]any{"s": "v", "i": int64(3), "b": true, "f": 1.5, "l": []any{"a", "b"}},
		StatusCode:    codes.Error,
		StatusMessage: "boom",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("span:\n got %v\nwant %v", got, want)
	}
	if got.Flags&0xff != uint32(trace.FlagsSampled) {
		t.Errorf("flags = %#x, want sampled", got.Flags)
	}
	if tr, m := r.Calls(); tr != 1 || m != 0 {
		t.Errorf("Calls = %d, %d", tr, m)
	}
}

func TestMetrics(t *testing.T) {
	r := Start(t)
	exp, err := otlpmetricgrpc.New(context.Background(), otlpmetricgrpc.WithEndpoint(r.Endpoint()), otlpmetricgrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))),
		sdkmetric.WithResource(resource.NewSchemaless(attribute.String("service.name", "svc"))),
	)
	m := mp.Meter("scope")
	h, _ := m.Float64Histogram("dur", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(1, 2))
	h.Record(context.Background(), 0.5, metric.WithAttributes(attribute.String("k", "v")))
	h.Record(context.Background(), 1.5, metric.WithAttributes(attribute.String("k", "v")))
	c, _ := m.Int64Counter("n")
	c.Add(context.Background(), 4)
	if err := mp.Shutdown(context.Background()); err != nil { // flushes
		t.Fatal(err)
	}
	ps := r.WaitMetric(t, 5*time.Second, func(p []MetricPoint) bool { return len(p) == 2 })
	var hist, sum MetricPoint
	for _, p := range ps {
		switch p.Name {
		case "dur":
			hist = p
		case "n":
			sum = p
		}
	}
	if hist.Type != "histogram" || hist.Unit != "s" || hist.Temporality != "cumulative" || hist.Count != 2 ||
		hist.Sum != 2 || !reflect.DeepEqual(hist.Bounds, []float64{1, 2}) ||
		!reflect.DeepEqual(hist.BucketCounts, []uint64{1, 1, 0}) ||
		!reflect.DeepEqual(hist.Attributes, map[string]any{"k": "v"}) || hist.Resource["service.name"] != "svc" ||
		hist.Scope != "scope" || hist.Time.IsZero() {
		t.Errorf("histogram point: %+v", hist)
	}
	if sum.Type != "sum" || sum.Value != 4 {
		t.Errorf("sum point: %+v", sum)
	}
}

func TestBehaviour(t *testing.T) {
	r := Start(t)
	exp := traceExporter(t, r)
	export := func(timeout time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		err := exp.ExportSpans(ctx, []sdktrace.ReadOnlySpan{oneSpan(t)})
		return time.Since(start), err
	}

	r.Set(WithError(status.Error(grpccodes.PermissionDenied, "no")))
	if _, err := export(5 * time.Second); status.Code(err) != grpccodes.PermissionDenied {
		t.Errorf("WithError: err = %v", err)
	}

	r.Set(WithHang())
	if took, err := export(200 * time.Millisecond); err == nil || took > 3*time.Second {
		t.Errorf("WithHang: err = %v after %v, want a timeout near 200ms", err, took)
	}

	r.Set(WithDelay(100 * time.Millisecond))
	if took, err := export(5 * time.Second); err != nil || took < 100*time.Millisecond {
		t.Errorf("WithDelay: err = %v after %v", err, took)
	}

	if n := len(r.Spans()); n != 1 {
		t.Errorf("stored %d spans, want only the delayed one", n)
	}
	if tr, _ := r.Calls(); tr != 3 {
		t.Errorf("trace calls = %d, want 3", tr)
	}

	// Close ends a hung call and is safe twice.
	r.Set(WithHang())
	done := make(chan error, 1)
	go func() { _, err := export(time.Minute); done <- err }()
	for tr, _ := r.Calls(); tr < 4; tr, _ = r.Calls() {
		time.Sleep(5 * time.Millisecond)
	}
	r.Close()
	r.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("hung export succeeded after Close")
		}
	case <-time.After(5 * time.Second):
		t.Error("Close did not end the hung call")
	}
}
