package exporter

import (
	"bytes"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/podtracer/podtracer/tracer"
)

// TestTraceCodecMatchesProto: for random batches of records that use every
// field and attribute type the exporter can produce, the codec writes
// exactly the bytes that proto.Marshal writes for the messages the SDK's
// OTLP exporter would build (pbBatch); any other message it hands to
// protobuf.
func TestTraceCodecMatchesProto(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	codec := newTraceCodec()
	check := func(t *testing.T, ref *pbBatch, recs []*spanRecord) {
		t.Helper()
		defer ref.reset()
		req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: ref.build(recs)}
		want, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		data, err := codec.Marshal(&coltracepb.ExportTraceServiceRequest{ResourceSpans: codec.request(recs)})
		codec.done()
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
	ref, resources := randomResources(rnd)
	t.Run("empty", func(t *testing.T) { check(t, ref, nil) })
	t.Run("random", func(t *testing.T) {
		for range 300 {
			check(t, ref, randomRecords(rnd, resources, rnd.IntN(12)))
		}
	})
	t.Run("large", func(t *testing.T) {
		// Above gRPC's buffer pooling threshold.
		check(t, ref, randomRecords(rnd, resources, 2000))
	})
	t.Run("other messages", func(t *testing.T) {
		for _, m := range []proto.Message{
			&coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{SchemaUrl: semconv.SchemaURL,
				ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{Name: "not the stand-in"}}}}}}},
			&coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{RejectedSpans: 3}},
		} {
			want, _ := proto.Marshal(m)
			data, err := codec.Marshal(m)
			if err != nil || !bytes.Equal(data.Materialize(), want) {
				t.Errorf("%T: %v, bytes equal %v", m, err, bytes.Equal(data.Materialize(), want))
			}
		}
	})
}

// TestTraceCodecRefusesHugeRequests: the codec keeps the request-size
// limit that the span client's own (reflective) check would apply.
func TestTraceCodecRefusesHugeRequests(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	ref, resources := randomResources(rnd)
	recs := randomRecords(rnd, resources, 20)
	size := proto.Size(&coltracepb.ExportTraceServiceRequest{ResourceSpans: ref.build(recs)})
	codec := newTraceCodec()
	marshal := func() error {
		data, err := codec.Marshal(&coltracepb.ExportTraceServiceRequest{ResourceSpans: codec.request(recs)})
		if err == nil {
			data.Free()
		}
		return err
	}
	defer func(old int) { maxExportRequestBytes = old }(maxExportRequestBytes)
	maxExportRequestBytes = size
	if err := marshal(); err != nil {
		t.Fatalf("request of exactly the limit (%d bytes): %v", size, err)
	}
	maxExportRequestBytes = size - 1
	if err := marshal(); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("request one byte over the limit: %v", err)
	}
}

// randomResources makes a few process resources, and the reference
// converter that knows their messages.
func randomResources(rnd *rand.Rand) (*pbBatch, []*spanResource) {
	ref := &pbBatch{resources: make(map[*spanResource]*resourcepb.Resource)}
	var out []*spanResource
	for i := range 4 {
		attrs := randomAttributes(rnd, 6, 2)
		attrs = append(attrs, semconv.ServiceName("svc-"+strconv.Itoa(i)), semconv.ProcessPID(100+i),
			semconv.ProcessCommandArgs("/bin/app", "-v"))
		schema := ""
		if i%2 == 0 {
			schema = semconv.SchemaURL
		}
		res := newSpanResource(resource.NewWithAttributes(schema, attrs...))
		ref.resources[res] = &resourcepb.Resource{Attributes: keyValuesPB(resource.NewWithAttributes(schema, attrs...).Attributes())}
		out = append(out, res)
	}
	return ref, out
}

func randomRecords(rnd *rand.Rand, resources []*spanResource, n int) []*spanRecord {
	var recs []*spanRecord
	for range n {
		rec := &spanRecord{res: resources[rnd.IntN(len(resources))], name: randomString(rnd)}
		rec.traceID, rec.spanID = spanIDs(trace.SpanContext{}, 0)
		if rnd.IntN(2) == 0 {
			_, rec.parentID = spanIDs(trace.SpanContext{}, 0)
			if rnd.IntN(3) == 0 {
				rec.traceState = "vendor=value,other=1"
			}
		}
		rec.flags = trace.TraceFlags(rnd.IntN(2))
		rec.kind = trace.SpanKind(rnd.IntN(7)) // 6 is no kind
		if rnd.IntN(6) > 0 {
			rec.start = time.Unix(0, rnd.Int64N(1<<62))
			rec.end = rec.start.Add(time.Duration(rnd.IntN(1e9)))
		}
		if rnd.IntN(3) == 0 {
			rec.status, rec.statusMsg = codes.Error, randomString(rnd)
		}
		rec.attrs = randomAttributes(rnd, 16, 2)
		recs = append(recs, rec)
	}
	return recs
}

func randomAttributes(rnd *rand.Rand, max, depth int) []attribute.KeyValue {
	var kvs []attribute.KeyValue
	for range rnd.IntN(max + 1) {
		kvs = append(kvs, attribute.KeyValue{Key: attribute.Key(randomString(rnd)), Value: randomAttrValue(rnd, depth)})
	}
	return kvs
}

func randomAttrValue(rnd *rand.Rand, depth int) attribute.Value {
	kinds := 13
	if depth == 0 {
		kinds = 11 // no nested slices or maps below this
	}
	switch rnd.IntN(kinds) {
	case 0:
		return attribute.Value{} // empty
	case 1:
		return attribute.StringValue(randomString(rnd))
	case 2:
		return attribute.BoolValue(rnd.IntN(2) == 0)
	case 3:
		return attribute.Int64Value(rnd.Int64() >> rnd.IntN(64) * int64(1-2*rnd.IntN(2)))
	case 4:
		return attribute.Float64Value([]float64{0, -1.5, math.Inf(1), rnd.Float64()}[rnd.IntN(4)])
	case 5:
		return attribute.ByteSliceValue([]byte(randomString(rnd)))
	case 6:
		return attribute.StringSliceValue([]string{randomString(rnd), randomString(rnd)})
	case 7:
		return attribute.Int64SliceValue([]int64{rnd.Int64(), -1})
	case 8:
		return attribute.Float64SliceValue([]float64{rnd.Float64()})
	case 9:
		return attribute.BoolSliceValue([]bool{true, false})
	case 10:
		return attribute.StringValue("") // a member written though empty
	case 11:
		return attribute.SliceValue(randomAttrValue(rnd, depth-1), randomAttrValue(rnd, depth-1))
	default:
		return attribute.MapValue(randomAttributes(rnd, 3, depth-1)...)
	}
}

// TestTraceCodecKnowsEveryField fails when go.opentelemetry.io/proto/otlp
// gains a field: before the module is upgraded, check whether the SDK's
// OTLP exporter sets it for spans like the agent's, and if so teach the
// codec (and pbBatch, its reference) to write it.
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

func randomString(rnd *rand.Rand) string {
	words := []string{"", "GET /users/{id}", "http.request.method", "é", "a longer string value that takes more than a hundred and twenty-seven bytes to write, so that its length needs two bytes of varint on the wire"}
	return words[rnd.IntN(len(words))]
}

// TestHTTPAttributesWrittenStraight: the worker writes an HTTP span's
// attributes straight into its encoded span, without KeyValues, when only
// OTLP wants them. With a second sink that reads KeyValues (the printer),
// both forms are made from the same request: the encoded span must be the
// bytes the codec writes from the KeyValues, for every shape of request.
func TestHTTPAttributesWrittenStraight(t *testing.T) {
	t.Setenv("OTEL_TRACES_SAMPLER", "")
	mc := &marshalClient{codec: newTraceCodec()}
	e := benchNew(t, []destination{
		{name: "otlp", exp: &otlpSpans{client: mc, codec: mc.codec}},
		{name: "recorder", exp: newBatchRecorder()},
	}, nil)

	reqs := []*tracer.Request{serverReq(), clientReq()}
	odd := serverReq()
	odd.Method, odd.StatusCode, odd.Route, odd.Host, odd.UserAgent = "BREW", 0, "", "", ""
	odd.Remote = netip.MustParseAddrPort("[2001:db8::7]:443")
	odd.RequestSize, odd.ResponseSize = 1<<40, 300
	failed := serverReq()
	failed.StatusCode, failed.Path = 503, "/"+strings.Repeat("p", 300) // lengths past one varint byte
	reset := clientReq()
	reset.StatusCode, reset.ErrorCode, reset.Host, reset.HostPort = 0, "CANCEL", "::1", 8443
	reqs = append(reqs, odd, failed, reset)
	// Requests of the same process as reqs[0] that differ from it in one
	// of the first attributes only: each must be written anew after it.
	firstAttrs := len(reqs)
	for _, change := range []func(r *tracer.Request){
		func(r *tracer.Request) { r.Method = "POST" },
		func(r *tracer.Request) { r.Method = "BREW" },
		func(r *tracer.Request) { r.Path = "/users/43" },
		func(r *tracer.Request) { r.Query = "token=other" },
		func(r *tracer.Request) { r.Route = "" },
		func(r *tracer.Request) { r.StatusCode = 201 },
		func(r *tracer.Request) { r.Host = "other.example" },
		func(r *tracer.Request) { r.HostPort = 8081 },
		func(r *tracer.Request) { r.Remote = netip.MustParseAddrPort("10.0.0.3:5555") },
		func(r *tracer.Request) { r.ProtocolVersion = "1.0" },
		func(r *tracer.Request) { r.UserAgent = "curl/8.6.0" },
		func(r *tracer.Request) { r.Role = tracer.RoleClient },
	} {
		r := serverReq()
		change(r)
		reqs = append(reqs, r)
	}

	wantAttrs := map[bool][][]*commonpb.KeyValue{} // by captureQuery, per request
	for _, captureQuery := range []bool{false, true} {
		e.cfg.CaptureQuery = captureQuery
		for _, r := range reqs {
			e.record(r)
			recs := e.sinks[0].pending
			if len(recs) != 1 || e.sinks[1].pending[0] != recs[0] {
				t.Fatalf("%d records pending", len(recs))
			}
			rec := recs[0]
			if len(rec.attrs) < 5 || !rec.attrsEncoded {
				t.Fatalf("%s %s: %d KeyValues, encoded %v", r.Method, r.Path, len(rec.attrs), rec.attrsEncoded)
			}
			want := appendSpan(nil, rec)
			var w tracepb.Span
			_ = proto.Unmarshal(want, &w)
			wantAttrs[captureQuery] = append(wantAttrs[captureQuery], w.Attributes)
			if !bytes.Equal(rec.wire, want) {
				var got tracepb.Span
				_ = proto.Unmarshal(rec.wire, &got)
				t.Errorf("%s %s (query %v): written straight\n%v\nfrom KeyValues\n%v", r.Method, r.Path, captureQuery, &got, &w)
			}
			e.sinks[0].pending, e.sinks[1].pending = nil, nil
			rec.refs.Store(1)
			rec.release()
		}
	}

	// With OTLP alone no KeyValue is made at all, and a request that
	// repeats the last one's first attributes gets their encoding copied:
	// the same attributes, whatever came before.
	only := benchNew(t, []destination{{name: "otlp", exp: &otlpSpans{client: mc, codec: mc.codec}}}, nil)
	for _, captureQuery := range []bool{false, true} {
		only.cfg.CaptureQuery = captureQuery
		order := []int{0, 0, 1, 1, 0, 2, 2, 3, 0, 4, 4, 1}
		for i := firstAttrs; i < len(reqs); i++ {
			order = append(order, 0, i, i, 0)
		}
		for _, i := range order {
			only.record(reqs[i])
			rec := only.sinks[0].pending[0]
			if len(rec.attrs) != 0 || len(rec.wire) == 0 {
				t.Fatalf("OTLP only: %d KeyValues, %d bytes encoded", len(rec.attrs), len(rec.wire))
			}
			var got tracepb.Span
			if err := proto.Unmarshal(rec.wire, &got); err != nil {
				t.Fatal(err)
			}
			want := wantAttrs[captureQuery][i]
			same := len(got.Attributes) == len(want)
			for j := 0; same && j < len(want); j++ {
				same = proto.Equal(got.Attributes[j], want[j])
			}
			if !same {
				t.Errorf("request %d (query %v) after others: attributes\n%v\nwant\n%v", i, captureQuery, got.Attributes, want)
			}
			only.sinks[0].pending = nil
			rec.refs.Store(1)
			rec.release()
		}
	}
}

// TestOtherAttributesWrittenStraight: a gRPC, database or Kafka span's
// description is copied into its encoded span, its peer written after it.
// With the printer as well, the encoded span must be the bytes the codec
// writes from the KeyValues, failed spans' status included; with OTLP
// alone no KeyValue is made, and the attributes are the same, in the same
// order, whichever description came before.
func TestOtherAttributesWrittenStraight(t *testing.T) {
	t.Setenv("OTEL_TRACES_SAMPLER", "")
	mc := &marshalClient{codec: newTraceCodec()}
	both := benchNew(t, []destination{
		{name: "otlp", exp: &otlpSpans{client: mc, codec: mc.codec}},
		{name: "recorder", exp: newBatchRecorder()},
	}, nil)
	only := benchNew(t, []destination{{name: "otlp", exp: &otlpSpans{client: mc, codec: mc.codec}}}, nil)

	say := otherReq(tracer.ProtoGRPC, tracer.RoleServer)
	say.RPCService, say.RPCMethod, say.GRPCStatus = "demo.Echo", "Say", 0
	failed := otherReq(tracer.ProtoGRPC, tracer.RoleClient)
	failed.RPCService, failed.RPCMethod, failed.GRPCStatus, failed.ErrorMessage = "demo.Echo", "Say", 14, "no backend"
	insert := otherReq(tracer.ProtoPostgreSQL, tracer.RoleClient)
	insert.DBOperation, insert.ErrorCode, insert.ErrorMessage = "INSERT", "23505", "duplicate key"
	send := otherReq(tracer.ProtoKafka, tracer.RoleClient)
	send.MessagingOperation, send.MessagingDestination, send.Partition = "send", "orders", 3
	otherPeer := *say
	otherPeer.Remote = netip.MustParseAddrPort("[2001:db8::7]:443")
	reqs := []*tracer.Request{say, failed, insert, send, &otherPeer}

	var want [][]*commonpb.KeyValue
	for _, r := range reqs {
		both.record(r)
		rec := both.sinks[0].pending[0]
		if len(rec.attrs) < 5 || !rec.attrsEncoded {
			t.Fatalf("%s: %d KeyValues, encoded %v", r.Protocol, len(rec.attrs), rec.attrsEncoded)
		}
		fromKVs := appendSpan(nil, rec)
		var w tracepb.Span
		_ = proto.Unmarshal(fromKVs, &w)
		want = append(want, w.Attributes)
		if !bytes.Equal(rec.wire, fromKVs) {
			var got tracepb.Span
			_ = proto.Unmarshal(rec.wire, &got)
			t.Errorf("%s %s: copied\n%v\nfrom KeyValues\n%v", r.Protocol, r.RPCMethod, &got, &w)
		}
		both.sinks[0].pending, both.sinks[1].pending = nil, nil
		rec.refs.Store(1)
		rec.release()
	}
	for _, i := range []int{0, 0, 1, 0, 2, 2, 3, 0, 4, 0, 1} {
		only.record(reqs[i])
		rec := only.sinks[0].pending[0]
		if len(rec.attrs) != 0 {
			t.Fatalf("OTLP only: %d KeyValues", len(rec.attrs))
		}
		var got tracepb.Span
		if err := proto.Unmarshal(rec.wire, &got); err != nil {
			t.Fatal(err)
		}
		same := len(got.Attributes) == len(want[i])
		for j := 0; same && j < len(want[i]); j++ {
			same = proto.Equal(got.Attributes[j], want[i][j])
		}
		if !same {
			t.Errorf("request %d after others: attributes\n%v\nwant\n%v", i, got.Attributes, want[i])
		}
		only.sinks[0].pending = nil
		rec.refs.Store(1)
		rec.release()
	}
}
