package exporter

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/tracer"
)

// kernelModel counts durations as capture.c's fast_record does, with the
// bounds the agent gives the kernel (bpf.Fast).
type kernelModel struct {
	bounds []uint64
	v      bpf.HistValue
}

func newKernelModel(bounds []float64) *kernelModel {
	k := &kernelModel{}
	for _, b := range bounds {
		k.bounds = append(k.bounds, bpf.BoundNS(b))
	}
	return k
}

func (k *kernelModel) record(ns uint64) {
	b := 0
	for _, bound := range k.bounds {
		if ns > bound {
			b++
		}
	}
	k.v.Buckets[b]++
	k.v.SumNS += ns
	if k.v.Count == 0 || ns < k.v.MinNS {
		k.v.MinNS = ns
	}
	k.v.MaxNS = max(k.v.MaxNS, ns)
	k.v.Count++
}

// TestKernelHistogramMatchesAgent: requests counted in the kernel and
// added with addKernel give the points the same requests recorded by the
// agent give, cumulative and delta, over collections, boundaries included.
func TestKernelHistogramMatchesAgent(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(strconv.FormatBool(delta), func(t *testing.T) {
			opts := &histogramOptions{delta: delta, cardinalityLimit: 2000, exemplars: exemplarsAlwaysOff}
			agent, kernel := newHistograms(opts), newHistograms(opts)
			a, _ := httpconv.NewServerRequestDuration(agent)
			k, _ := httpconv.NewServerRequestDuration(kernel)
			ha, hk := a.Inst().(*histogram), k.Inst().(*histogram)
			model := newKernelModel(hk.bounds)
			attrs := attribute.NewSet(attribute.String("http.route", "/users/{id}"))
			var cachedA, cachedK *histPoint
			rnd := rand.New(rand.NewPCG(1, 2))
			for round := range 3 {
				last := model.v
				for i := range 300 {
					ns := uint64(rnd.ExpFloat64() * 30e6)
					if i%40 == 0 {
						ns = bpf.BoundNS(hk.bounds[i/40%len(hk.bounds)]) // exactly a bound
					}
					model.record(ns)
					ha.recordCached(&cachedA, attrs, float64(ns)/1e9, trace.SpanContext{}, time.Now())
				}
				hk.addKernel(&cachedK, attrs, &last, &model.v)
				want, _ := agent.Produce(context.Background())
				got, _ := kernel.Produce(context.Background())
				if len(want) != 1 || len(got) != 1 {
					t.Fatalf("round %d: %d and %d scopes", round, len(want), len(got))
				}
				metricdatatest.AssertEqual(t, want[0].Metrics[0], got[0].Metrics[0], metricdatatest.IgnoreTimestamp(),
					metricdatatest.IgnoreValue()) // sums: float addition order
				wp := want[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints[0]
				gp := got[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints[0]
				if math.Abs(wp.Sum-gp.Sum) > 1e-9*wp.Sum || wp.Count != gp.Count {
					t.Errorf("round %d: sum %v count %d, want %v %d", round, gp.Sum, gp.Count, wp.Sum, wp.Count)
				}
				for i := range wp.BucketCounts {
					if wp.BucketCounts[i] != gp.BucketCounts[i] {
						t.Errorf("round %d: buckets %v, want %v", round, gp.BucketCounts, wp.BucketCounts)
						break
					}
				}
			}
		})
	}
}

// deltaServerDuration is the server duration histogram of a reader with
// delta temporality, without exemplars.
func deltaServerDuration() (*histograms, *histogram) {
	hs := newHistograms(&histogramOptions{delta: true, exemplars: exemplarsAlwaysOff})
	inst, _ := httpconv.NewServerRequestDuration(hs)
	return hs, inst.Inst().(*histogram)
}

// A response that goes on after a collection moves its count out of a
// bucket the agent no longer holds (delta temporality): the move is not
// made, and the point stays whole, its buckets adding up to its count.
func TestKernelMoveAcrossDeltaPeriods(t *testing.T) {
	hs, h := deltaServerDuration()
	attrs := attribute.NewSet()
	var cached *histPoint
	var v0, v1, v2 bpf.HistValue
	v1.Count, v1.SumNS, v1.Buckets[0] = 1, 1e6, 1 // 1 ms: the first bucket
	h.addKernel(&cached, attrs, &v0, &v1)
	hs.Produce(context.Background()) // a new period
	// The same request now lasts 30 ms (fast_extend: bucket 0 to 3), and
	// another of 80 ms came (bucket 5).
	v2 = v1
	v2.Buckets[0], v2.Buckets[3], v2.Buckets[5] = 0, 1, 1
	v2.Count, v2.SumNS = 2, 30e6+80e6
	h.addKernel(&cached, attrs, &v1, &v2)
	got, _ := hs.Produce(context.Background())
	p := got[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints[0]
	var inBuckets uint64
	for _, n := range p.BucketCounts {
		inBuckets += n
	}
	if p.Count != 1 || inBuckets != 1 || p.BucketCounts[5] != 1 {
		t.Errorf("point %+v: want the new request, in (75, 100] ms, and no more", p)
	}
}

// fakeKernel is the kernel's side of the fast path, in memory.
type fakeKernel struct {
	mu       sync.Mutex
	routes   map[string]uint32 // "pid method path" -> id
	series   map[bpf.HistKey]bpf.HistValue
	forgot   []uint32
	readErrs int
}

func (f *fakeKernel) AddRoute(pid uint32, method, path string, id uint32) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[fmt.Sprint(pid, " ", method, " ", path)] = id
	return true, nil
}

func (f *fakeKernel) ReadHistograms(fn func(bpf.HistKey, *bpf.HistValue)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, v := range f.series {
		fn(k, &v)
	}
	return nil
}

func (f *fakeKernel) HistogramsLost() (uint64, error) { return 0, nil }

func (f *fakeKernel) ForgetProcess(pid uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forgot = append(f.forgot, pid)
	for k := range f.series {
		if k.PID == pid {
			delete(f.series, k)
		}
	}
	return nil
}

func (f *fakeKernel) route(key string) (uint32, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.routes[key]
	return id, ok
}

// A delta period where the agent recorded a request and the kernel only
// lengthened a response of an earlier period: the point's min is the
// agent's, not the kernel series' of all time.
func TestKernelDeltaStretchOnly(t *testing.T) {
	hs, h := deltaServerDuration()
	attrs := attribute.NewSet()
	var cached *histPoint
	var v0, v1 bpf.HistValue
	v1.Count, v1.SumNS, v1.MinNS, v1.MaxNS, v1.Buckets[0] = 1, 1e6, 1e6, 1e6, 1
	h.addKernel(&cached, attrs, &v0, &v1)
	hs.Produce(context.Background()) // a new period
	h.recordCached(&cached, attrs, 0.05, trace.SpanContext{}, time.Now())
	v2 := v1
	v2.MaxNS, v2.SumNS = 3e9, 3e9 // the same request, now 3 s long
	h.addKernel(&cached, attrs, &v1, &v2)
	got, _ := hs.Produce(context.Background())
	p := got[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints[0]
	if lo, ok := p.Min.Value(); !ok || lo != 0.05 {
		t.Errorf("min %v (%v), want the agent's 0.05", lo, ok)
	}
}

// With delta temporality a kernel point's min and max are its period's:
// a slow request in one period is not the max of the next, whose own
// extremes the kernel's series does not give unless they moved (then the
// point has none). Cumulative points keep the whole series'.
func TestKernelDeltaExtremes(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(strconv.FormatBool(delta), func(t *testing.T) {
			hs := newHistograms(&histogramOptions{delta: delta, exemplars: exemplarsAlwaysOff})
			inst, _ := httpconv.NewServerRequestDuration(hs)
			h := inst.Inst().(*histogram)
			model := newKernelModel(h.bounds)
			attrs := attribute.NewSet()
			var cached *histPoint
			period := func(ns ...uint64) metricdata.HistogramDataPoint[float64] {
				t.Helper()
				last := model.v
				for _, n := range ns {
					model.record(n)
				}
				h.addKernel(&cached, attrs, &last, &model.v)
				got, _ := hs.Produce(context.Background())
				return got[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints[0]
			}
			extremes := func(p metricdata.HistogramDataPoint[float64]) string {
				s := ""
				for _, e := range []metricdata.Extrema[float64]{p.Min, p.Max} {
					if v, ok := e.Value(); ok {
						s += fmt.Sprintf("%g ", v)
					} else {
						s += "none "
					}
				}
				return s
			}
			checks := []struct {
				ns                []uint64
				delta, cumulative string
			}{
				{[]uint64{9e9, 2e6}, "0.002 9 ", "0.002 9 "},
				{[]uint64{1e6}, "0.001 none ", "0.001 9 "}, // a new min, the old max
				{[]uint64{3e6}, "none none ", "0.001 9 "},  // neither moved
				{[]uint64{12e9}, "none 12 ", "0.001 12 "},
			}
			for i, c := range checks {
				want := c.cumulative
				if delta {
					want = c.delta
				}
				if got := extremes(period(c.ns...)); got != want {
					t.Errorf("period %d: min and max %q, want %q", i+1, got, want)
				}
			}
		})
	}
}

// TestKernelHTTP: the exporter registers the paths of the requests the
// kernel could take once they were answered, and adds what the kernel
// counted under a path's route to the process's own point, exported with
// the requests it recorded itself.
func TestKernelHTTP(t *testing.T) {
	root := t.TempDir()
	defer func(r string) { procRoot = r }(procRoot)
	procRoot = root
	os.MkdirAll(filepath.Join(root, "412"), 0o755)
	os.Symlink(python.Exe, filepath.Join(root, "412", "exe"))

	e, rcv, _ := startOTLP(t, Config{})
	if f := e.Fast(true, true, false, false); f.HTTP || f.Redis || f.Spans || f.RedisSpans {
		t.Errorf("fast path %+v with every span sampled", f)
	}
	if f := e.Fast(true, true, true, true); f.HTTP || f.Redis || !f.Spans || !f.RedisSpans || f.SampleRatio != 1 {
		t.Errorf("fast path %+v with every span sampled, want the kernel's spans only", f)
	}
	t.Setenv("OTEL_TRACES_SAMPLER", "traceidratio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
	logger, _ := testLogger(t)
	e, err := New(context.Background(), Config{TracesOTLP: true, MetricsOTLP: true, Metadata: meta}, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, e) })
	f := e.Fast(true, false, false, false)
	if !f.HTTP || f.Redis || f.Spans || f.RedisSpans || f.SampleRatio != 0.25 || len(f.Bounds) != 14 || e.Fast(false, true, false, false).HTTP || e.Fast(false, true, false, false).Redis {
		t.Fatalf("fast path %+v", f)
	}
	if f := e.Fast(true, true, true, true); !f.HTTP || !f.Redis || !f.Spans || !f.RedisSpans {
		t.Fatalf("fast path %+v, want the Redis drop and the kernel's spans too", f)
	}
	if f := e.Fast(false, true, true, false); f.HTTP || f.Redis || !f.Spans || f.RedisSpans || f.SampleRatio != 0.25 {
		t.Fatalf("fast path %+v, want the kernel's spans only", f)
	}
	k := &fakeKernel{routes: map[string]uint32{}, series: map[bpf.HistKey]bpf.HistValue{}}
	e.SetKernelHTTP(k)

	get := serverReq()
	get.Parent = trace.SpanContext{}
	post, brew, notFound, long := serverReq(), serverReq(), serverReq(), serverReq()
	post.Method, brew.Method, notFound.StatusCode, notFound.Path = "POST", "BREW", 404, "/users/43"
	long.Path, long.Route = "/"+strings.Repeat("x", bpf.MaxRoutePath), "/{id}"
	// Behind a TLS-terminating ingress (X-Forwarded-Proto: https), and
	// over TLS, which the kernel does not measure.
	ingress, secure := serverReq(), serverReq()
	ingress.Path, ingress.Route, ingress.OriginalScheme = "/shop/1", "/shop/{id}", "https"
	secure.Path, secure.Route, secure.TLS = "/secure", "/secure", true
	for _, r := range []*tracer.Request{get, post, brew, notFound, long, ingress, secure, clientReq()} {
		e.Export(r)
	}
	deadline := time.Now().Add(waitFor)
	id, ok := k.route("412 GET /users/42")
	for ; !ok && time.Now().Before(deadline); id, ok = k.route("412 GET /users/42") {
		time.Sleep(10 * time.Millisecond)
	}
	if !ok {
		t.Fatal("path not registered")
	}
	// The worker records requests in order: once the last one's point is
	// out, every one was offered to the kernel.
	rcv.WaitMetric(t, waitFor, hasPoint("http.client.request.duration", "", 1))
	k.mu.Lock()
	if _, ok := k.routes["412 POST /users/42"]; !ok || len(k.routes) != 3 {
		t.Errorf("registered %v: want GET and POST /users/42 and GET /shop/1 only (not a method the conventions do not know, nor a TLS path)", k.routes)
	}
	shop, ok := k.routes["412 GET /shop/1"]
	k.mu.Unlock()
	if !ok {
		t.Fatal("the ingress's path not registered")
	}

	// The kernel counted 5 more requests of the route, 2 ms each.
	k.mu.Lock()
	k.series[bpf.HistKey{PID: 412, Route: id, Status: 200, Method: "GET", Version: "1.1"}] =
		bpf.HistValue{Count: 5, SumNS: 10e6, MinNS: 2e6, MaxNS: 2e6, Buckets: [16]uint64{0, 5}}
	// And 3 of the ingress's: counted under the scheme its path was
	// registered with, https, in the agent's series.
	k.series[bpf.HistKey{PID: 412, Route: shop, Status: 200, Method: "GET", Version: "1.1"}] =
		bpf.HistValue{Count: 3, SumNS: 6e6, MinNS: 2e6, MaxNS: 2e6, Buckets: [16]uint64{0, 3}}
	k.mu.Unlock()
	rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		for _, p := range ps {
			if p.Name == "http.server.request.duration" && p.Attributes["http.route"] == "/shop/{id}" &&
				p.Count == 4 && p.Attributes["url.scheme"] == "https" {
				return true
			}
		}
		return false
	})
	ps := rcv.WaitMetric(t, waitFor, hasPoint("http.server.request.duration", "/users/{id}", 6))
	var p otlptest.MetricPoint
	for _, q := range ps {
		if q.Name == "http.server.request.duration" && q.Attributes["http.route"] == "/users/{id}" &&
			q.Attributes["http.response.status_code"] == int64(200) {
			p = q
		}
	}
	if p.Count != 6 || p.BucketCounts[0] != 1 || p.BucketCounts[1] != 5 || abs(p.Sum-0.001234-0.010) > 1e-9 || p.Resource["service.name"] != "python3" {
		t.Errorf("point %+v: want the agent's request and the kernel's 5", p)
	}

	// The process exits: its kernel state goes.
	os.RemoveAll(filepath.Join(root, "412"))
	for time.Now().Before(deadline) {
		k.mu.Lock()
		n := len(k.forgot)
		k.mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.forgot) != 1 || k.forgot[0] != 412 {
		t.Errorf("forgotten %v, want [412]", k.forgot)
	}
}
