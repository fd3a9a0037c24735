package exporter

import (
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/pod"
	"github.com/podtracer/podtracer/tracer"
)

// The kernel's share of the HTTP server metrics (bpf/fast.go): when most
// requests need no span, the kernel measures the commonest HTTP/1
// requests itself, and the worker adds its histograms' growth to the
// processes' own, as if the requests had come one by one. The kernel only
// takes paths the agent registered: a path is registered when user space
// has seen it answered with success or a redirect, so its route is known
// real, and each route gets an id the kernel counts under.

// KernelHTTP is the kernel's side of it: bpf.Capture.
type KernelHTTP interface {
	AddRoute(pid uint32, method, path string, id uint32) (bool, error)
	ReadHistograms(fn func(bpf.HistKey, *bpf.HistValue)) error
	HistogramsLost() (uint64, error)
	ForgetProcess(pid uint32) error
}

// Bounds of the registration, so that paths full of ids (/users/42) do
// not fill the kernel's maps or the agent's memory: beyond them a path
// stays user space's.
const (
	maxKernelPaths  = 1024 // per process
	maxKernelRoutes = 256  // ids per process
)

// kernelDrainInterval is how often the worker adds the kernel's counts:
// the delay they may add to a metric export.
var kernelDrainInterval = time.Second

// Fast is what the kernel does itself given the exporter's sampler:
//   - when spans are sampled (a ratio below 1, or none) and kernel says it
//     may: the HTTP/1 fast path's histograms if metrics go somewhere, and
//     the drop of the server-side Redis commands not picked for a span if
//     redis (the agent parses Redis) says so;
//   - when spans go somewhere and spans says it may: the kernel's spans,
//     records of the HTTP/1 exchanges picked for a span whose request
//     heads the agent has; and when redisSpans says so too, of the
//     server-side Redis commands whose shapes it has.
func (e *Exporter) Fast(kernel, redis, spans, redisSpans bool) bpf.Fast {
	var f bpf.Fast
	if len(e.sinks) > 0 && !e.sampler.never {
		f.SampleRatio, f.Spans, f.RedisSpans = float64(e.sampler.bound)/(1<<63), spans, redisSpans
		if e.sampler.always {
			f.SampleRatio = 1
		}
	}
	if kernel && f.SampleRatio < 1 {
		f.Redis = redis
		if e.metrics != nil {
			f.HTTP, f.Bounds = true, serverDurationBounds()
		}
	}
	return f
}

// serverDurationBounds are http.server.request.duration's buckets, as
// the semconv constructor gives the agent's histogram.
func serverDurationBounds() []float64 {
	hs := newHistograms(&histogramOptions{})
	srv, _ := httpconv.NewServerRequestDuration(hs)
	return srv.Inst().(*histogram).bounds
}

// SetKernelHTTP hands the exporter the kernel's histograms, once, before
// requests flow.
func (e *Exporter) SetKernelHTTP(k KernelHTTP) {
	e.kernel.Store(&kernelHTTP{e: e, k: k, procs: make(map[uint32]*kernelProc), last: make(map[bpf.HistKey]bpf.HistValue), logger: e.logger})
}

// kernelHTTP is the worker's bookkeeping of the fast path.
type kernelHTTP struct {
	e      *Exporter
	k      KernelHTTP
	procs  map[uint32]*kernelProc // by pid in the pod
	last   map[bpf.HistKey]bpf.HistValue
	logger *slog.Logger
	failed bool // a kernel map call failed: logged once
	// full: the kernel lost requests, its histogram map being full (its
	// series are per process, route, method, status and version): no new
	// path is registered, so new series stay with the agent.
	full bool
}

// kernelProc is what the kernel counts of one process.
type kernelProc struct {
	proc   *pod.Process
	ids    map[kernelRoute]uint32 // route -> id
	routes []kernelRoute          // id -> route
	paths  map[kernelPath]struct{}
}

type kernelPath struct{ method, path string }

// kernelRoute is what a route id stands for: the route, and the scheme
// of the request whose path was registered. The kernel does not read a
// proxy's X-Forwarded-Proto, so a path's requests are counted under the
// scheme its first said (behind a TLS-terminating ingress, https on every
// one).
type kernelRoute struct {
	route string
	https bool
}

// register offers r's path to the kernel, when the kernel could take its
// requests: a server's HTTP/1 request of a method the conventions know,
// answered with success or a redirect (so its route is real, see
// routeOf), in plaintext (the kernel measures no TLS connection's
// requests: a path first seen over TLS would label plain ones https).
func (k *kernelHTTP) register(r *tracer.Request) {
	if r.Role != tracer.RoleServer || r.Process == nil || r.TLS || r.StatusCode < 200 || r.StatusCode >= 400 ||
		!k.e.cfg.knownMethod(r.Method) || !bpf.FastMethod(r.Method) || (r.ProtocolVersion != "1.1" && r.ProtocolVersion != "1.0") ||
		len(r.Path) > bpf.MaxRoutePath || !strings.HasPrefix(r.Path, "/") {
		return
	}
	pid := uint32(r.Process.PID)
	kp := k.procs[pid]
	if kp != nil && procKeyOf(kp.proc) != procKeyOf(r.Process) {
		// Another process has the pid now: what the kernel counted is the
		// one before's.
		k.read()
		k.remove(pid)
		kp = nil
	}
	if kp == nil {
		kp = &kernelProc{proc: r.Process, ids: make(map[kernelRoute]uint32), paths: make(map[kernelPath]struct{})}
		k.procs[pid] = kp
	}
	pk := kernelPath{r.Method, r.Path}
	if _, ok := kp.paths[pk]; ok || len(kp.paths) >= maxKernelPaths || k.full {
		return
	}
	route := kernelRoute{r.Route, originalHTTPS(r)}
	id, ok := kp.ids[route]
	if !ok {
		if len(kp.routes) >= maxKernelRoutes {
			return
		}
		id = uint32(len(kp.routes))
		kp.ids[route] = id
		kp.routes = append(kp.routes, route)
	}
	kp.paths[pk] = struct{}{}
	if _, err := k.k.AddRoute(pid, r.Method, r.Path, id); err != nil {
		k.fail(err)
	}
}

// drain adds what the kernel counted since the last drain to the
// processes' server histograms, and forgets the processes that exited.
func (k *kernelHTTP) drain() {
	k.read()
	if lost, err := k.k.HistogramsLost(); err == nil && lost > 0 && !k.full {
		k.full = true
		k.logger.Warn("kernel HTTP histograms full: requests of new series were not counted; no more paths go to the kernel",
			"lost", lost)
	}
	for pid, kp := range k.procs {
		if !pod.Running(procRoot, kp.proc) {
			k.remove(pid)
		}
	}
}

// read adds what the kernel counted since the last read.
func (k *kernelHTTP) read() {
	err := k.k.ReadHistograms(func(key bpf.HistKey, v *bpf.HistValue) {
		last := k.last[key]
		if last == *v {
			return
		}
		k.last[key] = *v
		kp := k.procs[key.PID]
		if kp == nil || int(key.Route) >= len(kp.routes) {
			return // registered by an agent before this one
		}
		s := k.e.process(kp.proc)
		if s.mp == nil {
			return
		}
		route := kp.routes[key.Route]
		r := tracer.Request{Role: tracer.RoleServer, Method: key.Method, StatusCode: key.Status,
			Route: route.route, TLS: route.https, ProtocolVersion: key.Version}
		ser := s.series(&r, "", 0)
		s.server.addKernel(ser.point, ser.attrs, &last, v)
	})
	if err != nil {
		k.fail(err)
	}
}

// remove drops a process's registrations, here and in the kernel, with
// what the kernel counted of it (read first).
func (k *kernelHTTP) remove(pid uint32) {
	delete(k.procs, pid)
	for key := range k.last {
		if key.PID == pid {
			delete(k.last, key)
		}
	}
	if err := k.k.ForgetProcess(pid); err != nil {
		k.fail(err)
	}
}

func (k *kernelHTTP) fail(err error) {
	if !k.failed {
		k.failed = true
		k.logger.Warn("kernel HTTP metrics", "error", err)
	}
}

// procRoot is where the exporter looks for the processes the kernel
// counts for (pod.Running); a test seam.
var procRoot = "/proc"

// addKernel adds the growth of a kernel series, from last to now, to the
// point of attrs, which *cached keeps. A response written in several
// sends moves its count between buckets as it goes on (fast_extend in
// capture.c), so a bucket may shrink; with delta temporality the count it
// loses may be in a period already exported, and then the move is not
// made. Min and max are the series' over the kernel's whole count, which
// is the point's with cumulative temporality. A delta point knows them
// only when they moved in its period; otherwise they lie in an earlier
// one, the period's are unknown, and the point has none (both are
// optional in OTLP): a stale extreme would outlive its period forever.
func (h *histogram) addKernel(cached **histPoint, attrs attribute.Set, last, now *bpf.HistValue) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := *cached
	if p == nil || p.gen != h.gen {
		p = h.point(attrs)
		*cached = p
	}
	n := min(len(p.counts), len(now.Buckets))
	var d [len(bpf.HistValue{}.Buckets)]int64
	for i := 0; i < n; i++ {
		d[i] = int64(now.Buckets[i] - last.Buckets[i])
	}
	// A move goes up (a response only grows longer): a count a bucket
	// cannot give back stays there, and the bucket above that received it
	// does not get it.
	for i := 0; i < n; i++ {
		if d[i] >= 0 || uint64(-d[i]) <= p.counts[i] {
			continue
		}
		excess := -d[i] - int64(p.counts[i])
		d[i] = -int64(p.counts[i])
		for j := i + 1; j < n && excess > 0; j++ {
			t := min(max(d[j], 0), excess)
			d[j] -= t
			excess -= t
		}
	}
	for i := 0; i < n; i++ {
		p.counts[i] = uint64(int64(p.counts[i]) + d[i])
	}
	count := now.Count - last.Count
	if count > 0 || now.MaxNS != last.MaxNS {
		lo, hi := float64(now.MinNS)/1e9, float64(now.MaxNS)/1e9
		fresh := last.Count == 0
		minMoved := !h.opts.delta || fresh || now.MinNS < last.MinNS
		maxMoved := !h.opts.delta || fresh || now.MaxNS > last.MaxNS
		if minMoved && (p.count == 0 || lo < p.min) {
			p.min = lo
		}
		if maxMoved && (p.count == 0 || hi > p.max) {
			p.max = hi
		}
		if count > 0 {
			p.noMin = p.noMin || !minMoved
			p.noMax = p.noMax || !maxMoved
		}
	}
	p.count += count
	p.sum += float64(int64(now.SumNS-last.SumNS)) / 1e9
}
