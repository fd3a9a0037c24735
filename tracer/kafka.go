package tracer

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"

	"github.com/podtracer/podtracer/bpf"
)

// Kafka: every message is a 4-byte big-endian size and that many bytes. A
// request starts with its api key, api version, correlation id and client
// id; its response carries only the correlation id, so the parser remembers
// the key and version of each request until its response comes.
//
// Spans are made for Produce ("send") and Fetch ("receive"); Metadata
// responses teach the topic names of the topic ids that Fetch v13+ and
// Produce v13+ use (in a table per tracer, shared by all connections, since
// clients fetch metadata on other connections than they fetch on).
//
// One request is one operation and one span, as the messaging semantic
// conventions have it, even when it names several topics: then the span has
// no destination (nor a partition), rather than one span per topic, which
// would count one operation several times in the duration metric. The
// destination is set when exactly one topic is concerned, the partition when
// exactly one partition is.
//   - Produce: the topics and partitions of the response (it lists each one
//     the request wrote to, with its error code), or of the request when the
//     response was not captured whole. A Produce with acks=0 has no response:
//     its span ends when the request was sent.
//   - Fetch: the topics and partitions whose response returned records, or
//     an error. A Fetch that returned nothing (a long poll that timed out)
//     gives no span: it received no message, and such polls would swamp
//     the operation duration with the poll timeout.
//
// The role is client when the observed process sends the requests: the
// application is the resource, the broker the peer (server.address).
// Records and topics past the captured prefix are skipped by length and
// counted as unknown, never guessed.
//
// A connection is recognised by a whole Produce, Fetch, Metadata or
// ApiVersions request that parses to its last byte (see kafkaRequestStart):
// a new connection by its ApiVersions, one older than the agent by its next
// Produce or Fetch. A broker observed from its own side is recognised only
// if it reads a request's size and body in one read (Java brokers read the
// size alone), so in practice Kafka spans are client spans.

const (
	// kafkaMaxPending bounds the requests awaiting a response per
	// connection. Clients keep few in flight (the Java client, Sarama and
	// franz-go five at most by default; librdkafka a handful under load,
	// as its batches linger), so 64 loses no real request, while a stream
	// never answered (or bytes that only look like Kafka) holds little.
	kafkaMaxPending = 64
	// kafkaPendingTopics bounds the topics of a Produce request kept until
	// its response: a span names a topic (and a partition) only when the
	// request concerned exactly one; the others are only counted, and a
	// cut response's errors for them are taken as it tells them.
	kafkaPendingTopics = 4
	// kafkaPendingPartitions bounds the partitions kept per such topic:
	// two tell one partition from several, all a span needs.
	kafkaPendingPartitions = 2
	// kafkaMaxClientID bounds the client id kept (messaging.client.id):
	// real ones are short names, the protocol allows 32 KB.
	kafkaMaxClientID = 256
	// kafkaMaxKeep bounds the bytes of one message kept for parsing.
	kafkaMaxKeep = 64 << 10
	// kafkaMaxSize is the largest message size taken as one.
	kafkaMaxSize = 1 << 30
	// kafkaDetectMaxSize bounds the size of a request that may start a
	// connection.
	kafkaDetectMaxSize = 100 << 20
	// kafkaMaxTopicIDs bounds the topic ids remembered per tracer.
	kafkaMaxTopicIDs = 4096
	// kafkaMaxTopics bounds the topics and partitions read from a message.
	kafkaMaxTopics = 1024

	kafkaProduce     = 0
	kafkaFetch       = 1
	kafkaMetadata    = 3
	kafkaApiVersions = 18
	kafkaMaxApiKey   = 100
	kafkaMaxVersion  = 30
)

func init() {
	registerProtocol(ProtoKafka, 50, func(Config) detector {
		topics := &kafkaTopicIDs{names: make(map[[16]byte]string)}
		return func(dir bpf.Direction, seg *segment, emit emitter) protocolParser {
			if !kafkaRequestStart(seg) {
				return nil
			}
			return &kafkaConn{emit: emit, topics: topics, reqDir: dir, pending: make(map[int32]*kafkaPending)}
		}
	})
}

// kafkaRequestStart tells whether a segment starts with a Kafka request
// that parses: a Produce, Fetch, Metadata or ApiVersions request (what a
// client sends first, and most), whole in the segment, whose every field
// is plausible and which ends where its size says. Responses carry only a
// correlation id: a response taken for a request would name key 0 (small
// correlation ids), and fail there.
func kafkaRequestStart(seg *segment) bool {
	b := seg.data
	if len(b) < 14 {
		return false
	}
	// The whole request in the segment: a client writes each request at
	// once, and a segment that starts mid-message rarely ends where its
	// first bytes, taken for a size, say.
	size := int(int32(binary.BigEndian.Uint32(b)))
	if size < 10 || size > kafkaDetectMaxSize || size+4 > seg.total {
		return false
	}
	if next := size + 4; next < seg.total {
		// Another message follows in the same write: its size must be
		// plausible too, where it was captured.
		if nb, ok := segCaptured(seg, next, 4); ok {
			if n := int32(binary.BigEndian.Uint32(nb)); n < 10 || n > kafkaDetectMaxSize {
				return false
			}
		}
	}
	switch int16(binary.BigEndian.Uint16(b[4:])) {
	case kafkaProduce, kafkaFetch, kafkaMetadata, kafkaApiVersions:
	default:
		return false
	}
	// A request cut by the capture must show enough fields to judge.
	q, ok := parseKafkaRequest(b[4:min(len(b), size+4)])
	return ok && q.corr >= 0 && (q.complete || size+4 > len(b) && len(b) >= 64)
}

// kafkaRequest is what the parser reads of a request.
type kafkaRequest struct {
	key, version int16
	corr         int32
	clientID     string
	acks         int16 // Produce
	acksKnown    bool
	topics       []kafkaTopic // Produce
	ntopics      int
	records      int  // Produce: the messages it sends, -1 when not all were captured
	complete     bool // parsed to its end, which was the message's end
}

// kafkaMaxVersions are the newest versions parsed, by api key.
var kafkaMaxVersions = map[int16]int16{kafkaProduce: 13, kafkaFetch: 18, kafkaMetadata: 13, kafkaApiVersions: 5}

// parseKafkaRequest parses the captured start of a request. ok is false
// when what was captured cannot be a request: a field out of its range, a
// topic name Kafka forbids, or bytes left over after the last field. Only
// the header is read of api keys other than those in kafkaMaxVersions.
func parseKafkaRequest(b []byte) (q kafkaRequest, ok bool) {
	r := kafkaReader{b: b}
	q.key, q.version, q.corr = r.int16(), r.int16(), r.int32()
	q.clientID, _ = r.str(false) // a nullable string even in flexible headers
	if r.short || q.key < 0 || q.key > kafkaMaxApiKey || q.version < 0 || !printable([]byte(q.clientID)) {
		return q, false
	}
	maxV, known := kafkaMaxVersions[q.key]
	if !known {
		return q, q.version <= kafkaMaxVersion
	}
	if q.version > maxV {
		return q, false
	}
	v := q.version
	flex := kafkaFlexible(q.key, v) || q.key == kafkaApiVersions && v >= 3
	if flex {
		r.tags()
	}
	bad := false
	check := func(good bool) { bad = bad || !r.short && !good }
	switch q.key {
	case kafkaProduce:
		if v >= 3 {
			r.str(flex) // transactional id
		}
		q.acks = r.int16()
		q.acksKnown = !r.short
		check(q.acks >= -1 && q.acks <= 1)
		check(r.int32() >= 0) // timeout
		q.topics, q.ntopics = r.topics(v >= 13, flex, func(t *kafkaTopic) {
			p := r.int32()
			check(p >= 0)
			t.partitions = appendBounded(t.partitions, p)
			n := r.length(flex, false)
			records := r.take(max(n, 0))
			if count, ok := kafkaRecordCount(records); ok && q.records >= 0 {
				q.records += count
			} else if n > 0 {
				q.records = -1
			}
			if flex {
				r.tags()
			}
		})
		check(q.ntopics >= 0)
		if r.short {
			q.records = -1
		}
	case kafkaFetch:
		if v <= 14 {
			r.int32() // replica id
		}
		check(r.int32() >= 0) // max wait
		r.int32()             // min bytes
		if v >= 3 {
			check(r.int32() >= 0) // max bytes
		}
		if v >= 4 {
			il := r.int8()
			check(il == 0 || il == 1) // isolation level
		}
		if v >= 7 {
			r.int32() // session id
			r.int32() // session epoch
		}
		topics, n := r.topics(v >= 13, flex, func(t *kafkaTopic) {
			check(r.int32() >= 0) // partition
			if v >= 9 {
				r.int32() // current leader epoch
			}
			r.int64() // fetch offset
			if v >= 12 {
				r.int32() // last fetched epoch
			}
			if v >= 5 {
				r.int64() // log start offset
			}
			r.int32() // partition max bytes
			if flex {
				r.tags()
			}
		})
		check(n >= 0 && validTopics(topics))
		if v >= 7 {
			forgotten, n := r.topics(v >= 13, flex, func(*kafkaTopic) { r.int32() })
			check(n >= 0 && validTopics(forgotten))
		}
		if v >= 11 {
			r.str(flex) // rack id
		}
	case kafkaMetadata:
		n := r.array(flex, func() {
			if v >= 10 {
				r.uuid()
			}
			name, _ := r.str(flex)
			check(validTopicName(name))
			if flex {
				r.tags()
			}
		})
		check(n >= -1)
		if v >= 4 {
			check(r.int8()&^1 == 0) // allow auto topic creation
		}
		if v >= 8 && v <= 10 {
			check(r.int8()&^1 == 0) // include cluster authorized operations
		}
		if v >= 8 {
			check(r.int8()&^1 == 0) // include topic authorized operations
		}
	case kafkaApiVersions:
		if v >= 3 {
			name, _ := r.str(flex)
			ver, _ := r.str(flex)
			check(printable([]byte(name)) && printable([]byte(ver)))
		}
		if v >= 5 {
			r.str(flex) // cluster id
			r.int32()   // node id
		}
	}
	if flex {
		r.tags()
	}
	check(validTopics(q.topics))
	q.complete = !r.short && len(r.b) == 0
	return q, !bad && (r.short || len(r.b) == 0)
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// validTopics tells whether the topic names read are names Kafka allows:
// if not, the bytes were not what we took them for.
func validTopics(ts []kafkaTopic) bool {
	for _, t := range ts {
		if !validTopicName(t.name) {
			return false
		}
	}
	return true
}

// validTopicName tells whether Kafka would accept name for a topic.
func validTopicName(name string) bool {
	if len(name) > 249 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// kafkaTopicIDs maps topic ids to names, learnt from Metadata responses.
type kafkaTopicIDs struct {
	names map[[16]byte]string
	ring  [kafkaMaxTopicIDs][16]byte
	next  int
}

func (t *kafkaTopicIDs) put(id [16]byte, name string) {
	if id == ([16]byte{}) || name == "" {
		return
	}
	if _, ok := t.names[id]; !ok {
		if len(t.names) >= kafkaMaxTopicIDs {
			delete(t.names, t.ring[t.next])
		}
		t.ring[t.next] = id
		t.next = (t.next + 1) % kafkaMaxTopicIDs
	}
	t.names[id] = name
}

// kafkaConn pairs the requests and responses of one connection.
type kafkaConn struct {
	emit    emitter
	topics  *kafkaTopicIDs
	reqDir  bpf.Direction // the direction requests travel
	streams [2]kafkaStream
	pending map[int32]*kafkaPending
	order   []int32 // correlation ids of pending, oldest first
}

type kafkaPending struct {
	key, version int16
	clientID     string
	start        uint64
	topics       []kafkaTopic // from the request
	ntopics      int          // topics the request named
	records      int          // Produce: the messages sent, -1 when unknown
	complete     bool         // the request was parsed to its end
}

type kafkaTopic struct {
	name       string
	id         [16]byte
	partitions []int32
	nparts     int  // partitions the message listed
	records    bool // a Fetch returned records for it
	errCode    int16
	errMsg     string
}

func (c *kafkaConn) feed(dir bpf.Direction, seg *segment) {
	if dir > bpf.Egress {
		return
	}
	s := &c.streams[dir]
	if s.lost {
		if !c.resyncs(dir, seg) {
			return
		}
		s.lost, s.nsize, s.left = false, 0, 0
	}
	s.feed(seg, func(m *kafkaMessage) {
		if dir == c.reqDir {
			c.onRequest(m)
		} else {
			c.onResponse(m)
		}
	})
}

// resyncs tells whether a segment may start a message, after a direction
// lost its place: a request like one that starts a connection, or a
// response to a request we wait for.
func (c *kafkaConn) resyncs(dir bpf.Direction, seg *segment) bool {
	if dir == c.reqDir {
		return kafkaRequestStart(seg)
	}
	b, ok := segCaptured(seg, 0, min(8, seg.total))
	if !ok || len(b) < 4 || len(c.pending) == 0 {
		return false
	}
	if size := int32(binary.BigEndian.Uint32(b)); size < 4 || size > kafkaMaxSize {
		return false
	}
	if len(b) < 8 {
		return seg.total == 4 // the size read on its own, as many clients do
	}
	return c.pending[int32(binary.BigEndian.Uint32(b[4:]))] != nil
}

func (c *kafkaConn) closed(uint64) {
	// Requests still waiting get no span: nothing is invented.
	clear(c.pending)
	c.order = nil
}

// kafkaMessage is one whole message of a direction: the captured start of
// its body, and when it went.
type kafkaMessage struct {
	body        []byte
	size        int // body bytes in all
	start, end  uint64
	startEnter  uint64
	captureFull bool // body holds all size bytes
}

// kafkaStream splits one direction into messages, counting the bytes that
// were not captured.
type kafkaStream struct {
	lost   bool
	sizeB  [4]byte
	nsize  int
	left   int
	m      kafkaMessage
	gap    bool
	buffer []byte
}

func (s *kafkaStream) feed(seg *segment, onMsg func(*kafkaMessage)) {
	pos := 0
	for pos < seg.total {
		if s.nsize < 4 {
			n := min(4-s.nsize, seg.total-pos)
			b, ok := segCaptured(seg, pos, n)
			if !ok {
				s.lose()
				return
			}
			if s.nsize == 0 {
				s.m = kafkaMessage{start: seg.exit, startEnter: seg.enter}
			}
			copy(s.sizeB[s.nsize:], b)
			s.nsize += n
			pos += n
			if s.nsize < 4 {
				continue
			}
			size := int(int32(binary.BigEndian.Uint32(s.sizeB[:])))
			if size < 4 || size > kafkaMaxSize {
				s.lose()
				return
			}
			s.left, s.m.size = size, size
			s.buffer, s.gap = s.buffer[:0], false
			continue
		}
		n := min(s.left, seg.total-pos)
		if want := min(n, kafkaMaxKeep-len(s.buffer)); want > 0 && !s.gap {
			b := segCapturedPrefix(seg, pos, want)
			s.buffer = append(s.buffer, b...)
			s.gap = len(b) < want
		}
		s.left -= n
		pos += n
		if s.left == 0 {
			s.nsize = 0
			s.m.end = seg.exit
			s.m.body = s.buffer
			s.m.captureFull = len(s.buffer) == s.m.size
			onMsg(&s.m)
			if cap(s.buffer) > 16<<10 {
				s.buffer = nil // do not pin a rare big message's buffer
			}
			if s.lost {
				return // the message was not one: wait for a segment that starts one
			}
		}
	}
}

func (s *kafkaStream) lose() {
	s.lost = true
	s.nsize, s.left = 0, 0
}

func kafkaFlexible(key, version int16) bool {
	switch key {
	case kafkaProduce, kafkaMetadata:
		return version >= 9
	case kafkaFetch:
		return version >= 12
	}
	return false
}

func (c *kafkaConn) onRequest(m *kafkaMessage) {
	q, ok := parseKafkaRequest(m.body)
	// Only a request of a key and version the parser reads whole can be
	// found incomplete: of the others it reads just the header.
	maxV, known := kafkaMaxVersions[q.key]
	if !ok || m.captureFull && !q.complete && known && maxV >= q.version {
		c.streams[c.reqDir].lose() // not a request: we lost our place
		return
	}
	if q.key != kafkaProduce && q.key != kafkaFetch && q.key != kafkaMetadata {
		return
	}
	p := &kafkaPending{key: q.key, version: q.version, clientID: q.clientID, start: m.start,
		topics: q.topics, ntopics: q.ntopics, records: q.records, complete: q.complete}
	if len(p.clientID) > kafkaMaxClientID {
		p.clientID = strings.Clone(p.clientID[:kafkaMaxClientID])
	}
	if c.reqDir == bpf.Egress {
		p.start = m.startEnter // the client began to send it
	}
	if q.key == kafkaProduce && q.acksKnown && q.acks == 0 {
		// No response will come: the send is done when it was written.
		c.emitProduce(p, p.topics, p.ntopics, p.complete, m.end)
		return
	}
	if len(c.pending) >= kafkaMaxPending {
		delete(c.pending, c.order[0])
		c.order = c.order[1:]
	}
	if _, dup := c.pending[q.corr]; !dup {
		c.order = append(c.order, q.corr)
	}
	p.topics = kafkaKeepTopics(p.topics)
	c.pending[q.corr] = p
}

// kafkaKeepTopics copies what a pending request needs of its topics (see
// kafkaPendingTopics), so as not to pin the parsed request's arrays.
func kafkaKeepTopics(ts []kafkaTopic) []kafkaTopic {
	if len(ts) == 0 {
		return nil
	}
	out := make([]kafkaTopic, min(len(ts), kafkaPendingTopics))
	for i := range out {
		out[i] = ts[i]
		out[i].partitions = slices.Clone(ts[i].partitions[:min(len(ts[i].partitions), kafkaPendingPartitions)])
	}
	return out
}

func (c *kafkaConn) onResponse(m *kafkaMessage) {
	r := kafkaReader{b: m.body}
	corr := r.int32()
	p := c.pending[corr]
	if r.short || p == nil {
		return
	}
	delete(c.pending, corr)
	for i, id := range c.order {
		if id == corr {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
	flex := kafkaFlexible(p.key, p.version)
	if flex {
		r.tags()
	}
	v := p.version
	switch p.key {
	case kafkaProduce:
		topics, n := r.topics(v >= 13, flex, func(t *kafkaTopic) {
			t.partitions = appendBounded(t.partitions, r.int32())
			code := r.int16()
			r.int64() // base offset
			if v >= 2 {
				r.int64() // log append time
			}
			if v >= 5 {
				r.int64() // log start offset
			}
			msg := ""
			if v >= 8 {
				r.array(flex, func() {
					r.int32()
					r.str(flex)
					if flex {
						r.tags()
					}
				})
				msg, _ = r.str(flex)
			}
			if flex {
				r.tags()
			}
			if code != 0 && t.errCode == 0 {
				t.errCode, t.errMsg = code, msg
			}
		})
		if !validTopics(topics) {
			return
		}
		switch {
		case !r.short:
			c.emitProduce(p, topics, n, true, m.end)
		case p.complete:
			// The request named every topic; the response adds the errors
			// it told before it was cut.
			c.emitProduce(p, mergeErrors(p.topics, topics, p.ntopics > len(p.topics)), p.ntopics, true, m.end)
		default:
			c.emitProduce(p, topics, n, false, m.end)
		}
	case kafkaFetch:
		if v >= 1 {
			r.int32() // throttle time
		}
		var topErr int16
		if v >= 7 {
			topErr = r.int16()
			r.int32() // session id
		}
		topics, n := r.topics(v >= 13, flex, func(t *kafkaTopic) {
			part := r.int32()
			code := r.int16()
			r.int64() // high watermark
			if v >= 4 {
				r.int64() // last stable offset
			}
			if v >= 5 {
				r.int64() // log start offset
			}
			if v >= 4 {
				r.array(flex, func() { // aborted transactions
					r.int64()
					r.int64()
					if flex {
						r.tags()
					}
				})
			}
			if v >= 11 {
				r.int32() // preferred read replica
			}
			cut := r.short
			n := r.bytes(flex) // its length is known even when the records were not captured
			if flex {
				r.tags()
			}
			if cut {
				return
			}
			if n > 0 || code != 0 {
				t.partitions = appendBounded(t.partitions, part)
				t.records = t.records || n > 0
			}
			if code != 0 && t.errCode == 0 {
				t.errCode = code
			}
		})
		if validTopics(topics) {
			c.emitFetch(p, topErr, topics, n, !r.short, m.end)
		}
	case kafkaMetadata:
		c.readMetadata(&r, v, flex)
	}
}

// readMetadata learns topic ids from a Metadata response.
func (c *kafkaConn) readMetadata(r *kafkaReader, v int16, flex bool) {
	if v < 10 {
		return // no topic ids before v10
	}
	r.int32()              // throttle time
	r.array(flex, func() { // brokers
		r.int32()
		r.str(flex)
		r.int32()
		r.str(flex)
		if flex {
			r.tags()
		}
	})
	r.str(flex) // cluster id
	r.int32()   // controller id
	r.array(flex, func() {
		r.int16() // error code
		name, _ := r.str(flex)
		id := r.uuid()
		r.int8()               // is internal
		r.array(flex, func() { // partitions
			r.int16()
			r.int32()
			r.int32()
			if v >= 7 {
				r.int32()
			}
			for range 2 + btoi(v >= 5) { // replicas, isr, offline replicas
				r.array(flex, func() { r.int32() })
			}
			if flex {
				r.tags()
			}
		})
		r.int32() // authorized operations (v8+)
		if flex {
			r.tags()
		}
		// Only names Kafka allows, as for requests: the table is shared by
		// every connection, and its names become a metric attribute.
		if !r.short && validTopicName(name) {
			c.topics.put(id, name)
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// mergeErrors adds to the request's topics the errors the response told
// before it was cut. When only some of the request's topics were kept
// (trimmed), an error of a topic not among them is taken as the response
// tells it.
func mergeErrors(req, resp []kafkaTopic, trimmed bool) []kafkaTopic {
	out := append([]kafkaTopic(nil), req...)
	for _, t := range resp {
		found := false
		for i := range req {
			if out[i].name == t.name && out[i].id == t.id {
				found = true
				if out[i].errCode == 0 {
					out[i].errCode, out[i].errMsg = t.errCode, t.errMsg
				}
			}
		}
		if !found && trimmed && t.errCode != 0 {
			out = append(out, kafkaTopic{name: t.name, id: t.id, errCode: t.errCode, errMsg: t.errMsg})
		}
	}
	return out
}

func (c *kafkaConn) emitProduce(p *kafkaPending, topics []kafkaTopic, n int, complete bool, end uint64) {
	r := c.request(p, "send")
	r.MessageCount = max(p.records, 0)
	c.describe(r, topics, complete || n == 1, complete)
	c.emit(r, c.role(), p.start, end)
}

func (c *kafkaConn) emitFetch(p *kafkaPending, topErr int16, topics []kafkaTopic, n int, complete bool, end uint64) {
	got := topics[:0:0]
	for _, t := range topics {
		if len(t.partitions) > 0 {
			got = append(got, t)
		}
	}
	if topErr == 0 && len(got) == 0 {
		return // nothing received: an empty poll
	}
	r := c.request(p, "receive")
	c.describe(r, got, complete || n == 1, complete)
	if topErr != 0 {
		setKafkaError(r, topErr, "")
	}
	c.emit(r, c.role(), p.start, end)
}

func (c *kafkaConn) role() Role {
	if c.reqDir == bpf.Egress {
		return RoleClient
	}
	return RoleServer
}

func (c *kafkaConn) request(p *kafkaPending, op string) *Request {
	return pooledRequest(Request{
		Protocol:           ProtoKafka,
		MessagingOperation: op,
		ClientID:           p.clientID,
		Partition:          -1,
		GRPCStatus:         -1,
	})
}

// describe sets the destination, partition and error from the topics an
// operation concerned. allTopics says the list holds every topic concerned;
// complete, that every partition of theirs was read too.
func (c *kafkaConn) describe(r *Request, topics []kafkaTopic, allTopics, complete bool) {
	r.Truncated = !complete
	for _, t := range topics {
		if t.errCode != 0 {
			setKafkaError(r, t.errCode, t.errMsg)
			break
		}
	}
	if len(topics) != 1 || !allTopics {
		return
	}
	t := &topics[0]
	name := t.name
	if t.id != ([16]byte{}) {
		name = c.topics.names[t.id] // "" when no Metadata response told it
	}
	r.MessagingDestination = name
	// A partition means nothing without its topic.
	if name != "" && len(t.partitions) == 1 && (complete || t.nparts == 1) {
		r.Partition = int(t.partitions[0])
	}
}

func setKafkaError(r *Request, code int16, msg string) {
	if r.ErrorCode != "" {
		return
	}
	// error.type is the error's name, as the conventions' Kafka examples
	// have it (KAFKA_STORAGE_ERROR), not its number.
	r.ErrorCode = kafkaErrorName(code)
	r.ErrorMessage = r.ErrorCode
	if msg != "" {
		r.ErrorMessage += ": " + msg
	}
}

func appendBounded(s []int32, v int32) []int32 {
	if len(s) >= kafkaMaxTopics {
		return s
	}
	return append(s, v)
}

// kafkaReader reads Kafka's primitive types from the captured start of a
// message; short is set once a read ran past it, and every later read
// yields zero.
type kafkaReader struct {
	b     []byte
	short bool
}

func (r *kafkaReader) take(n int) []byte {
	if r.short || n < 0 || n > len(r.b) {
		r.short = true
		r.b = nil
		return nil
	}
	b := r.b[:n]
	r.b = r.b[n:]
	return b
}

func (r *kafkaReader) int8() int8 {
	if b := r.take(1); b != nil {
		return int8(b[0])
	}
	return 0
}

func (r *kafkaReader) int16() int16 {
	if b := r.take(2); b != nil {
		return int16(binary.BigEndian.Uint16(b))
	}
	return 0
}

func (r *kafkaReader) int32() int32 {
	if b := r.take(4); b != nil {
		return int32(binary.BigEndian.Uint32(b))
	}
	return 0
}

func (r *kafkaReader) int64() int64 {
	if b := r.take(8); b != nil {
		return int64(binary.BigEndian.Uint64(b))
	}
	return 0
}

func (r *kafkaReader) uuid() (id [16]byte) {
	copy(id[:], r.take(16))
	return id
}

func (r *kafkaReader) uvarint() uint64 {
	if r.short {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.short = true
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

// length reads the length of a string, bytes or array: compact (an
// unsigned varint, length+1, 0 for null) or not (int16 for strings, int32
// for the others). -1 is null.
func (r *kafkaReader) length(flex, str bool) int {
	if flex {
		v := r.uvarint()
		if v > kafkaMaxSize {
			r.short = true
			return -1
		}
		return int(v) - 1
	}
	if str {
		return int(r.int16())
	}
	return int(r.int32())
}

// str reads a (nullable) string; null gives ok false.
func (r *kafkaReader) str(flex bool) (string, bool) {
	n := r.length(flex, true)
	if n < 0 {
		return "", false
	}
	return string(r.take(n)), !r.short
}

// kafkaRecordCount is how many records a record set holds: the sum of
// its batches' record counts (message format v2, the only one since
// Kafka 3.0 and what every client sends a broker that has it: a batch is
// a 61-byte header, its length at byte 8 counting from byte 12, its magic
// at 16, its record count at 57). ok is false for anything else, or a
// set not all there.
func kafkaRecordCount(b []byte) (n int, ok bool) {
	for len(b) > 0 {
		if len(b) < 61 || b[16] != 2 {
			return 0, false
		}
		size, count := int(int32(binary.BigEndian.Uint32(b[8:]))), int(int32(binary.BigEndian.Uint32(b[57:])))
		if size < 61-12 || size > len(b)-12 || count < 0 {
			return 0, false
		}
		n += count
		b = b[12+size:]
	}
	return n, true
}

// bytes skips (nullable) bytes and returns their length; -1 for null.
func (r *kafkaReader) bytes(flex bool) int {
	n := r.length(flex, false)
	if n > 0 {
		r.take(n)
	}
	return n
}

// array calls each once per element, as long as the message lasts.
func (r *kafkaReader) array(flex bool, each func()) int {
	n := r.length(flex, false)
	for i := 0; i < n && !r.short; i++ {
		each()
	}
	return n
}

// topics reads an array of topics, each a name (or an id) and an array of
// partitions that part reads.
func (r *kafkaReader) topics(byID, flex bool, part func(*kafkaTopic)) ([]kafkaTopic, int) {
	var out []kafkaTopic
	n := r.array(flex, func() {
		var t kafkaTopic
		if byID {
			t.id = r.uuid()
		} else {
			t.name, _ = r.str(flex)
		}
		t.nparts = r.array(flex, func() { part(&t) })
		if flex {
			r.tags()
		}
		if !r.short || t.name != "" || t.id != ([16]byte{}) {
			if len(out) < kafkaMaxTopics {
				out = append(out, t)
			}
		}
	})
	return out, n
}

// tags skips tagged fields.
func (r *kafkaReader) tags() {
	n := r.uvarint()
	for i := uint64(0); i < n && !r.short; i++ {
		r.uvarint()
		r.take(int(min(r.uvarint(), kafkaMaxSize)))
	}
}

var kafkaErrors = map[int16]string{
	-1: "UNKNOWN_SERVER_ERROR", 1: "OFFSET_OUT_OF_RANGE", 2: "CORRUPT_MESSAGE", 3: "UNKNOWN_TOPIC_OR_PARTITION",
	4: "INVALID_FETCH_SIZE", 5: "LEADER_NOT_AVAILABLE", 6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT",
	8: "BROKER_NOT_AVAILABLE", 9: "REPLICA_NOT_AVAILABLE", 10: "MESSAGE_TOO_LARGE", 13: "NETWORK_EXCEPTION",
	14: "COORDINATOR_LOAD_IN_PROGRESS", 15: "COORDINATOR_NOT_AVAILABLE", 16: "NOT_COORDINATOR",
	17: "INVALID_TOPIC_EXCEPTION", 18: "RECORD_LIST_TOO_LARGE", 19: "NOT_ENOUGH_REPLICAS",
	20: "NOT_ENOUGH_REPLICAS_AFTER_APPEND", 21: "INVALID_REQUIRED_ACKS", 29: "TOPIC_AUTHORIZATION_FAILED",
	31: "CLUSTER_AUTHORIZATION_FAILED", 35: "UNSUPPORTED_VERSION", 42: "INVALID_REQUEST",
	45: "OUT_OF_ORDER_SEQUENCE_NUMBER", 46: "DUPLICATE_SEQUENCE_NUMBER", 47: "INVALID_PRODUCER_EPOCH",
	48: "INVALID_TXN_STATE", 53: "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", 56: "KAFKA_STORAGE_ERROR",
	59: "UNKNOWN_PRODUCER_ID", 70: "FETCH_SESSION_ID_NOT_FOUND", 71: "INVALID_FETCH_SESSION_EPOCH",
	74: "FENCED_LEADER_EPOCH", 75: "UNKNOWN_LEADER_EPOCH", 87: "INVALID_RECORD", 100: "UNKNOWN_TOPIC_ID",
	106: "INCONSISTENT_TOPIC_ID",
}

func kafkaErrorName(code int16) string {
	if s, ok := kafkaErrors[code]; ok {
		return s
	}
	return "KAFKA_ERROR_" + strconv.Itoa(int(code))
}
