package exporter

import (
	"fmt"
	"math"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// traceCodec is the gRPC codec of the span exporter's connection. The
// OTLP client is given a stand-in request for each batch (see otlpSpans),
// and the codec writes the batch's records straight to protobuf, from the
// Span messages the worker encoded for each (process.finish): building
// the generated messages first, and walking them to size and write them,
// was a third of the agent's CPU. The bytes are the ones proto.Marshal
// writes for the messages the SDK's OTLP exporter would build from the
// same spans (TestTraceCodecMatchesProto). Any other message (the
// response, a request that is not the stand-in) goes to gRPC's protobuf
// codec.
type traceCodec struct {
	proto encoding.CodecV2

	// stand is the stand-in: the one ResourceSpans of every request the
	// sink sends, and recs the batch it stands for while the client sends
	// it. Both belong to the sink's goroutine, which is where the client
	// marshals (gRPC encodes a unary request in the caller's goroutine,
	// retries included).
	stand *tracepb.ResourceSpans
	recs  []*spanRecord
	// noSpans gives the stand-in as many (nil) spans as its batch has:
	// the client counts them for its own telemetry and reads nothing else.
	noSpans []*tracepb.Span
}

// maxExportRequestBytes is the largest export request sent, the span
// client's default (its own check, which sizes each request by reflection,
// is turned off in favour of this one). A variable for tests.
var maxExportRequestBytes = 64 << 20

func newTraceCodec() *traceCodec {
	return &traceCodec{
		proto: encoding.GetCodecV2(proto.Name),
		stand: &tracepb.ResourceSpans{ScopeSpans: []*tracepb.ScopeSpans{{}}},
	}
}

// request returns the stand-in request for recs, which the codec encodes
// until the next call.
func (c *traceCodec) request(recs []*spanRecord) []*tracepb.ResourceSpans {
	c.recs = recs
	if len(c.noSpans) < len(recs) {
		c.noSpans = make([]*tracepb.Span, len(recs))
	}
	c.stand.ScopeSpans[0].Spans = c.noSpans[:len(recs)]
	return []*tracepb.ResourceSpans{c.stand}
}

// done lets the last batch's records go.
func (c *traceCodec) done() {
	c.recs = nil
	c.stand.ScopeSpans[0].Spans = nil
}

// Name is the content subtype; the collector decodes plain protobuf.
func (*traceCodec) Name() string { return proto.Name }

func (c *traceCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return c.proto.Unmarshal(data, v)
}

func (c *traceCodec) Marshal(v any) (mem.BufferSlice, error) {
	req, ok := v.(*coltracepb.ExportTraceServiceRequest)
	if !ok || len(req.ResourceSpans) != 1 || req.ResourceSpans[0] != c.stand {
		return c.proto.Marshal(v)
	}
	e := encoders.Get().(*spanEncoder)
	defer e.release()
	size := e.size(c.recs)
	if size > maxExportRequestBytes {
		return nil, fmt.Errorf("export request of %d bytes exceeds %d", size, maxExportRequestBytes)
	}
	if mem.IsBelowBufferPoolingThreshold(size) {
		return mem.BufferSlice{mem.SliceBuffer(e.append(make([]byte, 0, size), c.recs))}, nil
	}
	buf := requestBuffers.Get(size)
	*buf = e.append((*buf)[:0], c.recs)
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

// Field numbers, from opentelemetry/proto/{collector/trace,trace,resource,common}/v1.
const (
	fRequestResourceSpans = 1

	fResourceSpansResource   = 1
	fResourceSpansScopeSpans = 2
	fResourceSpansSchemaURL  = 3

	fResourceAttributes = 1

	fScopeSpansScope = 1
	fScopeSpansSpans = 2

	fScopeName    = 1
	fScopeVersion = 2

	fSpanTraceID      = 1
	fSpanSpanID       = 2
	fSpanTraceState   = 3
	fSpanParentSpanID = 4
	fSpanName         = 5
	fSpanKind         = 6
	fSpanStart        = 7
	fSpanEnd          = 8
	fSpanAttributes   = 9
	fSpanStatus       = 15
	fSpanFlags        = 16

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

// OTLP's span flags: the low byte is the W3C trace flags; the SDK always
// says whether the parent is remote, and a parent here always is.
const (
	flagHasIsRemote = uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
	flagIsRemote    = uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
)

// scopeBytes is every span's instrumentation scope, encoded once.
var scopeBytes = encodeScope(scopeVersion)

func encodeScope(version string) []byte {
	return appendString(appendString(nil, fScopeName, scopeName), fScopeVersion, version)
}

// spanEncoder writes a batch of records as one export request, in two
// passes over the spans the worker encoded (spanRecord.wire): the first
// sizes every process's group (a message's length comes before it), the
// second writes the groups' headers and copies the spans.
type spanEncoder struct {
	groupOf []int // by record

	// Grouping by process, in order of first appearance: one
	// ResourceSpans each.
	groups    map[*spanResource]int
	byGroup   []*spanResource
	groupSize []int // of each group's ScopeSpans message
}

var encoders = sync.Pool{New: func() any { return &spanEncoder{groups: make(map[*spanResource]int)} }}

func (e *spanEncoder) release() {
	if cap(e.groupOf) > 1<<16 {
		*e = spanEncoder{groups: e.groups} // a huge batch: don't keep its tables
	}
	clear(e.groups)
	clear(e.byGroup) // they hold resources of processes that may be gone
	e.byGroup, e.groupSize = e.byGroup[:0], e.groupSize[:0]
	encoders.Put(e)
}

// size returns the request's size and fills the encoder's tables for
// append.
func (e *spanEncoder) size(recs []*spanRecord) int {
	e.groupOf = e.groupOf[:0]
	for _, rec := range recs {
		g, ok := e.groups[rec.res]
		if !ok {
			g = len(e.byGroup)
			e.groups[rec.res] = g
			e.byGroup = append(e.byGroup, rec.res)
			e.groupSize = append(e.groupSize, sizeMsgField(fScopeSpansScope, len(scopeBytes)))
		}
		if len(rec.wire) == 0 {
			// Not encoded by the worker: a record made by a test.
			rec.wire = appendSpan(rec.wire, rec)
		}
		n := len(rec.wire)
		e.groupOf = append(e.groupOf, g)
		e.groupSize[g] += sizeMsgField(fScopeSpansSpans, n)
	}
	total := 0
	for g, res := range e.byGroup {
		total += sizeMsgField(fRequestResourceSpans, resourceSpansSize(res, e.groupSize[g]))
	}
	return total
}

func resourceSpansSize(res *spanResource, scopeSpans int) int {
	return sizeMsgField(fResourceSpansResource, len(res.encoded)) +
		sizeMsgField(fResourceSpansScopeSpans, scopeSpans) +
		sizeStringField(fResourceSpansSchemaURL, res.schema)
}

// append writes the request sized by the last call to size.
func (e *spanEncoder) append(b []byte, recs []*spanRecord) []byte {
	for g, res := range e.byGroup {
		b = appendMsgHeader(b, fRequestResourceSpans, resourceSpansSize(res, e.groupSize[g]))
		b = appendMsgHeader(b, fResourceSpansResource, len(res.encoded))
		b = append(b, res.encoded...)
		b = appendMsgHeader(b, fResourceSpansScopeSpans, e.groupSize[g])
		b = appendMsgHeader(b, fScopeSpansScope, len(scopeBytes))
		b = append(b, scopeBytes...)
		// A pod has a few processes: a pass over the batch per process
		// is cheaper than sorting it.
		for i, rec := range recs {
			if e.groupOf[i] == g {
				b = appendMsgHeader(b, fScopeSpansSpans, len(rec.wire))
				b = append(b, rec.wire...)
			}
		}
		b = appendString(b, fResourceSpansSchemaURL, res.schema)
	}
	return b
}

// A span as the SDK's OTLP exporter converts it.

func spanFlags(rec *spanRecord) uint32 {
	f := uint32(rec.flags) | flagHasIsRemote
	if rec.parentID.IsValid() {
		f |= flagIsRemote
	}
	return f
}

func statusSize(rec *spanRecord) int {
	if rec.status != codes.Error {
		return 0
	}
	return sizeStringField(fStatusMessage, rec.statusMsg) + sizeVarintField(fStatusCode, uint64(tracepb.Status_STATUS_CODE_ERROR))
}

func appendSpan(b []byte, rec *spanRecord) []byte {
	b = appendSpanHead(b, rec)
	b = appendKeyValues(b, fSpanAttributes, rec.attrs)
	return appendSpanTail(b, rec)
}

// appendSpanHead writes a span's fields before its attributes, and
// appendSpanTail those after: the worker writes HTTP attributes between
// the two straight from the request (spanAttrs).
func appendSpanHead(b []byte, rec *spanRecord) []byte {
	b = appendBytes(b, fSpanTraceID, rec.traceID[:])
	b = appendBytes(b, fSpanSpanID, rec.spanID[:])
	b = appendString(b, fSpanTraceState, rec.traceState)
	if rec.parentID.IsValid() {
		b = appendBytes(b, fSpanParentSpanID, rec.parentID[:])
	}
	b = appendString(b, fSpanName, rec.name)
	b = appendVarint(b, fSpanKind, uint64(spanKindPB(rec.kind)))
	b = appendFixed64(b, fSpanStart, unixNano(rec.start))
	return appendFixed64(b, fSpanEnd, unixNano(rec.end))
}

func appendSpanTail(b []byte, rec *spanRecord) []byte {
	b = appendMsgHeader(b, fSpanStatus, statusSize(rec))
	if rec.status == codes.Error {
		b = appendString(b, fStatusMessage, rec.statusMsg)
		b = appendVarint(b, fStatusCode, uint64(tracepb.Status_STATUS_CODE_ERROR))
	}
	b = protowire.AppendTag(b, fSpanFlags, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, spanFlags(rec))
}

// appendStringAttr writes a span attribute with a string value, as
// appendKeyValues writes attribute.String(key, v).
func appendStringAttr(b []byte, key attribute.Key, v string) []byte {
	b = appendKeyValueHeader(b, fSpanAttributes, key, tagSize+protowire.SizeBytes(len(v)))
	return appendStringAlways(b, fAnyString, v)
}

// appendIntAttr writes a span attribute with an integer value, as
// appendKeyValues writes attribute.Int64(key, v).
func appendIntAttr(b []byte, key attribute.Key, v int64) []byte {
	b = appendKeyValueHeader(b, fSpanAttributes, key, tagSize+protowire.SizeVarint(uint64(v)))
	b = protowire.AppendTag(b, fAnyInt, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

// spanKindPB converts a span kind; the API numbers the kinds as OTLP does
// (unspecified 0, internal 1, server 2, client 3, producer 4, consumer 5).
func spanKindPB(k trace.SpanKind) tracepb.Span_SpanKind {
	if k < trace.SpanKindUnspecified || k > trace.SpanKindConsumer {
		return tracepb.Span_SPAN_KIND_UNSPECIFIED
	}
	return tracepb.Span_SpanKind(k)
}

func unixNano(t time.Time) uint64 { return uint64(max(0, t.UnixNano())) }

// Attributes as the SDK's OTLP exporter converts them: a KeyValue always
// has a value message, and the value's one member is written even when it
// is its type's zero. Values are passed by pointer: an attribute.Value is
// 48 bytes, and copying it for each call was a fifth of the encoding.

// tagSize is the size of the tag of every field numbered below 16, which
// is every field of a key-value.
const tagSize = 1

// keyValueSize is the size of a KeyValue message whose value message is
// valueSize long.
func keyValueSize(key attribute.Key, valueSize int) int {
	return sizeStringField(fKeyValueKey, string(key)) + tagSize + protowire.SizeBytes(valueSize)
}

// appendKeyValueHeader writes a KeyValue up to its value message, which is
// valueSize long: field num's header, the key and the value's header.
func appendKeyValueHeader(b []byte, num protowire.Number, key attribute.Key, valueSize int) []byte {
	b = appendMsgHeader(b, num, keyValueSize(key, valueSize))
	b = appendString(b, fKeyValueKey, string(key))
	return appendMsgHeader(b, fKeyValueValue, valueSize)
}

func appendKeyValues(b []byte, num protowire.Number, kvs []attribute.KeyValue) []byte {
	for i := range kvs {
		kv := &kvs[i]
		b = appendKeyValueHeader(b, num, kv.Key, valueSize(&kv.Value))
		b = appendValue(b, &kv.Value)
	}
	return b
}

func keyValuesSize(num protowire.Number, kvs []attribute.KeyValue) int {
	n := 0
	for i := range kvs {
		n += sizeMsgField(num, keyValueSize(kvs[i].Key, valueSize(&kvs[i].Value)))
	}
	return n
}

// valueSize is the size of v's AnyValue message. Strings and integers,
// almost every attribute, are sized inline.
func valueSize(v *attribute.Value) int {
	switch v.Type() {
	case attribute.STRING:
		return tagSize + protowire.SizeBytes(len(v.AsString()))
	case attribute.INT64:
		return tagSize + protowire.SizeVarint(uint64(v.AsInt64()))
	}
	return otherValueSize(v)
}

func otherValueSize(v *attribute.Value) int {
	switch v.Type() {
	case attribute.FLOAT64:
		return tagSize + protowire.SizeFixed64()
	case attribute.BOOL:
		return tagSize + 1
	case attribute.BYTESLICE:
		return sizeMsgField(fAnyBytes, len(v.AsByteSlice()))
	case attribute.EMPTY:
		return 0
	case attribute.MAP:
		return sizeMsgField(fAnyKvlist, keyValuesSize(fListValues, v.AsMap()))
	}
	if elems, ok := sliceElems(v); ok {
		return sizeMsgField(fAnyArray, valuesSize(elems))
	}
	return sizeMsgField(fAnyString, len(invalidValue))
}

func valuesSize(elems []attribute.Value) int {
	n := 0
	for i := range elems {
		n += sizeMsgField(fListValues, valueSize(&elems[i]))
	}
	return n
}

// invalidValue is what the SDK sends for a value of no known type.
const invalidValue = "INVALID"

func appendValue(b []byte, v *attribute.Value) []byte {
	switch v.Type() {
	case attribute.STRING:
		return appendStringAlways(b, fAnyString, v.AsString())
	case attribute.INT64:
		b = protowire.AppendTag(b, fAnyInt, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(v.AsInt64()))
	case attribute.FLOAT64:
		b = protowire.AppendTag(b, fAnyDouble, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(v.AsFloat64()))
	case attribute.BOOL:
		b = protowire.AppendTag(b, fAnyBool, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(v.AsBool()))
	case attribute.BYTESLICE:
		b = protowire.AppendTag(b, fAnyBytes, protowire.BytesType)
		return protowire.AppendBytes(b, v.AsByteSlice())
	case attribute.EMPTY:
		return b
	case attribute.MAP:
		kvs := v.AsMap()
		b = appendMsgHeader(b, fAnyKvlist, keyValuesSize(fListValues, kvs))
		return appendKeyValues(b, fListValues, kvs)
	}
	if elems, ok := sliceElems(v); ok {
		b = appendMsgHeader(b, fAnyArray, valuesSize(elems))
		for i := range elems {
			b = appendMsgHeader(b, fListValues, valueSize(&elems[i]))
			b = appendValue(b, &elems[i])
		}
		return b
	}
	return appendStringAlways(b, fAnyString, invalidValue)
}

// sliceElems returns the elements of a slice attribute as values. Slices
// are rare (a resource's process.command_args, encoded once), so they are
// simply allocated.
func sliceElems(v *attribute.Value) ([]attribute.Value, bool) {
	switch v.Type() {
	case attribute.STRINGSLICE:
		return convert(v.AsStringSlice(), attribute.StringValue), true
	case attribute.INT64SLICE:
		return convert(v.AsInt64Slice(), attribute.Int64Value), true
	case attribute.FLOAT64SLICE:
		return convert(v.AsFloat64Slice(), attribute.Float64Value), true
	case attribute.BOOLSLICE:
		return convert(v.AsBoolSlice(), attribute.BoolValue), true
	case attribute.SLICE:
		return v.AsSlice(), true
	}
	return nil, false
}

func convert[T any](s []T, conv func(T) attribute.Value) []attribute.Value {
	out := make([]attribute.Value, len(s))
	for i, e := range s {
		out[i] = conv(e)
	}
	return out
}

// encodeResource is a resource's Resource message, written once per
// process.
func encodeResource(attrs []attribute.KeyValue) []byte {
	return appendKeyValues(nil, fResourceAttributes, attrs)
}

// Sizes and writers of the pieces of a field. A proto3 scalar that holds
// its zero value is not written.

// sizeMsgField is the size of a length-delimited field of n bytes: a
// nested message, or a string or bytes member that is written even when
// empty.
func sizeMsgField(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func sizeStringField(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return sizeMsgField(num, len(s))
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

// appendMsgHeader writes the tag and length of a length-delimited field.
// Most are numbered below 16 and shorter than 128 bytes: one byte each,
// written without protowire's loops.
func appendMsgHeader(b []byte, num protowire.Number, n int) []byte {
	if num < 16 && n < 0x80 {
		return append(b, byte(num)<<3|byte(protowire.BytesType), byte(n))
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return appendStringAlways(b, num, s)
}

func appendStringAlways(b []byte, num protowire.Number, s string) []byte {
	return append(appendMsgHeader(b, num, len(s)), s...)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	return append(appendMsgHeader(b, num, len(v)), v...)
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
