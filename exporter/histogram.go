package exporter

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/embedded"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
)

// histogram is an explicit-bucket histogram that the agent aggregates
// itself and hands to the SDK's periodic reader as a metric producer, so
// that the SDK's exporter, interval and temporality settings still apply.
// The SDK's own instruments normalised and hashed the attribute set on
// every Record (a tenth of the agent's CPU); here a request whose series
// is cached costs a lock and a few adds.
//
// It keeps the SDK's semantics: cumulative or delta temporality as the
// exporter asks, min and max, at most cardinalityLimit points per
// collection (the rest go to the otel.metric.overflow=true point), and
// per bucket the last exemplar that the exemplar filter let through.
type histogram struct {
	embedded.Float64Histogram

	name, description, unit string
	bounds                  []float64
	opts                    *histogramOptions

	mu     sync.Mutex
	points map[attribute.Distinct]*histPoint
	start  time.Time // of the current aggregation period
	gen    uint64    // advances when a delta collection drops the points
}

// histogramOptions are the settings every histogram of the agent shares.
type histogramOptions struct {
	delta            bool
	exemplars        exemplarFilter
	cardinalityLimit int // <= 0: none
}

type exemplarFilter int

const (
	exemplarsTraceBased exemplarFilter = iota // sampled spans only (the SDK's default)
	exemplarsAlwaysOn
	exemplarsAlwaysOff
)

// histogramOptionsFrom reads the exporter's temporality for histograms and
// the SDK's environment variables for exemplars and cardinality.
func histogramOptionsFrom(exp sdkmetric.Exporter) *histogramOptions {
	o := &histogramOptions{}
	if exp != nil {
		o.delta = exp.Temporality(sdkmetric.InstrumentKindHistogram) == metricdata.DeltaTemporality
	}
	o.exemplars, _ = exemplarFilterFromEnv(os.Getenv)
	o.cardinalityLimit, _ = cardinalityLimitFromEnv(os.Getenv)
	return o
}

// exemplarFilterFromEnv reads OTEL_METRICS_EXEMPLAR_FILTER; a bad value is
// an error, and the default.
func exemplarFilterFromEnv(getenv func(string) string) (exemplarFilter, error) {
	switch v := strings.TrimSpace(getenv("OTEL_METRICS_EXEMPLAR_FILTER")); strings.ToLower(v) {
	case "", "trace_based":
		return exemplarsTraceBased, nil
	case "always_on":
		return exemplarsAlwaysOn, nil
	case "always_off":
		return exemplarsAlwaysOff, nil
	default:
		return exemplarsTraceBased, fmt.Errorf("OTEL_METRICS_EXEMPLAR_FILTER=%q: want trace_based, always_on or always_off", v)
	}
}

// cardinalityLimitFromEnv reads OTEL_GO_X_CARDINALITY_LIMIT, 2000 (the
// SDK's) when unset; a bad value is an error, and that default.
func cardinalityLimitFromEnv(getenv func(string) string) (int, error) {
	v := strings.TrimSpace(getenv("OTEL_GO_X_CARDINALITY_LIMIT"))
	if v == "" {
		return 2000, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 2000, fmt.Errorf("OTEL_GO_X_CARDINALITY_LIMIT=%q: want an integer (0 or less: no limit)", v)
	}
	return n, nil
}

// overflowAttrs is the point of measurements beyond the cardinality limit.
var overflowAttrs = attribute.NewSet(attribute.Bool("otel.metric.overflow", true))

type histPoint struct {
	attrs    attribute.Set
	gen      uint64
	count    uint64
	sum      float64
	min, max float64
	// A kernel series added with delta temporality may not say what its
	// extremes were in this period (addKernel): then the point has none.
	noMin, noMax bool
	counts       []uint64
	// exemplars holds, per bucket, the last exemplar (zero Time: none).
	exemplars []metricdata.Exemplar[float64]
}

// point returns the point of attrs, creating it (or the overflow point
// past the cardinality limit). h.mu is held.
func (h *histogram) point(attrs attribute.Set) *histPoint {
	key := attrs.Equivalent()
	if p, ok := h.points[key]; ok {
		return p
	}
	if limit := h.opts.cardinalityLimit; limit > 0 && len(h.points) >= limit-1 {
		attrs, key = overflowAttrs, overflowAttrs.Equivalent()
		if p, ok := h.points[key]; ok {
			return p
		}
	}
	p := &histPoint{attrs: attrs, gen: h.gen, counts: make([]uint64, len(h.bounds)+1),
		exemplars: make([]metricdata.Exemplar[float64], len(h.bounds)+1)}
	h.points[key] = p
	return p
}

// add records v in p; h.mu is held.
func (h *histogram) add(p *histPoint, v float64, sc trace.SpanContext, at time.Time) {
	// Bucket i holds (bounds[i-1], bounds[i]], as the SDK's.
	i := sort.SearchFloat64s(h.bounds, v)
	p.counts[i]++
	if p.count == 0 || v < p.min {
		p.min = v
	}
	if p.count == 0 || v > p.max {
		p.max = v
	}
	p.count++
	p.sum += v
	switch h.opts.exemplars {
	case exemplarsAlwaysOff:
		return
	case exemplarsTraceBased:
		if !sc.IsSampled() {
			return
		}
	}
	e := &p.exemplars[i]
	e.Value, e.Time = v, at
	e.TraceID, e.SpanID = nil, nil
	if sc.IsValid() {
		tid, sid := sc.TraceID(), sc.SpanID()
		e.TraceID, e.SpanID = tid[:], sid[:]
	}
}

// Record is metric.Float64Histogram's: the attribute set from opts, the
// exemplar's span from ctx.
func (h *histogram) Record(ctx context.Context, v float64, opts ...metric.RecordOption) {
	attrs := metric.NewRecordConfig(opts).Attributes()
	sc := trace.SpanContextFromContext(ctx)
	h.mu.Lock()
	h.add(h.point(attrs), v, sc, time.Now())
	h.mu.Unlock()
}

// recordCached records v in *cached, the point a caller keeps for one
// attribute set, looking it up again when it is gone (a delta
// collection) or not looked up yet. at is the exemplar's time.
func (h *histogram) recordCached(cached **histPoint, attrs attribute.Set, v float64, sc trace.SpanContext, at time.Time) {
	h.mu.Lock()
	p := *cached
	if p == nil || p.gen != h.gen {
		p = h.point(attrs)
		*cached = p
	}
	h.add(p, v, sc, at)
	h.mu.Unlock()
}

// Enabled is metric.Float64Histogram's: measurements are always wanted.
func (h *histogram) Enabled(context.Context) bool { return true }

// collect returns the points measured since the period began; with
// delta temporality it starts a new period.
func (h *histogram) collect(now time.Time) (metricdata.Metrics, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	data := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
	if h.opts.delta {
		data.Temporality = metricdata.DeltaTemporality
	}
	for _, p := range h.points {
		if p.count == 0 {
			continue
		}
		dp := metricdata.HistogramDataPoint[float64]{
			Attributes: p.attrs, StartTime: h.start, Time: now, Count: p.count,
			Bounds: h.bounds, BucketCounts: slices.Clone(p.counts), Sum: p.sum,
		}
		if !p.noMin {
			dp.Min = metricdata.NewExtrema(p.min)
		}
		if !p.noMax {
			dp.Max = metricdata.NewExtrema(p.max)
		}
		for _, e := range p.exemplars {
			if !e.Time.IsZero() {
				e.TraceID, e.SpanID = slices.Clone(e.TraceID), slices.Clone(e.SpanID)
				dp.Exemplars = append(dp.Exemplars, e)
			}
		}
		data.DataPoints = append(data.DataPoints, dp)
	}
	if h.opts.delta {
		// A new period: points start again, and cached ones are stale.
		clear(h.points)
		h.gen++
		h.start = now
	}
	if len(data.DataPoints) == 0 {
		return metricdata.Metrics{}, false
	}
	return metricdata.Metrics{Name: h.name, Description: h.description, Unit: h.unit, Data: data}, true
}

// histograms is one process's set of histograms: the meter its semconv
// instruments are made with, and the producer the reader collects.
type histograms struct {
	noop.Meter // every other instrument kind is unused

	opts *histogramOptions
	mu   sync.Mutex
	all  []*histogram
}

func newHistograms(opts *histogramOptions) *histograms { return &histograms{opts: opts} }

// Float64Histogram makes one of the agent's histograms with the name,
// unit, description and buckets that the semconv constructor passes.
func (hs *histograms) Float64Histogram(name string, options ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	cfg := metric.NewFloat64HistogramConfig(options...)
	bounds := cfg.ExplicitBucketBoundaries()
	if bounds == nil {
		// Every histogram of the agent's is a duration in seconds, and
		// its constructor names its buckets; were one not to, the SDK's
		// default (made for milliseconds) would put every operation
		// under 5 s in one bucket. These are the conventions' for
		// durations.
		bounds = messagingDurationBounds
	}
	h := &histogram{name: name, description: cfg.Description(), unit: cfg.Unit(), bounds: slices.Clone(bounds),
		opts: hs.opts, points: make(map[attribute.Distinct]*histPoint), start: time.Now()}
	hs.mu.Lock()
	hs.all = append(hs.all, h)
	hs.mu.Unlock()
	return h, nil
}

// Produce is sdkmetric.Producer's: the reader calls it at each collection.
func (hs *histograms) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	hs.mu.Lock()
	all := slices.Clone(hs.all)
	hs.mu.Unlock()
	now := time.Now()
	sm := metricdata.ScopeMetrics{Scope: instrumentation.Scope{Name: scopeName, Version: scopeVersion}}
	for _, h := range all {
		if m, ok := h.collect(now); ok {
			sm.Metrics = append(sm.Metrics, m)
		}
	}
	if len(sm.Metrics) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{sm}, nil
}
