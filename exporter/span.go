package exporter

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// spanRecord is a finished span as the exporter keeps it: what OTLP and the
// printer need and nothing else. The SDK's span would cost a lock, a
// snapshot, attribute deduplication and a second copy per destination; a
// request from the tracer is already finished and its attributes are
// unique, so none of that is needed.
//
// Records are pooled. The worker fills one and hands it to every sink; each
// sink calls release when it is done (exported, failed or dropped), and the
// last release returns it to the pool, keeping the attribute slice's
// capacity for the next span.
type spanRecord struct {
	res *spanResource

	traceID    trace.TraceID
	spanID     trace.SpanID
	parentID   trace.SpanID // zero for a root span; a parent is always remote
	flags      trace.TraceFlags
	traceState string // the parent's W3C tracestate, "" when none

	kind       trace.SpanKind
	name       string
	start, end time.Time
	status     codes.Code
	statusMsg  string
	attrs      []attribute.KeyValue

	// wire is the span's Span message, without its field header, as the
	// OTLP sinks send it. The worker writes it as soon as the record is
	// filled, while its strings are in the cache (see process.finish);
	// empty means not written yet.
	wire []byte
	// attrsEncoded: wire holds the span up to its attributes, written
	// as they were set (spanAttrs), and finish adds the rest.
	attrsEncoded bool

	refs atomic.Int32
}

// freeRecords are records ready for reuse. A plain list rather than a
// sync.Pool: records are made by the worker and given back by the sinks
// in batches of hundreds, which a sync.Pool takes one by one into chains
// it grows, and empties at every garbage collection.
var freeRecords struct {
	sync.Mutex
	recs []*spanRecord
}

// maxFreeRecords bounds the list: a few batches' worth.
const maxFreeRecords = 2048

// maxKeptWire is the largest encoded span whose buffer a pooled record
// keeps: an HTTP span is a few hundred bytes.
const maxKeptWire = 4096

// newRecord returns a cleared record held by refs sinks.
func newRecord(refs int) *spanRecord {
	freeRecords.Lock()
	var rec *spanRecord
	if n := len(freeRecords.recs); n > 0 {
		rec = freeRecords.recs[n-1]
		freeRecords.recs[n-1] = nil
		freeRecords.recs = freeRecords.recs[:n-1]
	}
	freeRecords.Unlock()
	if rec == nil {
		rec = new(spanRecord)
	}
	rec.refs.Store(int32(refs))
	return rec
}

// release gives up one sink's hold on rec.
func (rec *spanRecord) release() {
	if rec.clearIfUnheld() {
		freeRecords.Lock()
		if len(freeRecords.recs) < maxFreeRecords {
			freeRecords.recs = append(freeRecords.recs, rec)
		}
		freeRecords.Unlock()
	}
}

// releaseAll is release for each record of batch, with one lock.
func releaseAll(batch []*spanRecord) {
	freeRecords.Lock()
	defer freeRecords.Unlock()
	for _, rec := range batch {
		if rec.clearIfUnheld() && len(freeRecords.recs) < maxFreeRecords {
			freeRecords.recs = append(freeRecords.recs, rec)
		}
	}
}

// clearIfUnheld drops one hold on rec and, if it was the last, clears it
// for reuse and reports true.
func (rec *spanRecord) clearIfUnheld() bool {
	if rec.refs.Add(-1) != 0 {
		return false
	}
	attrs := rec.attrs[:0]
	clear(rec.attrs) // the values reference request strings; let them go
	wire := rec.wire[:0]
	if cap(wire) > maxKeptWire {
		wire = nil // an outsized span: don't keep its buffer for every span
	}
	*rec = spanRecord{attrs: attrs, wire: wire}
	return true
}

// spanResource is a process's resource in the forms the sinks want, made
// once per process and shared, read-only, by its records: the encoded OTLP
// message and the three fields the printer shows.
type spanResource struct {
	encoded []byte
	schema  string
	service string
	exe     string
	pid     int64
}

func newSpanResource(res *resource.Resource) *spanResource {
	attrs := res.Attributes()
	r := &spanResource{
		encoded: encodeResource(attrs),
		schema:  res.SchemaURL(),
	}
	for _, kv := range attrs {
		switch kv.Key {
		case semconv.ServiceNameKey:
			r.service = kv.Value.AsString()
		case semconv.ProcessExecutableNameKey:
			r.exe = kv.Value.AsString()
		case semconv.ProcessPIDKey:
			r.pid = kv.Value.AsInt64()
		}
	}
	if r.exe == "" {
		r.exe = r.service
	}
	return r
}

// spanIDs are a new span's identity: a child of parent when it is valid,
// else the root of a new trace, whose ID ends in low unless that is 0.
func spanIDs(parent trace.SpanContext, low uint64) (tid trace.TraceID, sid trace.SpanID) {
	switch {
	case parent.IsValid():
		tid = parent.TraceID()
	case low != 0:
		// The kernel drew the low half, and picked the request for a
		// span by it (bpf.Fast): the sampler judges the same bits.
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.BigEndian.PutUint64(tid[8:], low)
	default:
		for !tid.IsValid() {
			binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
			binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
		}
	}
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], rand.Uint64())
	}
	return tid, sid
}

// sampler decides which spans are kept, as the SDK's samplers named by
// OTEL_TRACES_SAMPLER do. Only remote parents exist here (the parent comes
// from the request's traceparent), so parent-based sampling follows the
// parent's sampled flag.
type sampler struct {
	parentBased bool
	// The root decision: always, never, or a trace ID ratio.
	always, never bool
	bound         uint64
}

// newRatioSampler is the SDK's TraceIDRatioBased: the trace ID's last eight
// bytes, shifted right by one, compared with ratio·2⁶³, so that every SDK
// makes the same decision for the same trace.
func newRatioSampler(ratio float64) sampler {
	switch {
	case ratio >= 1:
		return sampler{always: true}
	case ratio <= 0:
		return sampler{never: true}
	}
	return sampler{bound: uint64(ratio * (1 << 63))}
}

func (s sampler) sample(parent trace.SpanContext, tid trace.TraceID) bool {
	switch {
	case s.parentBased && parent.IsValid():
		return parent.IsSampled()
	case s.always:
		return true
	case s.never:
		return false
	}
	return binary.BigEndian.Uint64(tid[8:16])>>1 < s.bound
}

// samplerFromEnv parses OTEL_TRACES_SAMPLER and its argument the way the
// SDK does. The SDK itself only reports a bad value to the global error
// handler and falls back to a default, which would let a typo sample
// everything silently; the agent refuses to start instead.
func samplerFromEnv(getenv func(string) string) (sampler, error) {
	given := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER"))
	name := strings.ToLower(given)
	arg := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER_ARG"))
	ratio := 1.0
	var argErr error
	if arg != "" {
		v, err := strconv.ParseFloat(arg, 64)
		if err != nil || !(v >= 0 && v <= 1) { // NaN too
			argErr = fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio between 0 and 1", arg)
		}
		ratio = v
	}
	switch name {
	case "", "parentbased_always_on":
		return sampler{parentBased: true, always: true}, nil
	case "always_on":
		return sampler{always: true}, nil
	case "always_off":
		return sampler{never: true}, nil
	case "parentbased_always_off":
		return sampler{parentBased: true, never: true}, nil
	case "traceidratio", "parentbased_traceidratio":
		if argErr != nil {
			return sampler{}, argErr
		}
		s := newRatioSampler(ratio)
		s.parentBased = name == "parentbased_traceidratio"
		return s, nil
	}
	// An unknown sampler: its argument is checked too, so that both
	// mistakes are reported at once.
	return sampler{}, errors.Join(fmt.Errorf("OTEL_TRACES_SAMPLER=%q: want always_on, always_off, traceidratio, "+
		"parentbased_always_on, parentbased_always_off or parentbased_traceidratio", given), argErr)
}

// exemplarSpan carries the current request's span context into the metric
// SDK, whose exemplar filter and reservoir read it from the context during
// Record and keep only copies of the IDs. One per process, reused by the
// worker for every request, it saves the two allocations of
// trace.ContextWithSpanContext per request.
type exemplarSpan struct {
	noop.Span
	sc trace.SpanContext
}

func (s *exemplarSpan) SpanContext() trace.SpanContext { return s.sc }

// spanContext returns a context holding sc for recording a metric point.
func (s *process) spanContext(sc trace.SpanContext) context.Context {
	if s.exemplarCtx == nil {
		s.exemplarCtx = trace.ContextWithSpan(context.Background(), &s.exemplar)
	}
	s.exemplar.sc = sc
	return s.exemplarCtx
}
