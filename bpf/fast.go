package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"syscall"

	"github.com/cilium/ebpf"
)

// The HTTP/1 fast path (capture.c): with the socket hooks, the kernel
// measures the HTTP/1 server requests that need no span itself, and sends
// neither their bytes nor their response's to user space. A request is the
// kernel's when it comes whole in one read (its body, if any, by its
// Content-Length), with no traceparent and no upgrade, of a method and path
// the agent registered (AddRoute), and the kernel's
// draw of its trace ID does not pick it for a span. The agent reads the
// kernel's histograms (ReadHistograms) when it exports metrics.

// MaxRoutePath is the longest path the kernel matches (ROUTE_PATH - 1).
const MaxRoutePath = 55

// MaxHistBounds is how many bucket bounds the kernel's histograms have.
const MaxHistBounds = 15

// Fast configures what the kernel does itself when spans are sampled:
// the HTTP/1 fast path, and the drop of server-side Redis commands not
// picked for a span (capture.c).
type Fast struct {
	// HTTP turns the fast path's histograms on. It only pays when most
	// requests need no span.
	HTTP bool
	// Spans turns on the kernel's spans, with HTTP: a request picked for
	// a span whose head the agent registered (AddHead) is not sent; the
	// kernel sends one EventHTTP record when its response goes out whole
	// in one send, else an EventHTTPRequest in its place before the
	// response's bytes. With a SampleRatio of 1 every eligible request is
	// picked.
	Spans bool
	// Redis drops the Redis commands a server in the pod serves that the
	// kernel's draw does not pick for a span, with their replies: the
	// agent makes nothing else of them (no metrics for a database seen
	// from its own side).
	Redis bool
	// RedisSpans turns on the kernel's spans of those commands: one picked
	// for a span whose shape (RedisShape) the agent registered (AddHead)
	// is not sent; the kernel sends one EventRedis record when its reply
	// goes out whole in one send and is not an error, else an
	// EventRedisRequest in its place before the reply's bytes.
	RedisSpans bool
	// SampleRatio is the share of eligible requests the kernel picks for
	// a span, by the trace-ID ratio rule; it sends them to user space
	// with the trace ID's low half (Event.TraceLow), but draws none at 1.
	SampleRatio float64
	// Bounds are the histogram's bucket upper bounds, in seconds, as the
	// agent's own histogram has them (at most MaxHistBounds).
	Bounds []float64
	// MaxSeries bounds the kernel's histograms (0: 1024). A series is a
	// process, route, method, status and version.
	MaxSeries int
}

func (f Fast) set(spec *ebpf.CollectionSpec) error {
	if !f.HTTP && !f.Redis && !f.Spans && !f.RedisSpans {
		return nil
	}
	if len(f.Bounds) > MaxHistBounds {
		return fmt.Errorf("fast path: %d histogram bounds, the kernel has room for %d", len(f.Bounds), MaxHistBounds)
	}
	var bounds [MaxHistBounds]uint64
	for i := range bounds {
		bounds[i] = math.MaxUint64
		if i < len(f.Bounds) {
			bounds[i] = BoundNS(f.Bounds[i])
		}
	}
	var bound uint64
	switch {
	case f.SampleRatio >= 1 && !f.Spans && !f.RedisSpans:
		return errors.New("fast path: a sample ratio of 1 leaves it nothing to do")
	case f.SampleRatio >= 1:
		bound = 1 << 63 // every draw picked
	case f.SampleRatio > 0:
		bound = uint64(f.SampleRatio * (1 << 63)) // the SDK's TraceIDRatioBased
	}
	settings := map[string]any{"sample_bound": bound, "hist_bounds_ns": bounds}
	if f.HTTP || f.Spans {
		settings["fast_http"] = uint8(1)
	}
	if f.Spans {
		settings["fast_spans"] = uint8(1)
	}
	if f.Redis || f.RedisSpans {
		settings["fast_redis"] = uint8(1)
	}
	if f.Redis {
		settings["redis_drop"] = uint8(1)
	}
	if f.RedisSpans {
		settings["redis_spans"] = uint8(1)
	}
	for name, value := range settings {
		if err := spec.Variables[name].Set(value); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// BoundNS is a bucket bound in seconds as the kernel compares durations
// with it: nanoseconds, rounded (0.075 s is 75 000 000 ns, not one less).
func BoundNS(seconds float64) uint64 { return uint64(math.Round(seconds * 1e9)) }

// fastMaps are the fast path's maps, when it is on.
type fastMaps struct {
	routes *ebpf.Map
	hist   *ebpf.Map
	room   *ebpf.Map
}

// KernelSpans tells whether the kernel stands for the HTTP requests
// picked for a span whose heads the agent registers (Fast.Spans).
func (c *Capture) KernelSpans() bool { return c.httpSpans }

// RedisSpans tells whether the kernel stands for the Redis commands picked
// for a span whose shapes the agent registers (Fast.RedisSpans).
func (c *Capture) RedisSpans() bool { return c.redisSpans }

// AddHead registers the hash of a request head the agent has parsed
// (Event.HeadHash), or of a Redis command's shape (RedisShape): the kernel
// may then stand for a request with that head (EventHTTP,
// EventHTTPRequest), or a command of that shape (EventRedis,
// EventRedisRequest). ErrHeadsFull when the kernel holds
// as many as it can.
func (c *Capture) AddHead(hash uint64) error {
	if c.heads == nil {
		return nil
	}
	if err := c.heads.Update(hash, uint8(1), ebpf.UpdateAny); err != nil {
		if errors.Is(err, syscall.E2BIG) { // a hash map that is full
			return ErrHeadsFull
		}
		return fmt.Errorf("register request head: %w", err)
	}
	return nil
}

// RemoveHead takes a head's hash back: the kernel no longer stands for
// requests with it (the agent may still get the records of some it
// already did).
func (c *Capture) RemoveHead(hash uint64) error {
	if c.heads == nil {
		return nil
	}
	if err := c.heads.Delete(hash); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget request head: %w", err)
	}
	return nil
}

// MaxHeads is how many request heads the kernel holds (http_heads).
const MaxHeads = 4096

// ErrHeadsFull: the kernel holds MaxHeads request heads already.
var ErrHeadsFull = errors.New("kernel request heads full")

// setRoom tells the kernel how many series the histograms have: it takes
// no request once they may be full (hist_room in capture.c). An eighth of
// the map is kept for the series that appear before the next read.
func (f *fastMaps) setRoom(series int) error {
	capacity := int(f.hist.MaxEntries())
	room := max(capacity-capacity/8-series, 0)
	if err := f.room.Update(uint32(0), uint32(room), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("kernel histograms' room: %w", err)
	}
	return nil
}

// FastPath tells whether the kernel measures requests itself, in its
// histograms (Fast.HTTP).
func (c *Capture) FastPath() bool { return c.fast != nil && c.histograms }

// RedisDrop tells whether the kernel drops server-side Redis commands not
// picked for a span.
func (c *Capture) RedisDrop() bool { return c.redisDrop }

// FastMethod tells whether the kernel can take requests of method: a name
// of 3 to 7 upper-case letters (fast_method in capture.c). Which of them
// it takes is the agent's choice, path by path (AddRoute).
func FastMethod(method string) bool {
	if len(method) < 3 || len(method) > 7 {
		return false
	}
	for i := 0; i < len(method); i++ {
		if method[i] < 'A' || method[i] > 'Z' {
			return false
		}
	}
	return true
}

// methodWord is a method's name as fast_method reads it: its bytes, in
// order, in a little-endian word.
func methodWord(method string) uint64 {
	var b [8]byte
	copy(b[:], method)
	return le.Uint64(b[:])
}

// methodName is the name in a word of methodWord.
func methodName(w uint64) string {
	var b [8]byte
	le.PutUint64(b[:], w)
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	return string(b[:n])
}

// AddRoute lets the kernel measure method requests of path by process pid
// (in the pod's PID namespace), as the route that the agent calls id. It
// reports false for a request the kernel would never take (a method it
// cannot read, a longer path) or when the fast path is off.
func (c *Capture) AddRoute(pid uint32, method, path string, id uint32) (bool, error) {
	if c.fast == nil || len(path) == 0 || len(path) > MaxRoutePath || path[0] != '/' || !FastMethod(method) {
		return false, nil
	}
	k := captureRouteKey{Tgid: pid, Method: methodWord(method)}
	k.Words, k.Hash = pathHash(path)
	if err := c.fast.routes.Update(&k, id, ebpf.UpdateAny); err != nil {
		return false, fmt.Errorf("register route: %w", err)
	}
	return true, nil
}

// pathHash is path_hash of capture.c: the path's bytes as little-endian
// words of 8, the last one padded with zeros (a path that fills its last
// word gets a zero word after it), folded by multiply and xor.
func pathHash(path string) (words uint8, hash uint64) {
	buf := make([]byte, (len(path)/8+1)*8)
	copy(buf, path)
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(buf); i += 8 {
		h = (h ^ le.Uint64(buf[i:])) * 0x9e3779b97f4a7c15
	}
	return uint8(len(buf) / 8), h ^ h>>29
}

// HistKey is one series of the kernel's histograms.
type HistKey struct {
	PID     uint32 // in the pod's PID namespace
	Route   uint32 // as given to AddRoute
	Status  int
	Method  string // "GET", "POST", ...
	Version string // "1.0", "1.1"
}

// HistValue is a series' totals since the kernel first counted it.
type HistValue struct {
	Count        uint64
	SumNS        uint64
	MinNS, MaxNS uint64 // over its requests' first responses (see fast_extend)
	// Buckets[i] counts durations in (Bounds[i-1], Bounds[i]]; the last
	// one used, Buckets[len(Bounds)], those above every bound.
	Buckets [MaxHistBounds + 1]uint64
}

// ReadHistograms calls fn with every series the kernel has counted and
// its totals, summed over the CPUs, and tells the kernel how much room its
// histograms have left.
func (c *Capture) ReadHistograms(fn func(HistKey, *HistValue)) error {
	if c.fast == nil {
		return nil
	}
	var (
		k      captureHistKey
		perCPU []captureHistVal
		v      HistValue
		series int
	)
	it := c.fast.hist.Iterate()
	for it.Next(&k, &perCPU) {
		v = HistValue{}
		for _, p := range perCPU {
			// A slot's max may come from a response that another CPU
			// counted (fast_extend); its min only from its own counts.
			v.MaxNS = max(v.MaxNS, p.MaxNs)
			if p.Count == 0 {
				continue
			}
			if v.Count == 0 || p.MinNs < v.MinNS {
				v.MinNS = p.MinNs
			}
			v.Count += p.Count
		}
		for _, p := range perCPU {
			// Sums wrap: a CPU's slot may hold a count another CPU moved
			// away (fast_extend), the total is right.
			v.SumNS += p.SumNs
			for i := range v.Buckets {
				v.Buckets[i] += p.Buckets[i]
			}
		}
		key := HistKey{PID: k.Tgid, Route: k.Route, Status: int(k.Status), Method: methodName(k.Method), Version: "1.1"}
		if k.Minor == '0' {
			key.Version = "1.0"
		}
		fn(key, &v)
		series++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read kernel histograms: %w", err)
	}
	return c.fast.setRoom(series)
}

// HistogramsLost is how many requests the kernel measured but could not
// count, its histogram map being full (Stats.FastLost).
func (c *Capture) HistogramsLost() (uint64, error) {
	s, err := c.Stats()
	return s.FastLost, err
}

// ForgetProcess removes what the kernel keeps for process pid, once it
// has exited and its histograms were read for the last time: its routes
// would otherwise apply to a process that reuses the pid.
func (c *Capture) ForgetProcess(pid uint32) error {
	if c.fast == nil {
		return nil
	}
	return errors.Join(
		deleteWhere(c.fast.routes, func(k *captureRouteKey, _ *uint32) bool { return k.Tgid == pid }),
		deleteWhere(c.fast.hist, func(k *captureHistKey, _ *[]captureHistVal) bool { return k.Tgid == pid }))
}

// deleteWhere deletes the entries of m that match says to.
func deleteWhere[K, V any](m *ebpf.Map, match func(*K, *V) bool) error {
	var (
		k    K
		v    V
		keys []K
		errs []error
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if match(&k, &v) {
			keys = append(keys, k)
		}
	}
	errs = append(errs, it.Err())
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

const hashMul = 0x9e3779b97f4a7c15

// HeadHash is the kernel's hash of an HTTP/1 request head (fast_request
// and head_step in capture.c), the one Event.HeadHash carries: head runs
// from the method to the blank line's "\r\n", which ends it. It is 0 for
// a head the kernel does not hash, or that goes on past the line the
// kernel ends it at (after a line ending in a bare "\n", the agent's
// parser reads on to "\r\n\r\n"). The agent checks a head it parsed against the
// kernel's hash before it registers it (AddHead): the kernel then stands
// for requests whose bytes the agent has, or for none.
//
// A traceparent line is left out of the hash (a mark stands for it), so
// that the requests of an instrumented client, each with a traceparent of
// its own, have one head; the kernel sends the value with each record.
// Only a line of the form the kernel reads has it: "traceparent:" (any
// case), an optional space, and a value of TraceparentLen bytes that the
// line's "\r\n" ends; a head with any other, or with two, hashes to 0.
func HeadHash(head []byte) uint64 {
	h, _ := headHash(head)
	return h
}

// HeadParent is where the value of head's traceparent starts, as the
// kernel reads it (HeadHash), or -1 when head has none.
func HeadParent(head []byte) int {
	h, at := headHash(head)
	if h == 0 {
		return -1
	}
	return at
}

// TraceparentLen is the length of the traceparent value (version 00) that
// a record of a request with one carries as its payload.
const TraceparentLen = 55

// traceparentMark stands in a head's hash for its traceparent line.
const traceparentMark = 0x7472616365706172

func headHash(head []byte) (hash uint64, parent int) {
	sp := bytes.IndexByte(head, ' ')
	if sp < 0 || !FastMethod(string(head[:sp])) {
		return 0, -1
	}
	h := (0xcbf29ce484222325 ^ methodWord(string(head[:sp]))) * hashMul
	parent = -1
	// A line at a time from the second byte on, its words up to its '\n',
	// the last one's bytes after it zeroed.
	for pos := 1; ; {
		nl := bytes.IndexByte(head[pos:], '\n')
		if nl < 0 {
			return 0, -1
		}
		nl += pos
		if pos > 1 && foldedIs(head[pos:], "tracepar") {
			// The kernel's check (head_line): its first eight letters,
			// then "ent", case folded the same way, and ':'.
			v := pos + 12
			if parent >= 0 || !foldedIs(head[pos+8:], "ent") || len(head) < pos+12 || head[pos+11] != ':' {
				return 0, -1
			}
			if head[v] == ' ' {
				v++
			}
			if nl != v+TraceparentLen+1 || head[nl-1] != '\r' {
				return 0, -1
			}
			parent = v
			h = (h ^ traceparentMark) * hashMul
		} else {
			for ; pos+8 <= nl; pos += 8 {
				h = (h ^ le.Uint64(head[pos:])) * hashMul
			}
			var w [8]byte
			copy(w[:], head[pos:nl+1])
			h = (h ^ le.Uint64(w[:])) * hashMul
		}
		pos = nl + 1
		if pos < len(head) && head[pos] == '\r' {
			if pos+2 != len(head) || head[pos+1] != '\n' || head[nl-1] != '\r' {
				return 0, -1
			}
			return h ^ h>>29, parent
		}
	}
}

// foldedIs tells whether b starts with name (lower case) when every byte
// of b is ORed with 0x20, as the kernel folds case: a header's name is
// compared a word at a time.
func foldedIs(b []byte, name string) bool {
	if len(b) < len(name) {
		return false
	}
	for i := range len(name) {
		if b[i]|0x20 != name[i] {
			return false
		}
	}
	return true
}

// redisShapeSeed is REDIS_SHAPE_SEED in capture.c: the Redis shapes share
// the kernel's map with the HTTP heads, whose hashes start elsewhere.
const redisShapeSeed = 0x6a09e667f3bcc908

// RedisShape is the kernel's hash of a Redis command's shape (redis_shape
// in capture.c), the one Event.HeadHash carries for a command: its name,
// its bytes as they came, and args, the count of its array's elements
// (the name and its arguments). It is 0 for a name longer than 16 bytes,
// or none. The agent registers a shape (AddHead) only when a command's
// span is all in it: no argument's value in db.query.text.
func RedisShape(name []byte, args int) uint64 {
	if len(name) == 0 || len(name) > 16 {
		return 0
	}
	var w [16]byte
	copy(w[:], name)
	h := (redisShapeSeed ^ (uint64(args)<<8 | uint64(len(name)))) * hashMul
	h = (h ^ le.Uint64(w[:8])) * hashMul
	h = (h ^ le.Uint64(w[8:])) * hashMul
	return h ^ h>>29
}
