package tracer

import (
	"encoding/binary"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/podtracer/podtracer/bpf"
)

// The captures were made with test/fixtures/kafkaapp: a broker
// (kafkaapp -broker PORT -record kafka-broker.txt), then
// printf 'produce orders 3\nproduce2 orders events\nconsume orders 4\n' |
// kafkaapp -client ADDR -record kafka-franz-client.txt, then kcat -P -t events
// -p 1 (three lines), kcat -C -t events -p 1 -c 3 -e, kcat -C -t orders -o
// beginning -c 2 -e.
//
// kafka-franz-client.txt: franz-go (as the client wrote and read) produces
// three records to orders, one record to each of orders and events in one
// request, and consumes orders. kafka-broker.txt: the kfake broker's side
// of the same, then kcat (librdkafka) producing three messages to events
// partition 1, consuming them, and consuming two messages of orders.
var kafkaFranzWant = []string{
	`client kafka send "orders" partition=0 client=kafkaapp messages=1`,
	`client kafka send "orders" partition=0 client=kafkaapp messages=1`,
	`client kafka send "orders" partition=0 client=kafkaapp messages=1`,
	`client kafka send "" client=kafkaapp messages=2`,
	`client kafka receive "orders" partition=0 client=kafkaapp`,
}

var kafkaCaptureWant = map[string][]string{
	"kafka-franz-client.txt": kafkaFranzWant,
	"kafka-broker.txt": append(slices.Clone(kafkaFranzWant),
		`client kafka send "events" partition=1 client=rdkafka messages=3`, // kcat's three lines, one batch
		`client kafka receive "events" partition=1 client=rdkafka`,
		`client kafka receive "orders" partition=0 client=rdkafka`,
	),
}

// asServer rewrites wanted lines for the broker's view.
func asServer(want []string, server bool) []string {
	if !server {
		return want
	}
	out := make([]string, len(want))
	for i, w := range want {
		out[i] = "server" + strings.TrimPrefix(w, "client")
	}
	return out
}

// The broker recorded its reads: a message's size, then its body. The
// client wrote them at once: coalesce gives the client's segments.
func kafkaCapture(t testing.TB, name string) []capRecord {
	return coalesce(loadCapture(t, name))
}

func TestKafkaCaptures(t *testing.T) {
	for name, want := range kafkaCaptureWant {
		recs := kafkaCapture(t, name)
		for _, asClient := range []bool{true, false} {
			want := asServer(want, !asClient)
			for _, chunk := range []int{0, 1, 2, 3, 4, 5, 7, 13, 64, 1000} {
				h := newHarness(t, 1<<20)
				replay(h, recs, asClient, chunk, 0)
				if got := describeAll(h.got); !slices.Equal(got, want) {
					t.Errorf("%s client=%v chunk=%d:\n got %q\nwant %q", name, asClient, chunk, got, want)
				}
			}
			for _, capture := range []int{256, 1024} {
				h := newHarness(t, capture)
				replay(h, recs, asClient, 0, 0)
				if got := describeAll(h.got); !slices.Equal(got, want) {
					t.Errorf("%s client=%v capture=%d:\n got %q\nwant %q", name, asClient, capture, got, want)
				}
				if n := h.tracer.Stats().Connections; n != 0 {
					t.Errorf("%s: %d connections left", name, n)
				}
			}
		}
	}
	// Fields, and that franz-go fetched by topic id (Fetch v13+), which
	// the Metadata responses on another connection resolved.
	h := newHarness(t, 1024)
	replay(h, kafkaCapture(t, "kafka-franz-client.txt"), true, 0, 0)
	r := h.got[0]
	if r.Protocol != ProtoKafka || r.Role != RoleClient || r.MessagingOperation != "send" || r.MessagingDestination != "orders" ||
		r.Partition != 0 || r.ClientID != "kafkaapp" || r.GRPCStatus != -1 || r.ErrorCode != "" || !r.End.After(r.Start) {
		t.Errorf("send = %+v", r)
	}
	if v := kafkaVersionSent(t, "kafka-franz-client.txt", kafkaFetch); v < 13 {
		t.Errorf("franz-go sent Fetch v%d: the topic id path is not exercised", v)
	}
	if v := kafkaVersionSent(t, "kafka-broker.txt", kafkaProduce); v < 9 {
		t.Errorf("Produce v%d: the flexible versions are not exercised", v)
	}
}

// kafkaVersionSent is the first version of api key that a capture's
// clients sent.
func kafkaVersionSent(t *testing.T, name string, key int16) int16 {
	for _, r := range kafkaCapture(t, name) {
		if r.fromClient && len(r.data) >= 8 && int16(binary.BigEndian.Uint16(r.data[4:])) == key {
			return int16(binary.BigEndian.Uint16(r.data[6:]))
		}
	}
	return -1
}

func TestKafkaSmallCaptureAndJoin(t *testing.T) {
	for name, want := range kafkaCaptureWant {
		recs := kafkaCapture(t, name)
		for _, capture := range []int{1, 8, 14, 20, 40, 64, 100} {
			for _, chunk := range []int{0, 3, 50} {
				h := newHarness(t, capture)
				replay(h, recs, true, chunk, 0)
				checkKafkaSubset(t, fmt.Sprintf("%s capture=%d chunk=%d", name, capture, chunk), h.got, want)
			}
		}
		for from := 1; from < len(recs); from++ {
			h := newHarness(t, 1024)
			replay(h, recs, true, 0, from)
			checkKafkaSubset(t, fmt.Sprintf("%s from=%d", name, from), h.got, want)
		}
	}
}

// checkKafkaSubset fails unless every span is one the capture holds, in
// order, allowing an unknown destination, partition or message count.
func checkKafkaSubset(t *testing.T, what string, got []*Request, want []string) {
	t.Helper()
	rest := want
next:
	for _, r := range got {
		d := describe(r)
		for i, w := range rest {
			op, _, _ := strings.Cut(strings.TrimPrefix(w, "client kafka "), " ")
			client, count, _ := strings.Cut(w[strings.LastIndex(w, " client=")+1:], " messages=")
			if d == w || (r.MessagingOperation == op && client == "client="+r.ClientID &&
				(r.MessagingDestination == "" || strings.Contains(w, `"`+r.MessagingDestination+`"`)) &&
				(r.MessageCount == 0 || count == strconv.Itoa(r.MessageCount))) {
				rest = rest[i+1:]
				continue next
			}
		}
		t.Errorf("%s: span %q is not among (or out of order) %q", what, d, want)
		return
	}
}

// kmsgBuf builds Kafka messages for the synthetic tests.
type kmsgBuf []byte

func (b kmsgBuf) i8(v int8) kmsgBuf   { return append(b, byte(v)) }
func (b kmsgBuf) i16(v int16) kmsgBuf { return binary.BigEndian.AppendUint16(b, uint16(v)) }
func (b kmsgBuf) i32(v int32) kmsgBuf { return binary.BigEndian.AppendUint32(b, uint32(v)) }
func (b kmsgBuf) i64(v int64) kmsgBuf { return binary.BigEndian.AppendUint64(b, uint64(v)) }
func (b kmsgBuf) str(s string) kmsgBuf {
	return append(b.i16(int16(len(s))), s...)
}
func (b kmsgBuf) cstr(s string) kmsgBuf { // compact
	return append(binary.AppendUvarint(b, uint64(len(s)+1)), s...)
}
func (b kmsgBuf) clen(n int) kmsgBuf { return binary.AppendUvarint(b, uint64(n+1)) }
func (b kmsgBuf) tags() kmsgBuf      { return append(b, 0) }
func (b kmsgBuf) msg() string {
	return string(binary.BigEndian.AppendUint32(nil, uint32(len(b)))) + string(b)
}

func kafkaHeader(key, version int16, corr int32, client string, flex bool) kmsgBuf {
	b := kmsgBuf{}.i16(key).i16(version).i32(corr).str(client)
	if flex {
		b = b.tags()
	}
	return b
}

// produceV3 is a Produce v3 request: topics, each with partitions.
func produceV3(corr int32, acks int16, topics map[string][]int32) string {
	b := kafkaHeader(kafkaProduce, 3, corr, "app", false).i16(-1).i16(acks).i32(1000).i32(int32(len(topics)))
	for _, name := range slices.Sorted(maps.Keys(topics)) {
		b = b.str(name).i32(int32(len(topics[name])))
		for _, p := range topics[name] {
			b = b.i32(p).i32(20).append(make([]byte, 20))
		}
	}
	return b.msg()
}

func (b kmsgBuf) append(p []byte) kmsgBuf { return append(b, p...) }

// produceRespV3 answers with the given error code for every partition.
func produceRespV3(corr int32, code int16, topics map[string][]int32) string {
	b := kmsgBuf{}.i32(corr).i32(int32(len(topics)))
	for _, name := range slices.Sorted(maps.Keys(topics)) {
		b = b.str(name).i32(int32(len(topics[name])))
		for _, p := range topics[name] {
			b = b.i32(p).i16(code).i64(0).i64(-1)
		}
	}
	return b.i32(0).msg()
}

func TestKafkaProduce(t *testing.T) {
	h := newHarness(t, 4096)
	one := map[string][]int32{"payments": {2}}
	two := map[string][]int32{"payments": {0, 1}}
	multi := map[string][]int32{"a": {0}, "b": {0}}
	h.send(1, out, produceV3(7, -1, one))
	h.send(1, out, produceV3(8, 1, two))
	h.send(1, out, produceV3(9, 1, multi))
	h.send(1, out, produceV3(10, 0, one)) // acks=0: no response comes
	h.send(1, in, produceRespV3(8, 0, two))
	h.send(1, in, produceRespV3(7, 3, one)) // answered out of order; an error
	h.send(1, in, produceRespV3(9, 0, multi))
	h.send(1, in, produceRespV3(99, 0, one)) // answers nothing we sent
	got := describeAll(h.got)
	want := []string{
		`client kafka send "payments" partition=2 client=app`,
		`client kafka send "payments" client=app`,
		`client kafka send "payments" partition=2 client=app error=UNKNOWN_TOPIC_OR_PARTITION`,
		`client kafka send "" client=app`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if e := h.got[2]; e.ErrorMessage != "UNKNOWN_TOPIC_OR_PARTITION" {
		t.Errorf("error message %q", e.ErrorMessage)
	}
}

// fetchV12 builds a flexible Fetch v12 request and its response, topics by
// name, with records of the given sizes per partition.
func fetchV12(corr int32) string {
	return kafkaHeader(kafkaFetch, 12, corr, "consumer", true).i32(-1).i32(500).i32(1).i32(1 << 20).i8(0).i32(0).i32(-1).
		clen(0).clen(0).cstr("").tags().msg()
}

func fetchRespV12(corr int32, topErr int16, topics map[string][]int32, records int) string {
	b := kmsgBuf{}.i32(corr).tags().i32(0).i16(topErr).i32(0).clen(len(topics))
	for _, name := range slices.Sorted(maps.Keys(topics)) {
		b = b.cstr(name).clen(len(topics[name]))
		for _, p := range topics[name] {
			b = b.i32(p).i16(0).i64(10).i64(10).i64(0).clen(0).i32(-1).clen(records).append(make([]byte, records)).tags()
		}
		b = b.tags()
	}
	return b.tags().msg()
}

func TestKafkaFetch(t *testing.T) {
	h := newHarness(t, 1024)
	for i, resp := range []string{
		fetchRespV12(1, 0, map[string][]int32{"clicks": {3}}, 100),       // one partition with records
		fetchRespV12(2, 0, map[string][]int32{"clicks": {0, 1}}, 0),      // an empty poll: no span
		fetchRespV12(3, 0, map[string][]int32{"clicks": {0, 1}}, 50),     // two partitions
		fetchRespV12(4, 0, map[string][]int32{"a": {0}, "b": {1}}, 5000), // two topics, cut by the capture
		fetchRespV12(5, 70, nil, 0),                                      // FETCH_SESSION_ID_NOT_FOUND
		fetchRespV12(6, 0, map[string][]int32{"big": {4}}, 50000),        // one topic, records past the capture
	} {
		h.send(1, out, fetchV12(int32(i+1)))
		h.send(1, in, resp[:4]) // the size, read on its own
		h.send(1, in, resp[4:])
	}
	got := describeAll(h.got)
	want := []string{
		`client kafka receive "clicks" partition=3 client=consumer`,
		`client kafka receive "clicks" client=consumer`,
		`client kafka receive "" client=consumer`,
		`client kafka receive "" client=consumer error=FETCH_SESSION_ID_NOT_FOUND`,
		`client kafka receive "big" partition=4 client=consumer`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// Fetch v13 names topics by id: resolved from a Metadata response seen on
// any connection of the tracer; unknown ids leave the destination empty.
func TestKafkaTopicIDs(t *testing.T) {
	id := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	meta := kmsgBuf{}.i32(1).tags().i32(0).clen(1).i32(1).cstr("localhost").i32(9092).clen(-1).tags().clen(-1).i32(1).
		clen(1).i16(0).cstr("inventory").append(id[:]).i8(0).clen(1).
		i16(0).i32(0).i32(1).i32(0).clen(1).i32(1).clen(1).i32(1).clen(0).tags().
		i32(0).tags().i16(0).tags().msg()
	fetchResp := func(corr int32, id [16]byte) string {
		return kmsgBuf{}.i32(corr).tags().i32(0).i16(0).i32(0).clen(1).append(id[:]).clen(1).
			i32(0).i16(0).i64(1).i64(1).i64(0).clen(0).i32(-1).clen(10).append(make([]byte, 10)).tags().tags().tags().msg()
	}
	fetch := func(corr int32) string {
		return kafkaHeader(kafkaFetch, 15, corr, "c", true).i32(500).i32(1).i32(1 << 20).i8(0).i32(0).i32(-1).clen(0).clen(0).cstr("").tags().msg()
	}
	h := newHarness(t, 1024)
	// ApiVersions first, as clients do (a Metadata request's first bytes,
	// 00 03 00 0c, could pass for a PostgreSQL startup message).
	h.send(1, out, kafkaHeader(kafkaApiVersions, 3, 0, "c", true).cstr("t").cstr("1").tags().msg())
	h.send(1, out, kafkaHeader(kafkaMetadata, 12, 1, "c", true).clen(0).i8(0).i8(0).tags().msg())
	h.send(1, in, meta)
	h.send(2, out, fetch(1))
	h.send(2, in, fetchResp(1, id))
	h.send(2, out, fetch(2))
	h.send(2, in, fetchResp(2, [16]byte{9}))
	got := describeAll(h.got)
	want := []string{`client kafka receive "inventory" partition=0 client=c`, `client kafka receive "" client=c`}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// Topic names learnt from Metadata responses are names Kafka allows
// (at most 249 bytes of [a-zA-Z0-9._-]), as those read from requests are:
// the table is shared by every connection and its names become
// messaging.destination.name on metrics, so a peer must not fill it with
// 64 KiB strings or arbitrary bytes.
func TestKafkaTopicIDsInvalidName(t *testing.T) {
	for _, name := range []string{strings.Repeat("x", 5000), "no spaces/or slashes", "badÿutf8"} {
		id := [16]byte{1, 2, 3}
		meta := kmsgBuf{}.i32(1).tags().i32(0).clen(1).i32(1).cstr("localhost").i32(9092).clen(-1).tags().clen(-1).i32(1).
			clen(1).i16(0).cstr(name).append(id[:]).i8(0).clen(1).
			i16(0).i32(0).i32(1).i32(0).clen(1).i32(1).clen(1).i32(1).clen(0).tags().
			i32(0).tags().i16(0).tags().msg()
		h := newHarness(t, 8192)
		h.send(1, out, kafkaHeader(kafkaApiVersions, 3, 0, "c", true).cstr("t").cstr("1").tags().msg())
		h.send(1, out, kafkaHeader(kafkaMetadata, 12, 1, "c", true).clen(0).i8(0).i8(0).tags().msg())
		h.send(1, in, meta)
		c := h.tracer.conns[connKey{pid: 7, sock: 1}].parser.(*kafkaConn)
		if got, ok := c.topics.names[id]; ok {
			t.Errorf("topic id table holds %.40q", got)
		}
	}
}

func TestKafkaPendingBound(t *testing.T) {
	h := newHarness(t, 1024)
	one := map[string][]int32{"t": {0}}
	for i := range 3 * kafkaMaxPending {
		h.send(1, out, produceV3(int32(i), 1, one))
	}
	c := h.tracer.conns[connKey{pid: 7, sock: 1}].parser.(*kafkaConn)
	if len(c.pending) > kafkaMaxPending || len(c.order) > kafkaMaxPending {
		t.Errorf("%d pending, %d in order", len(c.pending), len(c.order))
	}
	h.send(1, in, produceRespV3(0, 0, one))                   // forgotten
	h.send(1, in, produceRespV3(3*kafkaMaxPending-1, 0, one)) // kept
	if got := describeAll(h.got); len(got) != 1 {
		t.Errorf("got %q", got)
	}
}

// Garbage in the request direction loses the place; the next request
// that looks like one resyncs.
func TestKafkaResync(t *testing.T) {
	h := newHarness(t, 1024)
	one := map[string][]int32{"t": {0}}
	h.send(1, out, produceV3(1, 1, one))
	h.send(1, out, "\x00\x00\x00\x05\xff\xff\xff\xff\xff") // a size, then not a request
	h.send(1, in, produceRespV3(1, 0, one))
	h.send(1, out, produceV3(2, 1, one))
	h.send(1, in, produceRespV3(2, 0, one))
	if got := describeAll(h.got); len(got) != 2 {
		t.Errorf("got %q", got)
	}
}

// TestKafkaUnknownKeyV0: a request of an api key the parser does not read
// (GetTelemetrySubscriptions, 71), at version 0, in one write with a
// Produce, is a request: taken for garbage, it lost the Produce after it.
func TestKafkaUnknownKeyV0(t *testing.T) {
	h := newHarness(t, 4096)
	one := map[string][]int32{"t": {0}}
	h.send(1, out, produceV3(1, 1, one))
	h.send(1, in, produceRespV3(1, 0, one))
	h.send(1, out, kafkaHeader(71, 0, 2, "app", true).append(make([]byte, 16)).tags().msg()+produceV3(3, 1, one))
	h.send(1, in, produceRespV3(3, 0, one))
	if got := describeAll(h.got); len(got) != 2 {
		t.Errorf("got %q, want the two Produce spans", got)
	}
}

func TestKafkaDetect(t *testing.T) {
	apiVersions := kafkaHeader(kafkaApiVersions, 3, 0, "rdkafka", true).cstr("librdkafka").cstr("2.0.2").tags().msg()
	for _, tc := range []struct {
		name string
		data string
		want bool
	}{
		{"api versions", apiVersions, true},
		{"produce", produceV3(5, 1, map[string][]int32{"t": {0}}), true},
		{"two requests", apiVersions + apiVersions, true},
		{"request cut", apiVersions[:20], false},
		{"size alone", apiVersions[:4], false},
		{"http1", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"h2 preface", h2Preface, false},
		{"postgres startup", "\x00\x00\x00\x29\x00\x03\x00\x00user\x00postgres\x00database\x00shop\x00\x00", false},
		{"postgres ssl", "\x00\x00\x00\x08\x04\xd2\x16\x2f", false},
		{"mysql greeting", "\x4a\x00\x00\x00\x0a8.0.36\x00" + strings.Repeat("\x00", 66), false},
		{"redis", "*1\r\n$4\r\nPING\r\n", false},
		{"tls", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + strings.Repeat("\x00", 0x200), false},
		{"binary client id", kafkaHeader(kafkaApiVersions, 3, 0, "\x01\x02", true).msg(), false},
	} {
		seg := &segment{data: []byte(tc.data), total: len(tc.data)}
		if got := kafkaRequestStart(seg); got != tc.want {
			t.Errorf("%s: detected %v, want %v", tc.name, got, tc.want)
		}
	}
	// The preface is HTTP/2's, not Kafka's, in the tracer's order.
	names := Protocols()
	if slices.Index(names, ProtoKafka) < slices.Index(names, "http2") {
		t.Errorf("kafka detected before http2: %v", names)
	}
	_ = bpf.Ingress
}

// FuzzKafka feeds arbitrary bytes both ways, cut into segments: the parser
// must not panic, emit only Kafka operations it understood, keep bounded
// state, and forget the connection on close.
func FuzzKafka(f *testing.F) {
	for name := range kafkaCaptureWant {
		var c, s []byte
		for _, r := range kafkaCapture(f, name) {
			if r.conn > 3 || r.close {
				continue
			}
			// Small seeds: the fuzzer minimizes every new input, and that
			// takes long on big ones.
			if r.fromClient && len(c) < 1024 {
				c = append(c, r.data...)
			} else if !r.fromClient && len(s) < 1024 {
				s = append(s, r.data...)
			}
		}
		f.Add(c, s, uint8(0), uint16(1024))
		f.Add(c, s, uint8(5), uint16(64))
		f.Add(c, s, uint8(5), uint16(3<<12|64))
	}
	f.Add([]byte(produceV3(1, 1, map[string][]int32{"t": {0, 1}})), []byte(produceRespV3(1, 3, map[string][]int32{"t": {0, 1}})), uint8(0), uint16(30))
	f.Add([]byte(fetchV12(1)), []byte(fetchRespV12(1, 0, map[string][]int32{"t": {0}}, 10)), uint8(3), uint16(4096))
	f.Fuzz(func(t *testing.T, cli, srv []byte, cut uint8, capture uint16) {
		h := newHarness(&testing.T{}, int(capture%4096)+1)
		h.countEvery = int(capture >> 12) // some pieces counted, not read
		step := int(cut)
		srvStep := 0
		if step > 0 {
			srvStep = step + 3
		}
		h.interleave(1, bpf.Egress, cli, step, bpf.Ingress, srv, srvStep, func() {
			if c := h.tracer.conns[connKey{pid: 7, sock: 1}]; c != nil {
				if p, ok := c.parser.(*kafkaConn); ok {
					if len(p.pending) > kafkaMaxPending || len(p.order) > kafkaMaxPending {
						t.Fatalf("%d pending", len(p.pending))
					}
					for _, s := range p.streams {
						if len(s.buffer) > kafkaMaxKeep {
							t.Fatalf("buffer %d", len(s.buffer))
						}
					}
				}
			}
		})
		h.close(1)
		for _, r := range h.got {
			if r.Protocol == ProtoKafka && r.MessagingOperation != "send" && r.MessagingOperation != "receive" {
				t.Fatalf("emitted %+v", r)
			}
		}
		if s := h.tracer.Stats(); s.ParserFailures != 0 {
			t.Fatalf("a parser failed (panicked) %d times: the tracer recovers, but it is a bug", s.ParserFailures)
		}
		if h.tracer.Stats().Connections != 0 {
			t.Fatal("connection kept after close")
		}
	})
}

// kafkaHeld counts the bytes a connection's pending requests hold: their
// structs, client ids, topic names and partitions.
func kafkaHeld(c *kafkaConn) int {
	n := 0
	for _, p := range c.pending {
		n += int(unsafe.Sizeof(*p)) + len(p.clientID) + cap(p.topics)*int(unsafe.Sizeof(kafkaTopic{}))
		for _, t := range p.topics {
			n += len(t.name) + len(t.errMsg) + 4*cap(t.partitions)
		}
	}
	return n
}

// A client whose Produce requests are never answered (or bytes that look
// like one) holds at most a few hundred kilobytes per connection, however
// many topics and partitions its requests name and however long its
// client id.
func TestKafkaPendingMemory(t *testing.T) {
	// Flexible Produce v9, as big as kafkaMaxKeep lets it be parsed: 1024
	// topics of 9 partitions each, a long client id.
	req := func(corr int32) string {
		b := kafkaHeader(kafkaProduce, 9, corr, strings.Repeat("c", 2000), true).clen(-1).i16(1).i32(1000).clen(1024)
		for i := range 1024 {
			b = b.cstr(fmt.Sprintf("topic-%04d-xxx", i)).clen(6)
			for p := range 6 {
				b = b.i32(int32(p)).clen(-1).tags()
			}
			b = b.tags()
		}
		return b.tags().msg()
	}
	if n := len(req(0)); n > kafkaMaxKeep {
		t.Fatalf("request of %d bytes, past kafkaMaxKeep", n)
	}
	h := newHarness(t, 1<<20)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 1100 {
		h.send(1, out, req(int32(i)))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	c := h.tracer.conns[connKey{pid: 7, sock: 1}].parser.(*kafkaConn)
	held := kafkaHeld(c)
	t.Logf("%d pending hold %d bytes (heap in use grew by %d)", len(c.pending), held, int64(after.HeapInuse)-int64(before.HeapInuse))
	if held > 256<<10 {
		t.Errorf("%d pending requests hold %d bytes", len(c.pending), held)
	}
	runtime.KeepAlive(h)
}

// A Produce to more topics than a pending request keeps: when its response
// is cut, an error it told for a topic not kept still shows.
func TestKafkaPendingTrimmedErrors(t *testing.T) {
	h := newHarness(t, 400)
	topics := map[string][]int32{}
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		topics[name] = []int32{0}
	}
	h.send(1, out, produceV3(5, 1, topics))
	b := kmsgBuf{}.i32(5).i32(6)
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		b = b.str(name).i32(1).i32(0).i16(0).i64(0).i64(-1)
	}
	b = b.str("f").i32(100)
	for p := range 100 { // past the capture
		b = b.i32(int32(p)).i16(3).i64(0).i64(-1)
	}
	h.send(1, in, b.i32(0).msg())
	want := []string{`client kafka send "" client=app error=UNKNOWN_TOPIC_OR_PARTITION`}
	if got := describeAll(h.got); !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}
