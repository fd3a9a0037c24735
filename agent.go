package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/exporter"
	"github.com/podtracer/podtracer/pod"
	"github.com/podtracer/podtracer/tracer"
)

// procRoot is where the pod's processes are read; the agent shares the
// pod's PID namespace, so its own /proc shows them.
const procRoot = "/proc"

// stopProfile ends a developer's CPU profile (profile_pprof.go, built with
// -tags pprof); it does nothing otherwise.
var stopProfile = func() {}

// loadCapture loads the kernel capture; a test seam.
var loadCapture = bpf.Load

// statsInterval is how often the agent logs its counters when they changed.
var statsInterval = 30 * time.Second

func runAgent(ctx context.Context, logger *slog.Logger, args []string) error {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help", "help":
			usage(os.Stdout)
			return nil
		default:
			usage(os.Stderr)
			return fmt.Errorf("unknown argument %q: podtracer is configured by environment variables", a)
		}
	}
	cfg, err := loadConfig(os.Environ())
	if err != nil {
		// The warnings too (a misspelt variable's nearest name may be
		// the fix of an error): every mistake at once.
		for _, w := range cfg.warnings {
			logger.Warn("configuration: " + w)
		}
		return notTracing(ctx, logger, "its configuration was refused", err)
	}
	agentMaxProcs(os.Getenv("GOMAXPROCS"))
	agentGC(os.Getenv("GOGC"))
	logger = newLogger(cfg)
	slog.SetDefault(logger)
	for _, w := range cfg.warnings {
		logger.Warn("configuration: " + w)
	}
	if cfg.disabled {
		logger.Warn("configuration: OTEL_SDK_DISABLED=true: no span or metric is exported")
	}
	// The OpenTelemetry SDK reports its own troubles here; into the log
	// they go, not to a bare stderr line.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		if !errors.Is(err, context.Canceled) {
			logger.Warn("opentelemetry sdk", "error", err)
		}
	}))
	// And what it logs (a CA file it could not read, say), in the agent's
	// format and at its levels.
	otel.SetLogger(sdkLogger(logger))

	// Exporter first: a collector that is down must not stop the agent,
	// and spans from the first captured request need somewhere to go.
	exp, err := exporter.New(ctx, exporter.Config{
		TracesOTLP:   cfg.tracesOTLP(),
		MetricsOTLP:  cfg.metricsOTLP(),
		Printer:      cfg.printer(),
		QueueSize:    cfg.QueueSize,
		CaptureQuery: cfg.CaptureQuery,
		OptIn:        cfg.optIn,
		KnownMethods: cfg.knownMethods,
		CommandArgs:  cfg.CommandArgs,
		ServiceName:  cfg.ServiceName,
		Metadata:     cfg.Metadata,
	}, logger)
	if err != nil {
		return notTracing(ctx, logger, "its exporter did not start", fmt.Errorf("start exporter: %w", err))
	}
	// Once: the loop below shuts the exporter down before its final
	// stats; on the other ways out, this defer does.
	shutdown := sync.OnceFunc(func() { shutdownExporter(logger, exp) })
	defer shutdown()

	capture, err := loadCapture(bpf.Config{
		Hooks:           cfg.KernelHooks,
		CaptureBytes:    cfg.CaptureBytes,
		RingBufferBytes: cfg.RingBuffer,
		MaxConnections:  cfg.MaxConnections,
		TLS:             cfg.TLS,
		Fast: exp.Fast(cfg.KernelMetrics, cfg.parses(tracer.ProtoRedis), cfg.KernelSpans && cfg.parses(tracer.ProtoHTTP),
			cfg.KernelSpans && cfg.parses(tracer.ProtoRedis) && tracer.RedisShapeSpans(cfg.QueryText, cfg.RedisKeys)),
	}, logger)
	if err != nil {
		return notTracing(ctx, logger, "its kernel programs did not load", fmt.Errorf("load kernel capture (needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE, and a seccomp profile that allows bpf(): "+
			"with the webhook, podtracer.io/privileged=true where the runtime has neither; kernel 5.8+ with BTF): %w", err))
	}
	defer capture.Close()
	// Loading parsed the kernel's BTF (several MB, garbage now): give the
	// pages back at once rather than when the scavenger gets to them. An
	// idle agent then holds 23 MB instead of 28.
	debug.FreeOSMemory()
	if capture.FastPath() {
		exp.SetKernelHTTP(capture)
		logger.Info("kernel HTTP metrics on: unsampled HTTP/1 requests of known methods and paths are measured in the kernel")
	}
	var heads tracer.HeadRegistry
	if capture.KernelSpans() {
		logger.Info("kernel HTTP spans on: HTTP/1 requests picked for a span whose heads the agent has are measured in the kernel")
	}
	if capture.RedisSpans() {
		logger.Info("kernel Redis spans on: server-side Redis commands picked for a span whose shapes the agent has are measured in the kernel")
	}
	if capture.KernelSpans() || capture.RedisSpans() {
		heads = capture
	}
	if capture.RedisDrop() {
		logger.Info("kernel Redis sampling on: server-side Redis commands not picked for a span are dropped in the kernel")
	}

	batcher := exp.NewBatcher()
	registry := pod.NewRegistry(procRoot, pod.Selection{OpenPorts: cfg.ports, Executable: cfg.executable}, logger)
	tr := tracer.New(tracer.Config{
		RouteHeuristic: cfg.RouteHeuristic,
		MaxConnections: cfg.MaxConnections,
		Protocols:      cfg.protocols,
		QueryText:      cfg.QueryText,
		RedisKeys:      cfg.RedisKeys,
		Heads:          heads,
		Own:            exp.OwnConnection,
	},
		registry, capture.WallTime, batcher.Add)
	// Requests reach the exporter once per poll of the ring buffer, not one
	// by one: its worker wakes once per batch.
	capture.Drained = batcher.Flush

	if pod.NodePIDNamespace(procRoot) && (cfg.Metadata.PodName != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != "") {
		logger.Warn("the agent is in the node's PID namespace (hostPID: true): it traces every process of the node, " +
			"and gives them this pod's k8s.* attributes; use shareProcessNamespace: true instead")
	}
	go pod.Watch(ctx, procRoot, 10*time.Second, logger)
	var tlsr *tlsReader
	if cfg.TLS && capture.Hooks() == bpf.HooksSocket {
		selected := func(pid int, name string, fresh bool) bool {
			if fresh {
				return registry.Recheck(uint32(pid), name) != nil
			}
			return registry.Lookup(uint32(pid), name) != nil
		}
		tlsr = newTLSReader(capture, procRoot, selected, logger)
		go tlsr.run(ctx)
	} else if cfg.TLS {
		logger.Info("TLS connections are not read: that needs the socket hooks (Linux 6.3+)")
	}
	go reportStats(ctx, logger, capture, tr, exp)
	var last exporter.SelfCounts
	err = exp.ReportSelf(func() exporter.SelfCounts {
		ks, _ := capture.Stats() // what it could read: the rest stays as it was
		ts := tr.Stats()
		// Counters only grow: one that could not be read (a program's
		// run counts, a map) is not a reset.
		last = exporter.SelfCounts{
			KernelEventsLost: max(last.KernelEventsLost, ks.Lost), KernelRunsSkipped: max(last.KernelRunsSkipped, ks.RunsSkipped),
			KernelRequestsLost: max(last.KernelRequestsLost, ks.FastLost), CallsUntracked: max(last.CallsUntracked, ks.CallsUntracked),
			TLSPlaintextLost: max(last.TLSPlaintextLost, ks.TLSLost), ConnectionsUntracked: ts.ConnsUntracked,
			ParserFailures: ts.ParserFailures, HTTP2Lost: ts.HTTP2Lost,
		}
		return last
	})
	if err != nil {
		logger.Warn("the agent's own metrics are off", "error", err)
	}
	go func() {
		<-ctx.Done()
		drainNeighbours(capture, cfg.ShutdownWait, logger)
		capture.Stop() // Read drains the ring buffer, then ends
	}()

	protocols := cfg.protocols
	if len(protocols) == 0 {
		protocols = tracer.Protocols()
	}
	announceStarted(ctx, logger, cfg.Metadata.PodUID, "tracing")
	logger.Info("podtracer agent running", "pid", os.Getpid(), "protocols", strings.Join(protocols, ","), "selection_ports", cfg.ports.String(),
		"selection_executable", cfg.ExecutableName, "traces_otlp", cfg.tracesOTLP(), "metrics_otlp", cfg.metricsOTLP())
	var ev bpf.Event
	for {
		if err := capture.Read(&ev); err != nil {
			if errors.Is(err, bpf.ErrClosed) {
				logger.Info("shutting down: flushing spans and metrics")
				// The kernel counters first (Close frees them), the
				// exporter's after its flush: the line is the final word.
				// The capture closes after the exporter: its final export
				// reads the kernel's histograms.
				ks, _ := capture.Stats()
				batcher.Flush()
				shutdown()
				capture.Close()
				logCounters(logger, "final stats", ks, tr, exp)
				stopProfile()
				return nil
			}
			// The exporter's final export reads the kernel's histograms:
			// it shuts down before the deferred capture.Close.
			batcher.Flush()
			shutdown()
			return err
		}
		switch {
		case ev.Type == bpf.EventExec:
			// Another program: nothing known of the process holds (a
			// wrapper script that exec's the program under its own
			// name would otherwise keep the interpreter's).
			registry.Forget(ev.PID)
			if tlsr != nil {
				tlsr.sawExec(int(ev.PID), ev.CommString())
			}
			continue // no connection's
		case ev.Type == bpf.EventTLS && tlsr != nil:
			tlsr.sawHandshake(int(ev.PID))
		}
		tr.Handle(&ev)
	}
}

// notTracing is the agent's way out when it cannot start: err, outside a
// pod. In a pod, a sidecar that exits crash-loops, which keeps its pod
// from being ready, and a native sidecar's keeps the application from
// starting at all: the neighbours would stop serving for want of
// telemetry. There the agent says why in its log (again every
// notTracingRepeat, so that a look at it finds the reason), tells
// `podtracer wait` that it does not trace (what, not why: the reason
// may quote a secret variable's value, and the socket is open to the
// whole pod), and waits for the pod to end.
func notTracing(ctx context.Context, logger *slog.Logger, what string, err error) error {
	if !inPod() {
		return err
	}
	announceStarted(ctx, logger, os.Getenv("POD_UID"), "not tracing: "+what+" (the podtracer container's log says why)")
	for {
		logger.Error("nothing is traced: the agent waits for SIGTERM", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(notTracingRepeat):
		}
	}
}

var notTracingRepeat = 5 * time.Minute

// inPod tells whether the agent runs as a pod's sidecar: in Kubernetes,
// with the downward API's pod variables (which every shipped manifest
// sets), not merely a program started by hand in some pod.
func inPod() bool {
	return os.Getenv("KUBERNETES_SERVICE_HOST") != "" && (os.Getenv("POD_UID") != "" || os.Getenv("POD_NAME") != "")
}

// drainQuiet is how long the kernel may see nothing of the neighbours
// before the agent, asked to stop, takes them as done.
var drainQuiet = time.Second

// drainNeighbours keeps the capture running after SIGTERM while the
// neighbours still talk, for at most wait: Kubernetes sends SIGTERM to an
// ordinary sidecar at the same time as to the pod's other containers, and
// a server goes on answering while it drains (a preStop sleep while the
// endpoints change, the requests in flight), which is what its users see
// of a rollout. It returns when the kernel has seen nothing of them (no
// event, no request it measured) for drainQuiet, when wait is over, or at
// once when no neighbour is left (a native sidecar's SIGTERM).
func drainNeighbours(capture *bpf.Capture, wait time.Duration, logger *slog.Logger) {
	if wait <= 0 {
		return
	}
	if pod.Alone(procRoot) {
		// A native sidecar's SIGTERM comes when the pod's containers
		// have ended, with what is left of its grace period for the
		// flush.
		logger.Info("stopping: no neighbour left to drain")
		return
	}
	activity := func() uint64 {
		s, _ := capture.Stats()
		return s.Events + s.FastRequests + s.RedisDropped
	}
	logger.Info("stopping: tracing the neighbours until they are quiet", "at_most", wait)
	start := time.Now()
	last, quiet := activity(), start
	tick := time.NewTicker(drainQuiet / 5)
	defer tick.Stop()
	for now := range tick.C {
		if n := activity(); n != last {
			last, quiet = n, now
		}
		if now.Sub(quiet) >= drainQuiet {
			logger.Info("neighbours quiet", "after", now.Sub(start).Round(time.Millisecond))
			return
		}
		if now.Sub(start) >= wait {
			logger.Info("neighbours still talking: stopping anyway (PODTRACER_SHUTDOWN_WAIT)", "after", wait)
			return
		}
	}
}

// sdkLogger is the OpenTelemetry SDK's logger, writing to the agent's.
// The SDK logs by logr verbosity (errors; V(1) warnings; V(4) information;
// V(8) debugging), which logr.FromSlogHandler turns into levels below
// Info: its warnings would never show at the default level. sdkLevels
// puts them back.
func sdkLogger(logger *slog.Logger) logr.Logger {
	return logr.FromSlogHandler(sdkLevels{logger.With("source", "opentelemetry sdk").Handler()})
}

// sdkLevels is a handler that maps logr verbosities, as slog levels, to
// the agent's: V(1)-V(3) Warn, V(4) and beyond Debug.
type sdkLevels struct{ slog.Handler }

func sdkLevel(l slog.Level) slog.Level {
	switch {
	case l >= slog.LevelInfo:
		return l
	case l > slog.LevelInfo-4:
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

func (h sdkLevels) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, sdkLevel(l))
}

func (h sdkLevels) Handle(ctx context.Context, r slog.Record) error {
	r.Level = sdkLevel(r.Level)
	return h.Handler.Handle(ctx, r)
}

func (h sdkLevels) WithAttrs(attrs []slog.Attr) slog.Handler {
	return sdkLevels{h.Handler.WithAttrs(attrs)}
}

func (h sdkLevels) WithGroup(name string) slog.Handler { return sdkLevels{h.Handler.WithGroup(name)} }

// agentMaxProcs gives the agent one P unless GOMAXPROCS (its value given)
// says otherwise: the agent is one pipeline (capture, tracer, exporter,
// gRPC), and on one P its hand-offs stay on one thread instead of waking
// another CPU, with no spinning threads and smaller per-P caches.
// Measured: 0.4-0.8 µs less agent CPU per request and 4 MB less memory,
// no loss (BENCHMARKS.md).
func agentMaxProcs(env string) {
	if env == "" {
		runtime.GOMAXPROCS(1)
	}
}

// agentGC lets the heap grow to three times what is live before a
// collection (GOGC=200) unless GOGC (its value given) says otherwise. The
// agent's live heap is small (a few MB of queued requests and spans) and
// its garbage is one request after another, so the default of 100 ran a
// collection every few milliseconds at tens of thousands of requests a
// second. Measured: 0.3-0.5 µs less agent CPU per request, peak RSS 35 MB
// instead of 31 (GOGC=400 saved 0.6 µs but peaked at 42 MB, over the
// 40 MB budget; BENCHMARKS.md).
func agentGC(env string) {
	if env == "" {
		debug.SetGCPercent(agentGCPercent)
	}
}

const agentGCPercent = 200

func newLogger(cfg config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(logOutput, opts))
	}
	return slog.New(slog.NewTextHandler(logOutput, opts))
}

// logOutput is where the agent logs; a test seam.
var logOutput io.Writer = os.Stderr

// reportStats logs the counters when they change, and warns about loss.
func reportStats(ctx context.Context, logger *slog.Logger, capture *bpf.Capture, tr *tracer.Tracer, exp *exporter.Exporter) {
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	var last bpf.Stats
	var lastRequests, lastFailures, lastMisses uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ks, err := capture.Stats()
		if err != nil {
			continue
		}
		ts := tr.Stats()
		if ks.Lost > last.Lost {
			logger.Warn("kernel events lost: ring buffer full (raise PODTRACER_RING_BUFFER_BYTES)", "lost", ks.Lost-last.Lost, "lost_total", ks.Lost)
		}
		if ts.HeadMisses > lastMisses {
			logger.Warn("requests lost: the kernel stood for request heads the agent did not have (please report this)", "lost", ts.HeadMisses-lastMisses, "lost_total", ts.HeadMisses)
		}
		if ts.ParserFailures > lastFailures {
			logger.Error("a protocol parser failed; its connection is no longer traced, the others are (please report this with the failure)",
				"connections_given_up", ts.ParserFailures-lastFailures, "total", ts.ParserFailures, "failure", tr.LastFailure())
		}
		if ks != last || ts.Requests != lastRequests {
			logStats(logger, capture, tr, exp, "stats")
		}
		last, lastRequests, lastFailures, lastMisses = ks, ts.Requests, ts.ParserFailures, ts.HeadMisses
	}
}

// shutdownExporter flushes spans and metrics, waiting at most 10 seconds
// for a slow collector.
func shutdownExporter(logger *slog.Logger, exp *exporter.Exporter) {
	// Ten seconds to flush; two when the collector failed the last
	// exports, so that a collector that is down does not hold every pod's
	// termination ten seconds. The exporter keeps the deadline, a metric
	// export under way included (TestCollectorDown, TestCollectorHangs);
	// an agent measured with a refusing collector once ended 4.3 s after
	// SIGTERM, not 10, and once 1.5 s.
	wait := 10 * time.Second
	if exp.Failing() {
		wait = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := exp.Shutdown(ctx); err != nil {
		logger.Warn("flush on shutdown", "error", err)
	}
}

// logStats logs every counter on one line.
func logStats(logger *slog.Logger, capture *bpf.Capture, tr *tracer.Tracer, exp *exporter.Exporter, msg string) {
	ks, _ := capture.Stats()
	logCounters(logger, msg, ks, tr, exp)
}

// logCounters logs the kernel's counters ks and the agent's; the benchmark
// reads the final line.
func logCounters(logger *slog.Logger, msg string, ks bpf.Stats, tr *tracer.Tracer, exp *exporter.Exporter) {
	ts, es := tr.Stats(), exp.Stats()
	logger.Info(msg, "kernel_events", ks.Events, "kernel_lost", ks.Lost, "kernel_runs_skipped", ks.RunsSkipped, "calls_untracked", ks.CallsUntracked,
		"kernel_requests", ks.FastRequests, "kernel_requests_lost", ks.FastLost, "kernel_redis_dropped", ks.RedisDropped,
		"kernel_spans", ks.HTTPSpans, "kernel_redis_spans", ks.RedisSpans, "kernel_http2_quiet", ks.H2Quiet, "kernel_tls_records", ks.TLSRecords, "tls_plaintext_lost", ks.TLSLost, "kernel_records", ts.KernelRecords, "kernel_heads", ts.KernelHeads, "kernel_heads_missed", ts.HeadMisses, "kernel_heads_mismatched", ts.HeadMismatches, "requests", ts.Requests, "connections", ts.Connections, "connections_untracked", ts.ConnsUntracked, "parser_failures", ts.ParserFailures, "http2_lost", ts.HTTP2Lost,
		"spans_exported", es.ExportedSpans, "requests_dropped", es.DroppedRequests, "spans_dropped", es.DroppedSpans,
		"spans_failed", es.FailedSpans)
}
