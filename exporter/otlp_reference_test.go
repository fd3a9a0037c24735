package exporter

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// scopePB is every span's instrumentation scope.
var scopePB = &commonpb.InstrumentationScope{Name: scopeName, Version: scopeVersion}

// pbBatch is the reference for traceCodec: it builds the OTLP messages of
// one batch of records as the SDK's OTLP exporter converts spans, which
// proto.Marshal then writes. (It was the agent's conversion before the
// codec wrote records directly.)
type pbBatch struct {
	resources map[*spanResource]*resourcepb.Resource // each resource's message

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
		rs.Resource, rs.SchemaUrl, rs.ScopeSpans = b.resources[res], res.schema, b.scopePtrs.take(1)
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
	s.TraceState = rec.traceState
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
