package exporter

import (
	"bytes"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestTraceCodecMatchesProto: the codec writes exactly the bytes that
// proto.Marshal writes, for random requests that use every field it knows,
// and for requests it hands to protobuf.
func TestTraceCodecMatchesProto(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	codec := newTraceCodec()
	check := func(t *testing.T, req *coltracepb.ExportTraceServiceRequest) {
		t.Helper()
		want, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		data, err := codec.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		got := data.Materialize()
		data.Free()
		if !bytes.Equal(got, want) {
			t.Fatalf("codec wrote %d bytes, proto %d:\n%x\n%x", len(got), len(want), got, want)
		}
		var back coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(got, &back); err != nil || !proto.Equal(&back, req) {
			t.Fatalf("decoded back: %v, equal %v", err, proto.Equal(&back, req))
		}
	}
	t.Run("empty", func(t *testing.T) { check(t, &coltracepb.ExportTraceServiceRequest{}) })
	t.Run("random", func(t *testing.T) {
		for range 300 {
			check(t, randomRequest(rnd, false))
		}
	})
	t.Run("large", func(t *testing.T) {
		// Above gRPC's buffer pooling threshold.
		req := randomRequest(rnd, false)
		for len(req.ResourceSpans[0].ScopeSpans[0].Spans) < 2000 {
			req.ResourceSpans[0].ScopeSpans[0].Spans = append(req.ResourceSpans[0].ScopeSpans[0].Spans, randomSpan(rnd, false))
		}
		check(t, req)
	})
	t.Run("fallback", func(t *testing.T) {
		for range 50 {
			check(t, randomRequest(rnd, true))
		}
	})
}

// TestTraceCodecRefusesHugeRequests: the codec keeps the request-size
// limit that the span client's own (reflective) check would apply.
func TestTraceCodecRefusesHugeRequests(t *testing.T) {
	req := randomRequest(rand.New(rand.NewPCG(3, 4)), false)
	size := proto.Size(req)
	defer func(old int) { maxExportRequestBytes = old }(maxExportRequestBytes)
	maxExportRequestBytes = size
	data, err := newTraceCodec().Marshal(req)
	if err != nil {
		t.Fatalf("request of exactly the limit (%d bytes): %v", size, err)
	}
	data.Free()
	maxExportRequestBytes = size - 1
	if _, err := newTraceCodec().Marshal(req); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("request one byte over the limit: %v", err)
	}
}

// TestTraceCodecKnowsEveryField fails when go.opentelemetry.io/proto/otlp
// gains a field: the codec must learn to write it (or to hand messages that
// use it to protobuf) before the module is upgraded.
func TestTraceCodecKnowsEveryField(t *testing.T) {
	known := map[protoreflect.FullName][]protoreflect.FieldNumber{
		"opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest": {1},
		"opentelemetry.proto.trace.v1.ResourceSpans":                       {1, 2, 3},
		"opentelemetry.proto.resource.v1.Resource":                         {1, 2, 3},
		"opentelemetry.proto.trace.v1.ScopeSpans":                          {1, 2, 3},
		"opentelemetry.proto.common.v1.InstrumentationScope":               {1, 2, 3, 4},
		"opentelemetry.proto.trace.v1.Span":                                {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		"opentelemetry.proto.trace.v1.Status":                              {2, 3},
		"opentelemetry.proto.common.v1.KeyValue":                           {1, 2, 3},
		"opentelemetry.proto.common.v1.AnyValue":                           {1, 2, 3, 4, 5, 6, 7, 8},
		"opentelemetry.proto.common.v1.ArrayValue":                         {1},
		"opentelemetry.proto.common.v1.KeyValueList":                       {1},
	}
	for _, m := range []proto.Message{
		&coltracepb.ExportTraceServiceRequest{}, &tracepb.ResourceSpans{}, &resourcepb.Resource{},
		&tracepb.ScopeSpans{}, &commonpb.InstrumentationScope{}, &tracepb.Span{}, &tracepb.Status{},
		&commonpb.KeyValue{}, &commonpb.AnyValue{}, &commonpb.ArrayValue{}, &commonpb.KeyValueList{},
	} {
		d := m.ProtoReflect().Descriptor()
		var have []protoreflect.FieldNumber
		for i := range d.Fields().Len() {
			have = append(have, d.Fields().Get(i).Number())
		}
		slices.Sort(have)
		if want := known[d.FullName()]; !slices.Equal(have, want) {
			t.Errorf("%s has fields %v, the codec knows %v", d.FullName(), have, want)
		}
	}
}

func randomRequest(rnd *rand.Rand, unusual bool) *coltracepb.ExportTraceServiceRequest {
	req := &coltracepb.ExportTraceServiceRequest{}
	for range 1 + rnd.IntN(3) {
		rs := &tracepb.ResourceSpans{SchemaUrl: randomString(rnd)}
		if rnd.IntN(4) > 0 {
			rs.Resource = &resourcepb.Resource{Attributes: randomKeyValues(rnd, 3), DroppedAttributesCount: uint32(rnd.IntN(2))}
			if unusual && rnd.IntN(3) == 0 {
				rs.Resource.EntityRefs = []*commonpb.EntityRef{{Type: "service", IdKeys: []string{"service.name"}}}
			}
		}
		for range 1 + rnd.IntN(2) {
			ss := &tracepb.ScopeSpans{SchemaUrl: randomString(rnd)}
			if rnd.IntN(4) > 0 {
				ss.Scope = &commonpb.InstrumentationScope{Name: randomString(rnd), Version: randomString(rnd),
					Attributes: randomKeyValues(rnd, 1), DroppedAttributesCount: uint32(rnd.IntN(2))}
			}
			for range rnd.IntN(5) {
				ss.Spans = append(ss.Spans, randomSpan(rnd, unusual))
			}
			rs.ScopeSpans = append(rs.ScopeSpans, ss)
		}
		req.ResourceSpans = append(req.ResourceSpans, rs)
	}
	return req
}

func randomSpan(rnd *rand.Rand, unusual bool) *tracepb.Span {
	id := func(n int) []byte {
		if rnd.IntN(5) == 0 {
			return nil
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.UintN(256))
		}
		return b
	}
	s := &tracepb.Span{
		TraceId: id(16), SpanId: id(8), ParentSpanId: id(8), TraceState: randomString(rnd), Name: randomString(rnd),
		Kind:              tracepb.Span_SpanKind(rnd.IntN(6)),
		StartTimeUnixNano: rnd.Uint64() >> rnd.IntN(64), EndTimeUnixNano: rnd.Uint64() >> rnd.IntN(64),
		Attributes:             randomKeyValues(rnd, 8),
		DroppedAttributesCount: uint32(rnd.IntN(3)), DroppedEventsCount: uint32(rnd.IntN(3)), DroppedLinksCount: uint32(rnd.IntN(3)),
		Flags: uint32(rnd.IntN(3)) << rnd.IntN(9),
	}
	if rnd.IntN(3) > 0 {
		s.Status = &tracepb.Status{Message: randomString(rnd), Code: tracepb.Status_StatusCode(rnd.IntN(4) - 1)}
	}
	if unusual {
		switch rnd.IntN(3) {
		case 0:
			s.Events = []*tracepb.Span_Event{{Name: "exception", TimeUnixNano: 1}}
		case 1:
			s.Links = []*tracepb.Span_Link{{TraceId: id(16), SpanId: id(8)}}
		case 2:
			s.Attributes = append(s.Attributes, &commonpb.KeyValue{KeyStrindex: 3})
		}
	}
	return s
}

func randomKeyValues(rnd *rand.Rand, max int) []*commonpb.KeyValue {
	var kvs []*commonpb.KeyValue
	for range rnd.IntN(max + 1) {
		kv := &commonpb.KeyValue{Key: randomString(rnd)}
		if rnd.IntN(8) > 0 {
			kv.Value = randomValue(rnd, 2)
		}
		kvs = append(kvs, kv)
	}
	return kvs
}

func randomValue(rnd *rand.Rand, depth int) *commonpb.AnyValue {
	kinds := 8
	if depth == 0 {
		kinds = 6 // no arrays or lists below this
	}
	switch rnd.IntN(kinds) {
	case 0:
		return &commonpb.AnyValue{} // no value set
	case 1:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: randomString(rnd)}}
	case 2:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: rnd.IntN(2) == 0}}
	case 3:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: rnd.Int64() >> rnd.IntN(64) * int64(1-2*rnd.IntN(2))}}
	case 4:
		v := []float64{0, -1.5, math.Inf(1), rnd.Float64()}[rnd.IntN(4)]
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: v}}
	case 5:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: []byte(randomString(rnd))}}
	case 6:
		a := &commonpb.ArrayValue{}
		for range rnd.IntN(3) {
			a.Values = append(a.Values, randomValue(rnd, depth-1))
		}
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: a}}
	default:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{Values: randomKeyValues(rnd, 2)}}}
	}
}

func randomString(rnd *rand.Rand) string {
	words := []string{"", "GET /users/{id}", "http.request.method", "é", "a longer string value that takes more than a hundred and twenty-seven bytes to write, so that its length needs two bytes of varint on the wire"}
	return words[rnd.IntN(len(words))]
}
