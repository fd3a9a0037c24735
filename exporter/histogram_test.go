package exporter

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
	"go.opentelemetry.io/otel/trace"
)

// TestHistogramMatchesSDK: the agent's histograms give the data the SDK's
// own instruments give for the same measurements (times and exemplars
// aside), cumulative and delta, over two collections.
func TestHistogramMatchesSDK(t *testing.T) {
	for _, temporality := range []metricdata.Temporality{metricdata.CumulativeTemporality, metricdata.DeltaTemporality} {
		t.Run(temporality.String(), func(t *testing.T) {
			reader := sdkmetric.NewManualReader(sdkmetric.WithTemporalitySelector(
				func(sdkmetric.InstrumentKind) metricdata.Temporality { return temporality }))
			sdkInst, err := httpconv.NewServerRequestDuration(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter(scopeName))
			if err != nil {
				t.Fatal(err)
			}
			ours := newHistograms(&histogramOptions{delta: temporality == metricdata.DeltaTemporality, cardinalityLimit: 2000})
			ourInst, _ := httpconv.NewServerRequestDuration(ours)
			h := ourInst.Inst().(*histogram)

			rnd := rand.New(rand.NewPCG(5, 6))
			sets := []attribute.Set{
				attribute.NewSet(attribute.String("http.request.method", "GET"), attribute.Int("http.response.status_code", 200)),
				attribute.NewSet(attribute.String("http.request.method", "POST"), attribute.Int("http.response.status_code", 500)),
			}
			cached := []*histPoint{nil, nil}
			for round := range 2 {
				for i := range 500 {
					v := rnd.ExpFloat64() / 20
					if i%50 == 0 {
						v = 0.25 // exactly a boundary: the bucket that ends there
					}
					k := rnd.IntN(2)
					sdkInst.Inst().Record(context.Background(), v, metric.WithAttributeSet(sets[k]))
					if i%2 == 0 {
						ourInst.Inst().Record(context.Background(), v, metric.WithAttributeSet(sets[k]))
					} else {
						h.recordCached(&cached[k], sets[k], v, trace.SpanContext{}, time.Now())
					}
				}
				var want metricdata.ResourceMetrics
				if err := reader.Collect(context.Background(), &want); err != nil {
					t.Fatal(err)
				}
				got, err := ours.Produce(context.Background())
				if err != nil || len(got) != 1 {
					t.Fatalf("round %d: produce: %v, %d scopes", round, err, len(got))
				}
				metricdatatest.AssertEqual(t, want.ScopeMetrics[0].Metrics[0], got[0].Metrics[0],
					metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
			}
		})
	}
}

// Past the cardinality limit, new attribute sets go to the overflow point,
// as the SDK's do.
func TestHistogramCardinalityLimit(t *testing.T) {
	hs := newHistograms(&histogramOptions{cardinalityLimit: 4})
	inst, _ := hs.Float64Histogram("x")
	for i := range 10 {
		inst.Record(context.Background(), 1, metric.WithAttributes(attribute.Int("i", i)))
	}
	got, _ := hs.Produce(context.Background())
	points := got[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints
	var overflow uint64
	for _, p := range points {
		if v, ok := p.Attributes.Value("otel.metric.overflow"); ok && v.AsBool() {
			overflow = p.Count
		}
	}
	if len(points) != 4 || overflow != 7 {
		t.Errorf("%d points, overflow count %d: want 4 points, 7 in overflow", len(points), overflow)
	}
}

// Exemplars follow OTEL_METRICS_EXEMPLAR_FILTER's three settings: one per
// bucket, the last one let through.
func TestHistogramExemplars(t *testing.T) {
	sampled := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled})
	unsampled := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{3}, SpanID: trace.SpanID{4}})
	for _, tc := range []struct {
		env      string
		want     int    // exemplars
		wantSpan byte   // first byte of the span id kept in the first bucket
		filter   string // for the failure message
	}{{"", 1, 2, "trace_based"}, {"always_on", 2, 4, "always_on"}, {"always_off", 0, 0, "always_off"}} {
		t.Run(tc.filter, func(t *testing.T) {
			t.Setenv("OTEL_METRICS_EXEMPLAR_FILTER", tc.env)
			hs := newHistograms(histogramOptionsFrom(nil))
			inst, _ := hs.Float64Histogram("x", metric.WithExplicitBucketBoundaries(1, 2))
			h := inst.(*histogram)
			var p *histPoint
			set := attribute.NewSet()
			h.recordCached(&p, set, 0.5, sampled, time.Unix(100, 0))
			h.recordCached(&p, set, 0.7, unsampled, time.Unix(101, 0))
			h.recordCached(&p, set, 1.5, unsampled, time.Unix(102, 0))
			got, _ := hs.Produce(context.Background())
			ex := got[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints[0].Exemplars
			if len(ex) != tc.want {
				t.Fatalf("%d exemplars, want %d: %+v", len(ex), tc.want, ex)
			}
			if tc.want > 0 && (ex[0].SpanID[0] != tc.wantSpan || ex[0].Time.IsZero()) {
				t.Errorf("first bucket's exemplar %+v, want span %d", ex[0], tc.wantSpan)
			}
		})
	}
}

// A delta collection drops the points; a cached point is looked up again,
// not written to after it was dropped.
func TestHistogramDeltaDropsCachedPoints(t *testing.T) {
	hs := newHistograms(&histogramOptions{delta: true})
	inst, _ := hs.Float64Histogram("x")
	h := inst.(*histogram)
	var p *histPoint
	set := attribute.NewSet(attribute.String("k", "v"))
	for round := range 3 {
		for range round + 1 {
			h.recordCached(&p, set, 1, trace.SpanContext{}, time.Now())
		}
		got, _ := hs.Produce(context.Background())
		points := got[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints
		if len(points) != 1 || points[0].Count != uint64(round+1) {
			t.Fatalf("round %d: %s", round, fmt.Sprint(points))
		}
	}
	if got, _ := hs.Produce(context.Background()); got != nil {
		t.Errorf("nothing measured, yet produced %v", got)
	}
}
