package exporter

import (
	"fmt"
	"math"
	"sync"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// traceCodec is the gRPC codec of the span exporter's connection. It
// encodes the export request itself, field by field, and leaves every
// other message (the response, anything else) to gRPC's protobuf codec.
// Generated-code marshalling was a quarter of the agent's CPU: it sizes
// each message through reflection-driven tables and checks every string's
// UTF-8 again (the exporter has made them valid already). The bytes are
// the same as proto.Marshal's (TestTraceCodecMatchesProto), and a message
// with anything this encoder does not write (span events and links, entity
// references, string-table indexes, nil list entries) goes to the protobuf
// codec whole. The messages are the exporter's own: they carry no unknown
// fields.
type traceCodec struct {
	proto encoding.CodecV2
}

// maxExportRequestBytes is the largest export request sent, the span
// client's default (its own check, which sizes each request by reflection,
// is turned off in favour of this one). A variable for tests.
var maxExportRequestBytes = 64 << 20

func newTraceCodec() traceCodec {
	return traceCodec{proto: encoding.GetCodecV2(proto.Name)}
}

// Name is the content subtype; the collector decodes plain protobuf.
func (traceCodec) Name() string { return proto.Name }

func (c traceCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return c.proto.Unmarshal(data, v)
}

func (c traceCodec) Marshal(v any) (mem.BufferSlice, error) {
	req, ok := v.(*coltracepb.ExportTraceServiceRequest)
	if !ok {
		return c.proto.Marshal(v)
	}
	e := encoders.Get().(*traceEncoder)
	defer e.release()
	size, ok := e.sizeRequest(req)
	if !ok {
		return c.proto.Marshal(v)
	}
	if size > maxExportRequestBytes {
		return nil, fmt.Errorf("export request of %d bytes exceeds %d", size, maxExportRequestBytes)
	}
	if mem.IsBelowBufferPoolingThreshold(size) {
		return mem.BufferSlice{mem.SliceBuffer(e.appendRequest(make([]byte, 0, size), req))}, nil
	}
	buf := requestBuffers.Get(size)
	*buf = e.appendRequest((*buf)[:0], req)
	return mem.BufferSlice{mem.NewBuffer(buf, requestBuffers)}, nil
}

// requestBuffers hold encoded export requests until gRPC has sent them.
// gRPC's default pool zeroes every buffer it hands out; the encoder writes
// each byte anyway, so these are handed out as they were left.
var requestBuffers = &reusedBuffers{}

// reusedBuffers is a mem.BufferPool of buffers that are not cleared.
type reusedBuffers struct{ pool sync.Pool }

func (p *reusedBuffers) Get(n int) *[]byte {
	if b, ok := p.pool.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

func (p *reusedBuffers) Put(b *[]byte) {
	if cap(*b) > maxExportRequestBytes {
		return
	}
	p.pool.Put(b)
}

// traceEncoder encodes in two passes. The first computes the size of
// every nested message in the order the second writes them (a message's
// length comes before its fields), so that each is walked once per pass.
type traceEncoder struct {
	sizes []int
	next  int
	ok    bool // false: the message holds something this encoder does not write
}

var encoders = sync.Pool{New: func() any { return new(traceEncoder) }}

func (e *traceEncoder) release() {
	if cap(e.sizes) > 1<<16 {
		e.sizes = nil // a huge batch: don't keep its table
	}
	e.sizes, e.next = e.sizes[:0], 0
	encoders.Put(e)
}

// Field numbers, from opentelemetry/proto/{collector/trace,trace,resource,common}/v1.
const (
	fRequestResourceSpans = 1

	fResourceSpansResource   = 1
	fResourceSpansScopeSpans = 2
	fResourceSpansSchemaURL  = 3

	fResourceAttributes = 1
	fResourceDropped    = 2

	fScopeSpansScope     = 1
	fScopeSpansSpans     = 2
	fScopeSpansSchemaURL = 3

	fScopeName       = 1
	fScopeVersion    = 2
	fScopeAttributes = 3
	fScopeDropped    = 4

	fSpanTraceID       = 1
	fSpanSpanID        = 2
	fSpanTraceState    = 3
	fSpanParentSpanID  = 4
	fSpanName          = 5
	fSpanKind          = 6
	fSpanStart         = 7
	fSpanEnd           = 8
	fSpanAttributes    = 9
	fSpanDroppedAttrs  = 10
	fSpanDroppedEvents = 12
	fSpanDroppedLinks  = 14
	fSpanStatus        = 15
	fSpanFlags         = 16

	fStatusMessage = 2
	fStatusCode    = 3

	fKeyValueKey   = 1
	fKeyValueValue = 2

	fAnyString = 1
	fAnyBool   = 2
	fAnyInt    = 3
	fAnyDouble = 4
	fAnyArray  = 5
	fAnyKvlist = 6
	fAnyBytes  = 7

	fListValues = 1 // ArrayValue.values and KeyValueList.values
)

// Sizes of the pieces of a field.

func sizeMsgField(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func sizeStringField(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func sizeBytesField(num protowire.Number, b []byte) int {
	if len(b) == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(b))
}

func sizeVarintField(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeFixed64Field(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeFixed64()
}

// push reserves the size slot of a nested message; set fills it.
func (e *traceEncoder) push() int {
	e.sizes = append(e.sizes, 0)
	return len(e.sizes) - 1
}

func (e *traceEncoder) set(slot, n int) int {
	e.sizes[slot] = n
	return n
}

func (e *traceEncoder) sizeRequest(r *coltracepb.ExportTraceServiceRequest) (int, bool) {
	e.ok = true
	n := 0
	for _, rs := range r.ResourceSpans {
		n += sizeMsgField(fRequestResourceSpans, e.sizeResourceSpans(rs))
	}
	return n, e.ok
}

func (e *traceEncoder) sizeResourceSpans(rs *tracepb.ResourceSpans) int {
	if rs == nil {
		e.ok = false
		return 0
	}
	slot := e.push()
	n := 0
	if rs.Resource != nil {
		n += sizeMsgField(fResourceSpansResource, e.sizeResource(rs.Resource))
	}
	for _, ss := range rs.ScopeSpans {
		n += sizeMsgField(fResourceSpansScopeSpans, e.sizeScopeSpans(ss))
	}
	n += sizeStringField(fResourceSpansSchemaURL, rs.SchemaUrl)
	return e.set(slot, n)
}

func (e *traceEncoder) sizeResource(r *resourcepb.Resource) int {
	if len(r.EntityRefs) > 0 {
		e.ok = false
	}
	slot := e.push()
	n := e.sizeKeyValues(fResourceAttributes, r.Attributes)
	n += sizeVarintField(fResourceDropped, uint64(r.DroppedAttributesCount))
	return e.set(slot, n)
}

func (e *traceEncoder) sizeScopeSpans(ss *tracepb.ScopeSpans) int {
	if ss == nil {
		e.ok = false
		return 0
	}
	slot := e.push()
	n := 0
	if ss.Scope != nil {
		n += sizeMsgField(fScopeSpansScope, e.sizeScope(ss.Scope))
	}
	for _, s := range ss.Spans {
		n += sizeMsgField(fScopeSpansSpans, e.sizeSpan(s))
	}
	n += sizeStringField(fScopeSpansSchemaURL, ss.SchemaUrl)
	return e.set(slot, n)
}

func (e *traceEncoder) sizeScope(s *commonpb.InstrumentationScope) int {
	slot := e.push()
	n := sizeStringField(fScopeName, s.Name) + sizeStringField(fScopeVersion, s.Version)
	n += e.sizeKeyValues(fScopeAttributes, s.Attributes)
	n += sizeVarintField(fScopeDropped, uint64(s.DroppedAttributesCount))
	return e.set(slot, n)
}

func (e *traceEncoder) sizeSpan(s *tracepb.Span) int {
	if s == nil || len(s.Events) > 0 || len(s.Links) > 0 {
		e.ok = false
		return 0
	}
	slot := e.push()
	n := sizeBytesField(fSpanTraceID, s.TraceId) + sizeBytesField(fSpanSpanID, s.SpanId) +
		sizeStringField(fSpanTraceState, s.TraceState) + sizeBytesField(fSpanParentSpanID, s.ParentSpanId) +
		sizeStringField(fSpanName, s.Name) + sizeVarintField(fSpanKind, uint64(s.Kind)) +
		sizeFixed64Field(fSpanStart, s.StartTimeUnixNano) + sizeFixed64Field(fSpanEnd, s.EndTimeUnixNano)
	n += e.sizeKeyValues(fSpanAttributes, s.Attributes)
	n += sizeVarintField(fSpanDroppedAttrs, uint64(s.DroppedAttributesCount)) +
		sizeVarintField(fSpanDroppedEvents, uint64(s.DroppedEventsCount)) +
		sizeVarintField(fSpanDroppedLinks, uint64(s.DroppedLinksCount))
	if s.Status != nil {
		n += sizeMsgField(fSpanStatus, e.sizeStatus(s.Status))
	}
	if s.Flags != 0 {
		n += protowire.SizeTag(fSpanFlags) + protowire.SizeFixed32()
	}
	return e.set(slot, n)
}

func (e *traceEncoder) sizeStatus(s *tracepb.Status) int {
	slot := e.push()
	// An enum is an int32: a negative one takes ten bytes, as in proto.
	return e.set(slot, sizeStringField(fStatusMessage, s.Message)+sizeVarintField(fStatusCode, uint64(int64(s.Code))))
}

func (e *traceEncoder) sizeKeyValues(num protowire.Number, kvs []*commonpb.KeyValue) int {
	n := 0
	for _, kv := range kvs {
		n += sizeMsgField(num, e.sizeKeyValue(kv))
	}
	return n
}

func (e *traceEncoder) sizeKeyValue(kv *commonpb.KeyValue) int {
	if kv == nil || kv.KeyStrindex != 0 {
		e.ok = false
		return 0
	}
	slot := e.push()
	n := sizeStringField(fKeyValueKey, kv.Key)
	if kv.Value != nil {
		n += sizeMsgField(fKeyValueValue, e.sizeAnyValue(kv.Value))
	}
	return e.set(slot, n)
}

func (e *traceEncoder) sizeAnyValue(v *commonpb.AnyValue) int {
	if v == nil {
		e.ok = false
		return 0
	}
	slot := e.push()
	n := 0
	// A oneof member is written even when it holds its zero value.
	switch x := v.Value.(type) {
	case nil:
	case *commonpb.AnyValue_StringValue:
		n = protowire.SizeTag(fAnyString) + protowire.SizeBytes(len(x.StringValue))
	case *commonpb.AnyValue_BoolValue:
		n = protowire.SizeTag(fAnyBool) + 1
	case *commonpb.AnyValue_IntValue:
		n = protowire.SizeTag(fAnyInt) + protowire.SizeVarint(uint64(x.IntValue))
	case *commonpb.AnyValue_DoubleValue:
		n = protowire.SizeTag(fAnyDouble) + protowire.SizeFixed64()
	case *commonpb.AnyValue_BytesValue:
		n = protowire.SizeTag(fAnyBytes) + protowire.SizeBytes(len(x.BytesValue))
	case *commonpb.AnyValue_ArrayValue:
		n = sizeMsgField(fAnyArray, e.sizeArray(x.ArrayValue))
	case *commonpb.AnyValue_KvlistValue:
		n = sizeMsgField(fAnyKvlist, e.sizeKvlist(x.KvlistValue))
	default:
		e.ok = false
	}
	return e.set(slot, n)
}

func (e *traceEncoder) sizeArray(a *commonpb.ArrayValue) int {
	slot := e.push()
	n := 0
	if a != nil {
		for _, v := range a.Values {
			n += sizeMsgField(fListValues, e.sizeAnyValue(v))
		}
	}
	return e.set(slot, n)
}

func (e *traceEncoder) sizeKvlist(l *commonpb.KeyValueList) int {
	slot := e.push()
	n := 0
	if l != nil {
		n = e.sizeKeyValues(fListValues, l.Values)
	}
	return e.set(slot, n)
}

// The second pass, in the same order as the first.

// msg writes the tag and length of the next nested message.
func (e *traceEncoder) msg(b []byte, num protowire.Number) []byte {
	n := e.sizes[e.next]
	e.next++
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendFixed64(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, v)
}

func (e *traceEncoder) appendRequest(b []byte, r *coltracepb.ExportTraceServiceRequest) []byte {
	for _, rs := range r.ResourceSpans {
		b = e.appendResourceSpans(b, rs)
	}
	return b
}

func (e *traceEncoder) appendResourceSpans(b []byte, rs *tracepb.ResourceSpans) []byte {
	b = e.msg(b, fRequestResourceSpans)
	if r := rs.Resource; r != nil {
		b = e.msg(b, fResourceSpansResource)
		b = e.appendKeyValues(b, fResourceAttributes, r.Attributes)
		b = appendVarint(b, fResourceDropped, uint64(r.DroppedAttributesCount))
	}
	for _, ss := range rs.ScopeSpans {
		b = e.appendScopeSpans(b, ss)
	}
	return appendString(b, fResourceSpansSchemaURL, rs.SchemaUrl)
}

func (e *traceEncoder) appendScopeSpans(b []byte, ss *tracepb.ScopeSpans) []byte {
	b = e.msg(b, fResourceSpansScopeSpans)
	if s := ss.Scope; s != nil {
		b = e.msg(b, fScopeSpansScope)
		b = appendString(b, fScopeName, s.Name)
		b = appendString(b, fScopeVersion, s.Version)
		b = e.appendKeyValues(b, fScopeAttributes, s.Attributes)
		b = appendVarint(b, fScopeDropped, uint64(s.DroppedAttributesCount))
	}
	for _, s := range ss.Spans {
		b = e.appendSpan(b, s)
	}
	return appendString(b, fScopeSpansSchemaURL, ss.SchemaUrl)
}

func (e *traceEncoder) appendSpan(b []byte, s *tracepb.Span) []byte {
	b = e.msg(b, fScopeSpansSpans)
	b = appendBytes(b, fSpanTraceID, s.TraceId)
	b = appendBytes(b, fSpanSpanID, s.SpanId)
	b = appendString(b, fSpanTraceState, s.TraceState)
	b = appendBytes(b, fSpanParentSpanID, s.ParentSpanId)
	b = appendString(b, fSpanName, s.Name)
	b = appendVarint(b, fSpanKind, uint64(s.Kind))
	b = appendFixed64(b, fSpanStart, s.StartTimeUnixNano)
	b = appendFixed64(b, fSpanEnd, s.EndTimeUnixNano)
	b = e.appendKeyValues(b, fSpanAttributes, s.Attributes)
	b = appendVarint(b, fSpanDroppedAttrs, uint64(s.DroppedAttributesCount))
	b = appendVarint(b, fSpanDroppedEvents, uint64(s.DroppedEventsCount))
	b = appendVarint(b, fSpanDroppedLinks, uint64(s.DroppedLinksCount))
	if st := s.Status; st != nil {
		b = e.msg(b, fSpanStatus)
		b = appendString(b, fStatusMessage, st.Message)
		b = appendVarint(b, fStatusCode, uint64(int64(st.Code)))
	}
	if s.Flags != 0 {
		b = protowire.AppendTag(b, fSpanFlags, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, s.Flags)
	}
	return b
}

func (e *traceEncoder) appendKeyValues(b []byte, num protowire.Number, kvs []*commonpb.KeyValue) []byte {
	for _, kv := range kvs {
		b = e.msg(b, num)
		b = appendString(b, fKeyValueKey, kv.Key)
		if kv.Value != nil {
			b = e.appendAnyValue(b, fKeyValueValue, kv.Value)
		}
	}
	return b
}

func (e *traceEncoder) appendAnyValue(b []byte, num protowire.Number, v *commonpb.AnyValue) []byte {
	b = e.msg(b, num)
	switch x := v.Value.(type) {
	case *commonpb.AnyValue_StringValue:
		b = protowire.AppendTag(b, fAnyString, protowire.BytesType)
		b = protowire.AppendString(b, x.StringValue)
	case *commonpb.AnyValue_BoolValue:
		b = protowire.AppendTag(b, fAnyBool, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(x.BoolValue))
	case *commonpb.AnyValue_IntValue:
		b = protowire.AppendTag(b, fAnyInt, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(x.IntValue))
	case *commonpb.AnyValue_DoubleValue:
		b = protowire.AppendTag(b, fAnyDouble, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(x.DoubleValue))
	case *commonpb.AnyValue_BytesValue:
		b = protowire.AppendTag(b, fAnyBytes, protowire.BytesType)
		b = protowire.AppendBytes(b, x.BytesValue)
	case *commonpb.AnyValue_ArrayValue:
		b = e.msg(b, fAnyArray)
		if x.ArrayValue != nil {
			for _, v := range x.ArrayValue.Values {
				b = e.appendAnyValue(b, fListValues, v)
			}
		}
	case *commonpb.AnyValue_KvlistValue:
		b = e.msg(b, fAnyKvlist)
		if x.KvlistValue != nil {
			b = e.appendKeyValues(b, fListValues, x.KvlistValue.Values)
		}
	}
	return b
}
