package exporter

import (
	"context"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// otlpSpans sends batches of records with an OTLP client, which does the
// gRPC call, the retries, the headers and the timeout that
// OTEL_EXPORTER_OTLP_* configure. The conversion to protobuf is done here,
// at export time, so that the worker only fills records.
type otlpSpans struct {
	client otlptrace.Client
	// msgs is reused for every batch; only the sink's goroutine exports.
	msgs pbBatch

	stopOnce sync.Once
	stopErr  error
}

func (o *otlpSpans) exportSpans(ctx context.Context, spans []*spanRecord) error {
	err := o.client.UploadTraces(ctx, o.msgs.build(spans))
	// The client has marshalled the messages by now; clearing them lets
	// the request strings they point to go.
	o.msgs.reset()
	if err != nil {
		return fmt.Errorf("traces export: %w", err)
	}
	return nil
}

// shutdown closes the connection; a second call (after a shutdown that
// gave up waiting) does nothing.
func (o *otlpSpans) shutdown(ctx context.Context) error {
	o.stopOnce.Do(func() { o.stopErr = o.client.Stop(ctx) })
	return o.stopErr
}

// scopePB is every span's instrumentation scope. Shared, read-only, by all
// batches: marshalling only reads a message.
var scopePB = &commonpb.InstrumentationScope{Name: scopeName}

// pbBatch builds the OTLP messages of one batch from arrays it reuses, so
// that a batch of spans costs no allocation once they have grown to the
// batch size, and the garbage collector sees a few large arrays instead of
// a dozen small objects per span.
type pbBatch struct {
	resSpans   slab[tracepb.ResourceSpans]
	resPtrs    slab[*tracepb.ResourceSpans]
	scopeSpans slab[tracepb.ScopeSpans]
	scopePtrs  slab[*tracepb.ScopeSpans]
	spans      slab[tracepb.Span]
	spanPtrs   slab[*tracepb.Span]
	statuses   slab[tracepb.Status]
	ids        slab[byte]
	kvs        slab[commonpb.KeyValue]
	kvPtrs     slab[*commonpb.KeyValue]
	values     slab[commonpb.AnyValue]
	strs       slab[commonpb.AnyValue_StringValue]
	ints       slab[commonpb.AnyValue_IntValue]
	floats     slab[commonpb.AnyValue_DoubleValue]
	bools      slab[commonpb.AnyValue_BoolValue]

	// Grouping by process: the group of each resource and of each span.
	groups   map[*spanResource]int
	byGroup  []*spanResource
	perGroup []int
	spanOf   []int
}

func (b *pbBatch) reset() {
	b.resSpans.reset()
	b.resPtrs.reset()
	b.scopeSpans.reset()
	b.scopePtrs.reset()
	b.spans.reset()
	b.spanPtrs.reset()
	b.statuses.reset()
	b.ids.reset()
	b.kvs.reset()
	b.kvPtrs.reset()
	b.values.reset()
	b.strs.reset()
	b.ints.reset()
	b.floats.reset()
	b.bools.reset()
	clear(b.groups)
	clear(b.byGroup)
	b.byGroup, b.perGroup, b.spanOf = b.byGroup[:0], b.perGroup[:0], b.spanOf[:0]
}

// build returns one ResourceSpans per process in spans, each with its
// cached resource and one ScopeSpans. The messages stay valid until reset.
func (b *pbBatch) build(spans []*spanRecord) []*tracepb.ResourceSpans {
	if b.groups == nil {
		b.groups = make(map[*spanResource]int)
	}
	for _, rec := range spans {
		g, ok := b.groups[rec.res]
		if !ok {
			g = len(b.byGroup)
			b.groups[rec.res] = g
			b.byGroup = append(b.byGroup, rec.res)
			b.perGroup = append(b.perGroup, 0)
		}
		b.perGroup[g]++
		b.spanOf = append(b.spanOf, g)
	}
	out := b.resPtrs.take(len(b.byGroup))
	ptrs := b.spanPtrs.take(len(spans))
	for g, res := range b.byGroup {
		n := b.perGroup[g]
		ss := b.scopeSpans.next()
		ss.Scope, ss.Spans = scopePB, ptrs[:0:n]
		ptrs = ptrs[n:]
		rs := b.resSpans.next()
		rs.Resource, rs.SchemaUrl, rs.ScopeSpans = res.pb, res.schema, b.scopePtrs.take(1)
		rs.ScopeSpans[0] = ss
		out[g] = rs
	}
	for i, rec := range spans {
		ss := out[b.spanOf[i]].ScopeSpans[0]
		ss.Spans = append(ss.Spans, b.span(rec)) // within capacity
	}
	return out
}

// span converts one record as the SDK's OTLP exporter converts a span.
func (b *pbBatch) span(rec *spanRecord) *tracepb.Span {
	s := b.spans.next()
	ids := b.ids.take(32)
	copy(ids, rec.traceID[:])
	copy(ids[16:], rec.spanID[:])
	s.TraceId, s.SpanId = ids[:16:16], ids[16:24:24]
	// The low byte is the W3C trace flags; the SDK always says whether the
	// parent is remote, and a parent here always is.
	s.Flags = uint32(rec.flags) | uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
	if rec.parentID.IsValid() {
		copy(ids[24:], rec.parentID[:])
		s.ParentSpanId = ids[24:32:32]
		s.Flags |= uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
	}
	if rec.traceState.Len() > 0 {
		s.TraceState = rec.traceState.String()
	}
	s.Name = rec.name
	s.Kind = spanKindPB(rec.kind)
	s.StartTimeUnixNano = uint64(max(0, rec.start.UnixNano()))
	s.EndTimeUnixNano = uint64(max(0, rec.end.UnixNano()))
	s.Attributes = b.keyValues(rec.attrs)
	st := b.statuses.next()
	if rec.status == codes.Error {
		st.Code, st.Message = tracepb.Status_STATUS_CODE_ERROR, rec.statusMsg
	}
	s.Status = st
	return s
}

// spanKindPB converts a span kind; the API numbers the kinds as OTLP does
// (unspecified 0, internal 1, server 2, client 3, producer 4, consumer 5).
func spanKindPB(k trace.SpanKind) tracepb.Span_SpanKind {
	if k < trace.SpanKindUnspecified || k > trace.SpanKindConsumer {
		return tracepb.Span_SPAN_KIND_UNSPECIFIED
	}
	return tracepb.Span_SpanKind(k)
}

// keyValuesPB converts attributes that live as long as they are used, a
// resource's: its own arrays, never reset.
func keyValuesPB(attrs []attribute.KeyValue) []*commonpb.KeyValue {
	var b pbBatch
	return b.keyValues(attrs)
}

// keyValues converts attributes as the SDK's OTLP exporter does.
func (b *pbBatch) keyValues(attrs []attribute.KeyValue) []*commonpb.KeyValue {
	if len(attrs) == 0 {
		return nil
	}
	out := b.kvPtrs.take(len(attrs))
	kvs := b.kvs.take(len(attrs))
	vals := b.values.take(len(attrs))
	for i, a := range attrs {
		kvs[i].Key, kvs[i].Value = string(a.Key), &vals[i]
		b.value(&vals[i], a.Value)
		out[i] = &kvs[i]
	}
	return out
}

func (b *pbBatch) value(av *commonpb.AnyValue, v attribute.Value) {
	switch v.Type() {
	case attribute.STRING:
		w := b.strs.next()
		w.StringValue = v.AsString()
		av.Value = w
	case attribute.INT64:
		w := b.ints.next()
		w.IntValue = v.AsInt64()
		av.Value = w
	case attribute.FLOAT64:
		w := b.floats.next()
		w.DoubleValue = v.AsFloat64()
		av.Value = w
	case attribute.BOOL:
		w := b.bools.next()
		w.BoolValue = v.AsBool()
		av.Value = w
	case attribute.STRINGSLICE:
		av.Value = array(b, v.AsStringSlice(), attribute.StringValue)
	case attribute.INT64SLICE:
		av.Value = array(b, v.AsInt64Slice(), attribute.Int64Value)
	case attribute.FLOAT64SLICE:
		av.Value = array(b, v.AsFloat64Slice(), attribute.Float64Value)
	case attribute.BOOLSLICE:
		av.Value = array(b, v.AsBoolSlice(), attribute.BoolValue)
	case attribute.SLICE:
		av.Value = array(b, v.AsSlice(), func(v attribute.Value) attribute.Value { return v })
	case attribute.BYTESLICE:
		av.Value = &commonpb.AnyValue_BytesValue{BytesValue: v.AsByteSlice()}
	case attribute.MAP:
		av.Value = &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{Values: b.keyValues(v.AsMap())}}
	case attribute.EMPTY:
		av.Value = nil
	default:
		w := b.strs.next()
		w.StringValue = "INVALID" // what the SDK sends
		av.Value = w
	}
}

// array converts a slice attribute; these are rare (a resource's
// process.command_args), so the array messages are simply allocated.
func array[T any](b *pbBatch, s []T, conv func(T) attribute.Value) *commonpb.AnyValue_ArrayValue {
	vals := make([]*commonpb.AnyValue, len(s))
	for i, e := range s {
		vals[i] = new(commonpb.AnyValue)
		b.value(vals[i], conv(e))
	}
	return &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vals}}
}

// slab hands out elements of an array that is reused from one batch to the
// next. When it runs out it starts a larger array; what was handed out
// stays valid, since its old array lives as long as it is referenced.
type slab[T any] struct{ buf []T }

// take returns n consecutive zeroed elements.
func (s *slab[T]) take(n int) []T {
	if len(s.buf)+n > cap(s.buf) {
		s.buf = make([]T, 0, max(2*cap(s.buf), n, 16))
	}
	s.buf = s.buf[:len(s.buf)+n]
	return s.buf[len(s.buf)-n : len(s.buf) : len(s.buf)]
}

func (s *slab[T]) next() *T { return &s.take(1)[0] }

// reset zeroes what was handed out, so that take returns zeroed elements
// and nothing keeps the last batch's strings alive.
func (s *slab[T]) reset() {
	clear(s.buf)
	s.buf = s.buf[:0]
}
