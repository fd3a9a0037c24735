// Package otlptest is a real OTLP/gRPC receiver that runs inside a test. It
// implements the collector's TraceService and MetricsService on 127.0.0.1, so
// tests exercise the same exporters, wire format and retries as production
// instead of an in-memory fake, and it can be told to be slow, to hang or to
// fail, which is how tests prove that a bad collector never hurts the agent.
//
// What it received is flattened into plain Go values (Span, MetricPoint) that
// tests can compare without knowing the protobuf types.
package otlptest

import (
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Span is one received span, flattened with its resource and scope.
type Span struct {
	Resource     map[string]any
	Scope        string // instrumentation scope name
	ScopeVersion string

	Name         string
	Kind         trace.SpanKind
	TraceID      trace.TraceID
	SpanID       trace.SpanID
	ParentSpanID trace.SpanID // zero for a root span
	Flags        uint32       // W3C trace flags in the low byte (OTLP's span flags)
	TraceState   string       // W3C tracestate, "" when none
	Start, End   time.Time
	Attributes   map[string]any

	StatusCode    codes.Code
	StatusMessage string
}

// MetricPoint is one received data point, flattened with its metric's name,
// resource and scope. A cumulative metric arrives again at every export, so
// the same series appears once per export, newest last.
type MetricPoint struct {
	Resource     map[string]any
	Scope        string
	ScopeVersion string

	Name        string
	Unit        string
	Description string
	Type        string // "histogram", "sum", "gauge", "exponential_histogram" or "summary"
	Temporality string // "cumulative" or "delta" for sums and histograms

	Attributes map[string]any
	Start      time.Time
	Time       time.Time

	// Histograms.
	Count        uint64
	Sum          float64
	Bounds       []float64 // explicit bucket boundaries
	BucketCounts []uint64  // len(Bounds)+1 counts

	// Sums and gauges (ints are converted to float64).
	Value float64
}

// Option changes how the receiver answers. Options can be given to Start or,
// later, to Set, so a test can make a healthy collector go bad mid-run.
type Option func(*behaviour)

type behaviour struct {
	delay    time.Duration
	hang     bool
	err      error
	rejected int64 // of each span export's spans: partial success
}

// WithDelay makes every Export wait d before it answers (a slow collector).
// The data is stored when the answer is sent.
func WithDelay(d time.Duration) Option { return func(b *behaviour) { b.delay = d } }

// WithHang makes every Export block until the client gives up or the
// receiver stops (a collector that accepts connections but never answers).
// Nothing is stored.
func WithHang() Option { return func(b *behaviour) { b.hang = true } }

// WithError makes every Export fail with err, which should be a gRPC status
// error (status.Error(codes.Unavailable, ...)) so the exporter's retry logic
// sees what a real collector would send. Nothing is stored.
func WithError(err error) Option { return func(b *behaviour) { b.err = err } }

// WithRejectedSpans makes every span export answer with a partial success
// that rejects n of its spans (OTLP's partial_success); the others, all
// but the last n, are stored.
func WithRejectedSpans(n int64) Option { return func(b *behaviour) { b.rejected = n } }

// Healthy resets the receiver to answer at once and store everything.
func Healthy() Option { return func(b *behaviour) { *b = behaviour{} } }

// Receiver is a running OTLP/gRPC receiver. It is safe for concurrent use.
type Receiver struct {
	lis    net.Listener
	srv    *grpc.Server
	stop   chan struct{}
	closed sync.Once

	mu          sync.Mutex
	beh         behaviour
	spans       []Span
	metrics     []MetricPoint
	traceCalls  int
	metricCalls int
	peers       map[netip.AddrPort]bool // the exporters' ends of their connections
	changed     chan struct{}           // closed and replaced whenever data arrives, to wake waiters
}

// Start starts a receiver on 127.0.0.1 on a free port and stops it when the
// test ends.
func Start(t testing.TB, opts ...Option) *Receiver {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("otlptest: listen: %v", err)
	}
	return StartOn(t, lis, opts...)
}

// StartOn starts a receiver on lis (another network namespace's, say),
// and stops it when the test ends.
func StartOn(t testing.TB, lis net.Listener, opts ...Option) *Receiver {
	r := &Receiver{
		lis:     lis,
		stop:    make(chan struct{}),
		changed: make(chan struct{}),
	}
	r.Set(opts...)
	r.serve(lis)
	t.Cleanup(r.Close)
	return r
}

// serve starts a gRPC server on lis.
func (r *Receiver) serve(lis net.Listener) {
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, traceService{r: r})
	colmetricpb.RegisterMetricsServiceServer(srv, metricsService{r: r})
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

// Down stops serving, as a collector that went away does: its connections
// close, and new ones are refused until Up.
func (r *Receiver) Down() {
	r.mu.Lock()
	srv := r.srv
	r.mu.Unlock()
	srv.Stop()
}

// Up serves again, on the same address, after Down.
func (r *Receiver) Up(t testing.TB) {
	t.Helper()
	lis, err := net.Listen("tcp", r.Endpoint())
	if err != nil {
		t.Fatalf("otlptest: listen again: %v", err)
	}
	r.serve(lis)
}

// Endpoint is the receiver's address as host:port.
func (r *Receiver) Endpoint() string { return r.lis.Addr().String() }

// URL is the endpoint as http://host:port, the form OTEL_EXPORTER_OTLP_ENDPOINT
// takes; the http scheme also tells the gRPC exporters to use plaintext.
func (r *Receiver) URL() string { return "http://" + r.Endpoint() }

// Set replaces the receiver's behaviour; no options means healthy.
func (r *Receiver) Set(opts ...Option) {
	var b behaviour
	for _, o := range opts {
		o(&b)
	}
	r.mu.Lock()
	r.beh = b
	r.mu.Unlock()
}

// Close stops the receiver at once, ending hung calls. It is safe to call
// more than once; Start registers it as a test cleanup.
func (r *Receiver) Close() {
	r.closed.Do(func() {
		close(r.stop)
		r.mu.Lock()
		srv := r.srv
		r.mu.Unlock()
		srv.Stop()
	})
}

// Calls reports how many trace and metric Export calls arrived, including
// the ones that were made to fail or hang.
func (r *Receiver) Calls() (traces, metrics int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.traceCalls, r.metricCalls
}

// Spans returns a copy of every span received so far, in arrival order.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Metrics returns a copy of every data point received so far, in arrival order.
func (r *Receiver) Metrics() []MetricPoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]MetricPoint(nil), r.metrics...)
}

// WaitSpans waits until cond holds for the spans received so far and returns
// them; it fails the test after timeout, printing what did arrive.
func (r *Receiver) WaitSpans(t testing.TB, timeout time.Duration, cond func([]Span) bool) []Span {
	t.Helper()
	got, ok := wait(r, timeout, r.Spans, cond)
	if !ok {
		t.Fatalf("otlptest: condition not met within %v; %d spans received:\n%s", timeout, len(got), dump(got))
	}
	return got
}

// WaitMetric waits until cond holds for the data points received so far and
// returns them; it fails the test after timeout, printing what did arrive.
func (r *Receiver) WaitMetric(t testing.TB, timeout time.Duration, cond func([]MetricPoint) bool) []MetricPoint {
	t.Helper()
	got, ok := wait(r, timeout, r.Metrics, cond)
	if !ok {
		t.Fatalf("otlptest: condition not met within %v; %d metric points received:\n%s", timeout, len(got), dump(got))
	}
	return got
}

// wait re-checks cond whenever data arrives rather than polling, so tests
// are as fast as the exporter and not slower than a poll interval.
func wait[T any](r *Receiver, timeout time.Duration, get func() []T, cond func([]T) bool) ([]T, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		changed := r.changed
		r.mu.Unlock()
		got := get()
		if cond(got) {
			return got, true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return get(), false
		}
	}
}

// behave applies the configured behaviour to one call; a non-nil error is
// what the call answers instead of storing the data.
func (r *Receiver) behave(ctx context.Context, calls *int) error {
	r.mu.Lock()
	*calls++
	b := r.beh
	r.mu.Unlock()
	if b.hang {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.stop:
			return context.Canceled
		}
	}
	if b.delay > 0 {
		t := time.NewTimer(b.delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-r.stop:
			return context.Canceled
		}
	}
	return b.err
}

func (r *Receiver) notify() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// traceService and metricsService are separate types because both gRPC
// services name their method Export.
type traceService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

func (s traceService) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.r.notePeer(ctx)
	return s.r.exportTraces(ctx, req)
}

type metricsService struct {
	colmetricpb.UnimplementedMetricsServiceServer
	r *Receiver
}

func (s metricsService) Export(ctx context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	s.r.notePeer(ctx)
	return s.r.exportMetrics(ctx, req)
}

// notePeer keeps the address an export came from.
func (r *Receiver) notePeer(ctx context.Context) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return
	}
	tcp, ok := p.Addr.(*net.TCPAddr)
	if !ok {
		return
	}
	r.mu.Lock()
	if r.peers == nil {
		r.peers = make(map[netip.AddrPort]bool)
	}
	r.peers[tcp.AddrPort()] = true
	r.mu.Unlock()
}

// Peers are the addresses exports came from: the exporters' ends of their
// connections.
func (r *Receiver) Peers() []netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.peers))
}

func (r *Receiver) exportTraces(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	if err := r.behave(ctx, &r.traceCalls); err != nil {
		return nil, err
	}
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				got = append(got, Span{
					Resource:      res,
					Scope:         ss.GetScope().GetName(),
					ScopeVersion:  ss.GetScope().GetVersion(),
					Name:          s.GetName(),
					Kind:          spanKind(s.GetKind()),
					TraceID:       trace.TraceID(pad16(s.GetTraceId())),
					SpanID:        trace.SpanID(pad8(s.GetSpanId())),
					ParentSpanID:  trace.SpanID(pad8(s.GetParentSpanId())),
					Flags:         s.GetFlags(),
					TraceState:    s.GetTraceState(),
					Start:         unixNano(s.GetStartTimeUnixNano()),
					End:           unixNano(s.GetEndTimeUnixNano()),
					Attributes:    attrMap(s.GetAttributes()),
					StatusCode:    statusCode(s.GetStatus().GetCode()),
					StatusMessage: s.GetStatus().GetMessage(),
				})
			}
		}
	}
	r.mu.Lock()
	rejected := min(r.beh.rejected, int64(len(got)))
	r.spans = append(r.spans, got[:len(got)-int(rejected)]...)
	r.notify()
	r.mu.Unlock()
	resp := &coltracepb.ExportTraceServiceResponse{}
	if rejected > 0 {
		resp.PartialSuccess = &coltracepb.ExportTracePartialSuccess{RejectedSpans: rejected, ErrorMessage: "spans rejected by the test receiver"}
	}
	return resp, nil
}

func (r *Receiver) exportMetrics(ctx context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	if err := r.behave(ctx, &r.metricCalls); err != nil {
		return nil, err
	}
	var got []MetricPoint
	for _, rm := range req.GetResourceMetrics() {
		res := attrMap(rm.GetResource().GetAttributes())
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				base := MetricPoint{
					Resource:     res,
					Scope:        sm.GetScope().GetName(),
					ScopeVersion: sm.GetScope().GetVersion(),
					Name:         m.GetName(),
					Unit:         m.GetUnit(),
					Description:  m.GetDescription(),
				}
				got = append(got, flattenMetric(base, m)...)
			}
		}
	}
	r.mu.Lock()
	r.metrics = append(r.metrics, got...)
	r.notify()
	r.mu.Unlock()
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

func flattenMetric(base MetricPoint, m *metricpb.Metric) []MetricPoint {
	var out []MetricPoint
	switch d := m.GetData().(type) {
	case *metricpb.Metric_Histogram:
		for _, p := range d.Histogram.GetDataPoints() {
			mp := base
			mp.Type = "histogram"
			mp.Temporality = temporality(d.Histogram.GetAggregationTemporality())
			mp.Attributes = attrMap(p.GetAttributes())
			mp.Start = unixNano(p.GetStartTimeUnixNano())
			mp.Time = unixNano(p.GetTimeUnixNano())
			mp.Count = p.GetCount()
			mp.Sum = p.GetSum()
			mp.Bounds = p.GetExplicitBounds()
			mp.BucketCounts = p.GetBucketCounts()
			out = append(out, mp)
		}
	case *metricpb.Metric_Sum:
		for _, p := range d.Sum.GetDataPoints() {
			mp := numberPoint(base, p)
			mp.Type = "sum"
			mp.Temporality = temporality(d.Sum.GetAggregationTemporality())
			out = append(out, mp)
		}
	case *metricpb.Metric_Gauge:
		for _, p := range d.Gauge.GetDataPoints() {
			mp := numberPoint(base, p)
			mp.Type = "gauge"
			out = append(out, mp)
		}
	case *metricpb.Metric_ExponentialHistogram:
		for _, p := range d.ExponentialHistogram.GetDataPoints() {
			mp := base
			mp.Type = "exponential_histogram"
			mp.Temporality = temporality(d.ExponentialHistogram.GetAggregationTemporality())
			mp.Attributes = attrMap(p.GetAttributes())
			mp.Start = unixNano(p.GetStartTimeUnixNano())
			mp.Time = unixNano(p.GetTimeUnixNano())
			mp.Count = p.GetCount()
			mp.Sum = p.GetSum()
			out = append(out, mp)
		}
	case *metricpb.Metric_Summary:
		for _, p := range d.Summary.GetDataPoints() {
			mp := base
			mp.Type = "summary"
			mp.Attributes = attrMap(p.GetAttributes())
			mp.Start = unixNano(p.GetStartTimeUnixNano())
			mp.Time = unixNano(p.GetTimeUnixNano())
			mp.Count = p.GetCount()
			mp.Sum = p.GetSum()
			out = append(out, mp)
		}
	}
	return out
}

func numberPoint(base MetricPoint, p *metricpb.NumberDataPoint) MetricPoint {
	base.Attributes = attrMap(p.GetAttributes())
	base.Start = unixNano(p.GetStartTimeUnixNano())
	base.Time = unixNano(p.GetTimeUnixNano())
	switch v := p.GetValue().(type) {
	case *metricpb.NumberDataPoint_AsDouble:
		base.Value = v.AsDouble
	case *metricpb.NumberDataPoint_AsInt:
		base.Value = float64(v.AsInt)
	}
	return base
}

func temporality(t metricpb.AggregationTemporality) string {
	switch t {
	case metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE:
		return "cumulative"
	case metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA:
		return "delta"
	}
	return ""
}

// attrMap turns OTLP key/values into Go values: string, bool, int64,
// float64, []byte, []any and map[string]any.
func attrMap(kvs []*commonpb.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = anyValue(kv.GetValue())
	}
	return m
}

func anyValue(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BytesValue:
		return x.BytesValue
	case *commonpb.AnyValue_ArrayValue:
		var out []any
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, anyValue(e))
		}
		return out
	case *commonpb.AnyValue_KvlistValue:
		return attrMap(x.KvlistValue.GetValues())
	}
	return nil
}

func spanKind(k tracepb.Span_SpanKind) trace.SpanKind {
	switch k {
	case tracepb.Span_SPAN_KIND_INTERNAL:
		return trace.SpanKindInternal
	case tracepb.Span_SPAN_KIND_SERVER:
		return trace.SpanKindServer
	case tracepb.Span_SPAN_KIND_CLIENT:
		return trace.SpanKindClient
	case tracepb.Span_SPAN_KIND_PRODUCER:
		return trace.SpanKindProducer
	case tracepb.Span_SPAN_KIND_CONSUMER:
		return trace.SpanKindConsumer
	}
	return trace.SpanKindUnspecified
}

func statusCode(c tracepb.Status_StatusCode) codes.Code {
	switch c {
	case tracepb.Status_STATUS_CODE_OK:
		return codes.Ok
	case tracepb.Status_STATUS_CODE_ERROR:
		return codes.Error
	}
	return codes.Unset
}

func unixNano(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(ns))
}

// pad16 and pad8 tolerate malformed ids (a real collector would reject
// them) so that a test sees the bad value instead of a panic.
func pad16(b []byte) (out [16]byte) { copy(out[:], b); return out }
func pad8(b []byte) (out [8]byte)   { copy(out[:], b); return out }

// String renders a span on one line for failure messages.
func (s Span) String() string {
	return s.Kind.String() + " " + s.Name + " trace=" + hex.EncodeToString(s.TraceID[:]) +
		" span=" + hex.EncodeToString(s.SpanID[:]) + " parent=" + hex.EncodeToString(s.ParentSpanID[:]) +
		" status=" + s.StatusCode.String() + " attrs=" + fmtMap(s.Attributes) + " resource=" + fmtMap(s.Resource)
}

// String renders a data point on one line for failure messages.
func (p MetricPoint) String() string {
	return p.Name + " " + p.Type + " attrs=" + fmtMap(p.Attributes) + " count=" + fmtAny(p.Count) +
		" sum=" + fmtAny(p.Sum) + " value=" + fmtAny(p.Value) + " resource=" + fmtMap(p.Resource)
}

func dump[T fmt.Stringer](items []T) string {
	var b strings.Builder
	for i, it := range items {
		if i == 50 {
			fmt.Fprintf(&b, "  ... %d more\n", len(items)-i)
			break
		}
		b.WriteString("  ")
		b.WriteString(it.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// fmtMap prints a map with sorted keys so failure messages are stable.
func fmtMap(m map[string]any) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%v", k, m[k])
	}
	b.WriteByte('}')
	return b.String()
}

func fmtAny(v any) string { return fmt.Sprint(v) }
