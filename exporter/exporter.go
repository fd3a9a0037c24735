// Package exporter turns finished requests from the tracer into OpenTelemetry
// spans and RED metrics named by the semantic conventions, and sends them over
// OTLP/gRPC or prints them.
//
// Every neighbour process is its own OpenTelemetry resource (service.name,
// process.*, k8s.*), so it gets its own MeterProvider and its own resource
// on spans; all of them share one span pipeline per destination and one
// metric exporter, because one gRPC connection per process would cost the
// collector and the pod far more than the providers themselves.
//
// Spans do not go through the SDK's TracerProvider: a captured request is
// already finished, so the worker samples it as OTEL_TRACES_SAMPLER says and
// fills a compact, pooled record, and each destination batches records and
// converts them to OTLP protobuf itself, sending with the SDK's OTLP/gRPC
// client. That costs a fraction of an SDK span (no span lock, snapshot,
// attribute deduplication or per-span conversion garbage). Metrics do use
// the SDK.
//
// The caller is the capture path, so nothing here may block it or let memory
// grow with a slow collector: Export only puts the request on a bounded
// queue, one worker goroutine turns requests into spans and metric points,
// and the span pipeline is bounded too. Whatever does not fit is dropped,
// counted in Stats and logged at most every ten seconds.
package exporter

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"

	"github.com/podtracer/podtracer/pod"
	"github.com/podtracer/podtracer/tracer"
)

// Printer formats, the values of Config.Printer.
const (
	PrinterText = "text"
	PrinterJSON = "json"
	PrinterOff  = "off"
)

// DefaultQueueSize is the request queue's length when Config.QueueSize is 0:
// about a tenth of a second of a busy pod's requests, enough to ride out a
// worker hiccup (GC, a burst) without holding much memory (a request is a few
// hundred bytes).
const DefaultQueueSize = 8192

// Config is what the exporter needs from the agent's configuration. The OTLP
// exporters read OTEL_EXPORTER_OTLP_* (endpoint, headers, insecure, timeout,
// compression, certificates) themselves, exactly as every OpenTelemetry SDK
// does, so none of that is repeated here.
type Config struct {
	// TracesOTLP and MetricsOTLP say whether an OTLP endpoint is configured
	// for the signal (OTEL_EXPORTER_OTLP_ENDPOINT or the _TRACES_ / _METRICS_
	// variant). Without one the signal is not sent anywhere: the exporters'
	// default of localhost:4317 would only fill the log with errors.
	TracesOTLP, MetricsOTLP bool

	// Printer is "text", "json" or "off"; "" means text when no traces
	// endpoint is set, else off, so that a first run without a collector
	// shows something.
	Printer string
	// PrinterOut is where the printer writes; nil means os.Stdout.
	PrinterOut io.Writer

	// QueueSize bounds the requests waiting to become spans; beyond it
	// Export drops and counts. 0 means DefaultQueueSize.
	QueueSize int

	// CaptureQuery puts url.query (and the query in url.full) on spans. Off
	// by default because query strings often carry tokens and other secrets.
	CaptureQuery bool
	// OptIn puts on spans and metric points the attributes the semantic
	// conventions leave out unless a user asks for them ("Opt-In").
	OptIn OptIn
	// KnownMethods, when not nil, are the HTTP methods spans and metrics
	// name instead of the conventions' (ParseKnownMethods); others are
	// _OTHER.
	KnownMethods map[string]bool

	// attrLimited says the span attributes' string values are cut to
	// attrLimit characters (envSettings.attrLimit, set by New).
	attrLimited bool
	attrLimit   int
	// CommandArgs puts process.command_args on each process's resource.
	// Off by default: arguments often carry secrets, and the semantic
	// conventions say not to collect them by default without sanitizing.
	CommandArgs bool

	// ServiceName overrides service.name for every process (the agent passes
	// OTEL_SERVICE_NAME). "" means each process is named after its
	// executable, unless OTEL_RESOURCE_ATTRIBUTES names the service.
	ServiceName string

	// Metadata is the pod as the downward API describes it.
	Metadata pod.Metadata
}

// Stats are the exporter's counters since New, which only grow, and the
// number of live processes.
type Stats struct {
	// Requests is how many requests were passed to Export.
	Requests uint64
	// DroppedRequests were lost before becoming spans or metric points
	// because the request queue was full (or Export came after Shutdown).
	DroppedRequests uint64
	// DroppedSpans were sampled spans lost because the span queue was full,
	// which is what a slow or unreachable collector causes. Their metric
	// points were recorded.
	DroppedSpans uint64
	// ExportedSpans were accepted by a span destination. With both OTLP and
	// the printer on, each destination counts its own.
	ExportedSpans uint64
	// FailedSpans were in span exports that failed (after the OTLP
	// exporter's own retries); they are lost.
	FailedSpans uint64
	// FailedMetricExports counts metric exports that failed.
	FailedMetricExports uint64
	// Processes is the number of processes with live providers now.
	Processes int
}

// Test seams: package variables so that tests can shrink time and sizes.
var (
	// idleTimeout is how long a process may send nothing before its providers
	// are flushed and released, so memory follows the live processes and
	// not every process the pod ever ran.
	idleTimeout = 10 * time.Minute
	// sweepInterval is how often idle processes are looked for.
	sweepInterval = time.Minute
	// maxProcesses bounds the live providers; beyond it the least recently
	// used process is released early.
	maxProcesses = 256
	// reportInterval is how often drops and export failures are logged, at
	// most.
	reportInterval = 10 * time.Second
	// printerBatchTimeout replaces the 5 s batch delay for the printer:
	// someone watching stdout wants to see the request they just made.
	printerBatchTimeout = 100 * time.Millisecond
	// releaseTimeout bounds the final metric flush of a released process.
	releaseTimeout = 10 * time.Second
)

// Exporter turns requests into spans and metric points. Its methods are safe
// for concurrent use.
type Exporter struct {
	cfg    Config
	own    *ownConns // the OTLP connections' local ends (OwnConnection)
	host   string    // os.Hostname, for service.instance.id
	logger *slog.Logger

	// queue carries requests in batches (see Batcher), counted in queued
	// and bounded by Config.QueueSize.
	queue  chan []*tracer.Request
	queued atomic.Int64
	spare  slicePool[*tracer.Request]
	stop   chan struct{} // closed by Shutdown: the worker drains and exits
	done   chan struct{} // closed by the worker when it has exited

	started      bool // the worker runs; false only in benchmarks
	closed       atomic.Bool
	shutdownOnce sync.Once
	shutdownErr  error

	// Set up once in New, read-only afterwards.
	envRes  *resource.Resource                      // OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, telemetry.sdk.*
	sampler sampler                                 // OTEL_TRACES_SAMPLER
	sinks   []*spanSink                             // span destinations; empty when traces go nowhere
	metrics *metricSink                             // nil when metrics go nowhere
	self    atomic.Pointer[sdkmetric.MeterProvider] // the agent's own metrics (ReportSelf)
	// histOpts are the settings of every process's histograms.
	histOpts *histogramOptions
	// kernel is the kernel's share of the HTTP metrics, once set
	// (SetKernelHTTP); the worker owns what it points to.
	kernel atomic.Pointer[kernelHTTP]

	// Copies of the test seams, taken at construction so that a test
	// restoring them cannot race with a running exporter.
	idleTimeout, sweepInterval, releaseTimeout time.Duration
	maxProcesses                               int

	// Owned by the worker goroutine.
	procs      map[procKey]*process
	gen        uint64 // sweep generation, the coarse clock of process idleness
	nprocs     atomic.Int64
	releasing  sync.WaitGroup
	releaseSem chan struct{}

	requests        atomic.Uint64
	droppedRequests atomic.Uint64

	rep *reporter
}

// New validates cfg and the standard OpenTelemetry environment variables
// the exporter depends on, reporting every mistake at once, and starts the
// exporter. The OTLP connections are made lazily, so an unreachable
// collector is not an error here.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (*Exporter, error) {
	if logger == nil {
		logger = slog.Default()
	}
	var errs []error
	switch cfg.Printer {
	case "":
		cfg.Printer = PrinterText
		if cfg.TracesOTLP {
			cfg.Printer = PrinterOff
		}
	case PrinterText, PrinterJSON, PrinterOff:
	default:
		errs = append(errs, fmt.Errorf("printer %q: want text, json or off", cfg.Printer))
	}
	if cfg.QueueSize < 0 {
		errs = append(errs, fmt.Errorf("queue size %d: must not be negative", cfg.QueueSize))
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.PrinterOut == nil {
		cfg.PrinterOut = os.Stdout
	}
	std, stdErrs := settingsFromEnv(os.Getenv)
	errs = append(errs, stdErrs...)
	cfg.attrLimited, cfg.attrLimit = std.attrLimit >= 0, std.attrLimit
	smp, batch := std.sampler, std.batch
	// The environment's resource is the same for every process, so it is
	// detected once; per process it is only merged.
	envRes, err := resource.New(ctx, resource.WithTelemetrySDK(), resource.WithFromEnv())
	if err != nil {
		errs = append(errs, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	var dests []destination
	own := newOwnConns()
	if cfg.TracesOTLP {
		// The client reads OTEL_EXPORTER_OTLP_* itself; Start does not
		// connect yet. Its requests are encoded by traceCodec.
		// The client's own request-size check is off: it sized every
		// request by reflection (proto.Size), a sixth of the agent's CPU.
		// traceCodec checks the same limit on the size it computes anyway.
		codec, partial := newTraceCodec(), &partialSuccess{}
		client := otlptracegrpc.NewClient(
			otlptracegrpc.WithDialOption(grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec)), grpc.WithStatsHandler(own), grpc.WithConnectParams(reconnect),
				grpc.WithKeepaliveParams(deadPeer), grpc.WithUnaryInterceptor(partial.intercept)),
			otlptracegrpc.WithMaxRequestSize(0))
		if err := client.Start(ctx); err != nil {
			return nil, fmt.Errorf("otlp trace client: %w", err)
		}
		dests = append(dests, destination{name: otlpSink, exp: &otlpSpans{client: client, codec: codec, partial: partial}})
	}
	if cfg.Printer != PrinterOff {
		dests = append(dests, destination{
			name:  "printer",
			exp:   newPrinter(cfg.PrinterOut, cfg.Printer == PrinterJSON),
			delay: printerBatchTimeout,
		})
	}
	var metricExp sdkmetric.Exporter
	if cfg.MetricsOTLP {
		exp, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithDialOption(grpc.WithStatsHandler(own), grpc.WithConnectParams(reconnect), grpc.WithKeepaliveParams(deadPeer)))
		if err != nil {
			for _, d := range dests {
				_ = d.exp.shutdown(ctx)
			}
			return nil, fmt.Errorf("otlp metric exporter: %w", err)
		}
		metricExp = exp
	}

	e := newExporter(cfg, logger, envRes, smp, batch, dests, metricExp)
	e.own = own
	e.start()
	logger.Info("exporter started",
		"traces_otlp", cfg.TracesOTLP, "metrics_otlp", cfg.MetricsOTLP,
		"printer", cfg.Printer, "queue", cfg.QueueSize, "span_queue", batch.queue)
	return e, nil
}

// reconnect is how the OTLP connections try again a collector that went
// away. gRPC's default waits up to 120 s between attempts: after a
// collector's rollout of a few minutes, exports would resume up to two
// minutes late, and a busy pod's spans would be dropped meanwhile.
var reconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 10 * time.Second},
	MinConnectTimeout: 20 * time.Second,
}

// deadPeer bounds how long an OTLP connection's sent bytes may go
// unacknowledged before the kernel drops the connection: gRPC sets its
// Timeout as the socket's TCP_USER_TIMEOUT. A collector whose node died,
// or a connection still pinned to a collector pod that is gone, answers
// nothing, not even a reset: without the bound, TCP retransmits for about
// 15 minutes before gRPC learns that the connection is dead, and every
// export of those minutes times out (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s)
// and drops its spans. With it, the connection is dropped 20 s into the
// first such export, and gRPC connects again (to the Service's live
// pods). An idle connection finds out at its next export (gRPC's TCP
// keepalive has the system's 2 hours). It bounds the first hop only: a
// proxy (HTTPS_PROXY, a mesh's sidecar) acknowledges for a dead
// collector. A ping (Time) comes only when an export follows 5 minutes
// without a byte from the collector: what a collector's gRPC server
// allows by default (its MinTime). A custom dialer, the other way to set
// the option, would turn off gRPC's HTTPS_PROXY support.
var deadPeer = keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second}

// OwnConnection tells whether peer is the local end of one of the agent's
// own OTLP connections (ownConns): the tracer does not follow a
// neighbour's connection to it, a collector's in the pod.
func (e *Exporter) OwnConnection(peer netip.AddrPort) bool {
	return e.own != nil && e.own.has(peer)
}

// otlpSink is the OTLP span destination's name.
const otlpSink = "otlp"

// destination is a span exporter and how to batch for it.
type destination struct {
	name  string
	exp   spanExporter
	delay time.Duration // overrides batchConfig.delay when set
}

// newExporter assembles an exporter around ready destinations without
// starting the worker, which lets benchmarks drive the worker's code
// directly.
func newExporter(cfg Config, logger *slog.Logger, envRes *resource.Resource, smp sampler, batch batchConfig, dests []destination, metricExp sdkmetric.Exporter) *Exporter {
	host, _ := os.Hostname() // for service.instance.id outside Kubernetes; "" will do
	e := &Exporter{
		cfg:        cfg,
		host:       host,
		logger:     logger,
		queue:      make(chan []*tracer.Request, cfg.QueueSize),
		spare:      newSlicePool[*tracer.Request](),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		envRes:     envRes,
		sampler:    smp,
		procs:      make(map[procKey]*process),
		releaseSem: make(chan struct{}, 4),
		rep:        newReporter(logger, reportInterval),

		idleTimeout:    idleTimeout,
		sweepInterval:  sweepInterval,
		releaseTimeout: releaseTimeout,
		maxProcesses:   maxProcesses,
	}
	for _, d := range dests {
		bc := batch
		if d.delay > 0 {
			bc.delay = d.delay
		}
		e.sinks = append(e.sinks, newSpanSink(d.name, d.exp, bc, e.rep))
	}
	if metricExp != nil {
		e.metrics = &metricSink{Exporter: metricExp, rep: e.rep}
		e.histOpts = histogramOptionsFrom(metricExp)
	}
	return e
}

func (e *Exporter) start() {
	e.started = true
	go e.run()
	e.rep.start(e)
}

// Export hands r to the exporter, which owns it from then on: the caller
// must not change it afterwards. Export never blocks; when the queue is full
// the request is dropped and counted. A Batcher does the same for many
// requests at a time, at less cost per request.
func (e *Exporter) Export(r *tracer.Request) {
	if r == nil {
		e.requests.Add(1)
		e.droppedRequests.Add(1)
		return
	}
	batch := e.spare.get()
	e.enqueue(append(batch, r))
}

// enqueue hands a batch of requests to the worker, dropping and counting
// those beyond the queue size. It never blocks: the channel has room for
// a batch per request the count lets in.
func (e *Exporter) enqueue(batch []*tracer.Request) {
	n := int64(len(batch))
	e.requests.Add(uint64(n))
	if e.closed.Load() {
		e.droppedRequests.Add(uint64(n))
		releaseAllRequests(batch)
		e.spare.put(batch)
		return
	}
	if over := e.queued.Add(n) - int64(e.cfg.QueueSize); over > 0 {
		over = min(over, n)
		e.queued.Add(-over)
		e.droppedRequests.Add(uint64(over))
		releaseAllRequests(batch[n-over:])
		batch = batch[:n-over]
		if len(batch) == 0 {
			e.spare.put(batch)
			return
		}
	}
	e.queue <- batch
}

// releaseAllRequests releases the requests of batch, dropped.
func releaseAllRequests(batch []*tracer.Request) {
	for _, r := range batch {
		r.Release()
	}
}

// Batcher gathers the requests of one goroutine and hands them to the
// exporter together: its worker then wakes once per batch rather than once
// per request. The agent's capture loop flushes it each time it has read
// all the kernel's events. A Batcher is not safe for concurrent use.
type Batcher struct {
	e     *Exporter
	batch []*tracer.Request
}

// maxBatch is where a Batcher flushes without waiting to be told.
const maxBatch = 256

// NewBatcher returns a Batcher for e.
func (e *Exporter) NewBatcher() *Batcher { return &Batcher{e: e} }

// Add takes r, which the exporter owns from then on, like Export.
func (b *Batcher) Add(r *tracer.Request) {
	if r == nil {
		b.e.requests.Add(1)
		b.e.droppedRequests.Add(1)
		return
	}
	if b.batch == nil {
		b.batch = b.e.spare.get()
	}
	if b.batch = append(b.batch, r); len(b.batch) >= maxBatch {
		b.Flush()
	}
}

// Flush hands what was added to the exporter.
func (b *Batcher) Flush() {
	if len(b.batch) > 0 {
		b.e.enqueue(b.batch)
		b.batch = nil
	}
}

// Stats returns the counters.
func (e *Exporter) Stats() Stats {
	s := Stats{
		Requests:        e.requests.Load(),
		DroppedRequests: e.droppedRequests.Load(),
		Processes:       int(e.nprocs.Load()),
	}
	for _, k := range e.sinks {
		s.DroppedSpans += k.dropped.Load()
		s.ExportedSpans += k.exported.Load()
		s.FailedSpans += k.failed.Load()
	}
	if e.metrics != nil {
		s.FailedMetricExports = e.metrics.failed.Load()
	}
	return s
}

// Failing tells whether the collector failed the last OTLP exports: of
// spans, if they go there, and of metrics, if they do. A final flush then
// has little to gain from a long wait. A collector that takes one and
// refuses the other is not failing.
//
// A signal not exported yet says nothing either way: the other one
// decides. Metrics go out once a minute, so a pod that ends in its first
// minute with its collector down had not seen a metric export fail, and
// its flush waited the full ten seconds (one export per process, each
// until OTEL_EXPORTER_OTLP_TIMEOUT, in turn).
func (e *Exporter) Failing() bool {
	r := e.rep
	spans := e.cfg.TracesOTLP && r.spansTried.Load()
	metrics := e.metrics != nil && r.metricsTried.Load()
	return (spans || metrics) && (!spans || r.spansFailing.Load()) && (!metrics || r.metricsFailing.Load())
}

// Shutdown turns the requests still queued into spans, flushes all spans and
// metric points and closes the OTLP connections. It returns when that is done
// or ctx ends, whichever comes first; what was not sent by then is lost. Only
// the first call does anything; later calls return the first one's result.
func (e *Exporter) Shutdown(ctx context.Context) error {
	e.shutdownOnce.Do(func() {
		e.shutdownErr = e.shutdown(ctx)
	})
	return e.shutdownErr
}

func (e *Exporter) shutdown(ctx context.Context) error {
	e.closed.Store(true)
	close(e.stop)
	if !e.started {
		close(e.done)
	}
	// The worker only drains a bounded queue into non-blocking pipelines, so
	// this wait is short even when the collector hangs.
	select {
	case <-e.done:
	case <-ctx.Done():
		_ = e.shutdownSelf(ctx) // its reader would go on reading the agent's counters
		return fmt.Errorf("exporter shutdown: %w", ctx.Err())
	}

	// The worker is gone: the process table is this goroutine's. What the
	// kernel counted since the last drain goes into the final export.
	if k := e.kernel.Load(); k != nil {
		k.drain()
	}
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	// The last spans go out beside the final metric exports, not after
	// them: a metrics endpoint that hangs (another collector, say) would
	// otherwise use up the deadline the spans need.
	wg.Go(func() {
		serrs := e.shutdownSinks(ctx)
		// The agent's own metrics after the spans: their final counts
		// include the last spans' exports.
		if err := e.shutdownSelf(ctx); err != nil {
			serrs = append(serrs, err)
		}
		mu.Lock()
		errs = append(errs, serrs...)
		mu.Unlock()
	})
	// Release every process in parallel: with a hanging collector each final
	// metric flush runs to the deadline, and they should share it.
	for k, p := range e.procs {
		delete(e.procs, k)
		wg.Go(func() {
			if err := p.shutdown(ctx); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	e.nprocs.Store(0)
	waitCtx(ctx, &e.releasing)

	if e.metrics != nil {
		if err := e.metrics.Exporter.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("metric exporter: %w", err))
		}
	}
	e.rep.stop()
	if err := ctx.Err(); err != nil {
		// Errors from the parts were caused by the deadline; one says it.
		return fmt.Errorf("exporter shutdown: %w", err)
	}
	return errors.Join(errs...)
}

// shutdownSelf flushes and ends the agent's own metrics, if reported.
func (e *Exporter) shutdownSelf(ctx context.Context) error {
	if self := e.self.Load(); self != nil {
		if err := self.Shutdown(ctx); err != nil {
			return fmt.Errorf("the agent's own metrics: %w", err)
		}
	}
	return nil
}

func (e *Exporter) shutdownSinks(ctx context.Context) []error {
	var errs []error
	for _, k := range e.sinks {
		if err := k.shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s span exporter: %w", k.name, err))
		}
	}
	return errs
}

// waitCtx waits for wg or ctx, whichever is first.
func waitCtx(ctx context.Context, wg *sync.WaitGroup) {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// run is the worker: the only goroutine that creates span records and
// touches the process table, so neither needs a lock.
func (e *Exporter) run() {
	defer close(e.done)
	sweep := time.NewTicker(e.sweepInterval)
	defer sweep.Stop()
	drain := time.NewTicker(kernelDrainInterval)
	defer drain.Stop()
	for {
		select {
		case batch := <-e.queue:
			e.handleBatch(batch)
		case <-drain.C:
			if k := e.kernel.Load(); k != nil {
				k.drain()
			}
		case <-sweep.C:
			e.gen++
			e.releaseIdle()
		case <-e.stop:
			for {
				select {
				case batch := <-e.queue:
					e.handleBatch(batch)
				default:
					return
				}
			}
		}
	}
}

// handleBatch turns a batch of requests into spans and metric points, and
// offers the spans to the sinks together.
func (e *Exporter) handleBatch(batch []*tracer.Request) {
	for _, r := range batch {
		e.record(r)
		r.Release() // the span record and the metric point have what they need
	}
	e.queued.Add(-int64(len(batch)))
	e.spare.put(batch)
	e.offerSpans()
}

// offerSpans hands the span records made since the last call to the sinks.
func (e *Exporter) offerSpans() {
	for _, k := range e.sinks {
		k.offerPending()
	}
}

// record makes r's span record and metric point.
func (e *Exporter) record(r *tracer.Request) {
	validRequest(r)
	e.process(r.Process).record(r)
	if k := e.kernel.Load(); k != nil && r.Protocol == tracer.ProtoHTTP {
		k.register(r) // after record, which settled its route
	}
}

// handle is handleBatch for one request, outside the queue (tests and
// benchmarks drive the worker's code with it).
func (e *Exporter) handle(r *tracer.Request) {
	e.record(r)
	e.offerSpans()
}

// CheckEnv checks the standard OpenTelemetry variables the exporter reads
// (through getenv: os.Getenv, or the agent's view of its environment) and
// those the SDK's OTLP exporters read themselves, and returns every
// mistake, so that the agent reports them with its own before anything
// starts. (New reads its own settings again, but leaves the OTLP
// exporters' files, certificates and keys, to this one check.)
func CheckEnv(getenv func(string) string) []error {
	_, errs := settingsFromEnv(getenv)
	return append(errs, checkOTLPEnv(getenv)...)
}

// envSettings are what the exporter takes from the standard variables.
type envSettings struct {
	sampler sampler
	batch   batchConfig
	// attrLimit is the longest a span attribute's string value may be, in
	// characters (OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, else
	// OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT); -1: no limit, the default.
	attrLimit int
}

// MaxQueue bounds the queue sizes a setting may ask for: each queue's
// channel is allocated whole at start.
const MaxQueue = 1 << 20

// otlpVariants are a standard OTLP exporter variable's names: for both
// signals, for traces, for metrics.
func otlpVariants(suffix string) []string {
	return []string{"OTEL_EXPORTER_OTLP_" + suffix, "OTEL_EXPORTER_OTLP_TRACES_" + suffix, "OTEL_EXPORTER_OTLP_METRICS_" + suffix}
}

// settingsFromEnv reads the standard variables, with the SDK's defaults.
// The SDK would log a bad value and use its default; the agent refuses to
// start instead, naming every bad value.
func settingsFromEnv(getenv func(string) string) (envSettings, []error) {
	var s envSettings
	var errs []error
	keep := func(err error) {
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			errs = append(errs, joined.Unwrap()...) // one mistake each
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	s.sampler, err = samplerFromEnv(getenv)
	keep(err)
	for _, k := range []string{"OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT"} {
		// The metric SDK reads these itself, untrimmed: " 5000" would be
		// its default, with an error in the log.
		if v := getenv(k); v != strings.TrimSpace(v) {
			keep(fmt.Errorf("%s=%q: want a positive number of milliseconds, without spaces", k, v))
			continue
		}
		_, err := envMillis(getenv, k, 0)
		keep(err)
	}
	s.batch.queue, err = envPositive(getenv, "OTEL_BSP_MAX_QUEUE_SIZE", sdktrace.DefaultMaxQueueSize)
	keep(err)
	if s.batch.queue > MaxQueue {
		keep(fmt.Errorf("OTEL_BSP_MAX_QUEUE_SIZE=%q: want at most %d", getenv("OTEL_BSP_MAX_QUEUE_SIZE"), MaxQueue))
	}
	s.batch.size, err = envPositive(getenv, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", sdktrace.DefaultMaxExportBatchSize)
	keep(err)
	s.batch.delay, err = envMillis(getenv, "OTEL_BSP_SCHEDULE_DELAY", sdktrace.DefaultScheduleDelay)
	keep(err)
	s.batch.timeout, err = envTimeout(getenv, "OTEL_BSP_EXPORT_TIMEOUT", sdktrace.DefaultExportTimeout)
	keep(err)
	s.attrLimit = -1
	for _, k := range []string{"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"} { // the span's wins
		if v := strings.TrimSpace(getenv(k)); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				keep(fmt.Errorf("%s=%q: want a number of characters, 0 or more", k, v))
				continue
			}
			s.attrLimit = n
		}
	}
	switch v := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")); strings.ToLower(v) {
	case "", "cumulative", "delta", "lowmemory":
	default:
		keep(fmt.Errorf("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=%q: want cumulative, delta or lowmemory", v))
	}
	switch v := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION")); strings.ToLower(v) {
	case "", "explicit_bucket_histogram":
	default:
		keep(fmt.Errorf("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=%q: want explicit_bucket_histogram (the agent's duration histograms have the semantic conventions' explicit buckets)", v))
	}
	_, err = exemplarFilterFromEnv(getenv)
	keep(err)
	_, err = cardinalityLimitFromEnv(getenv)
	keep(err)
	for _, k := range otlpVariants("PROTOCOL") {
		if v := strings.TrimSpace(getenv(k)); v != "" && strings.ToLower(v) != "grpc" {
			keep(fmt.Errorf("%s=%q: want grpc (the agent exports OTLP over gRPC only)", k, v))
		}
	}
	return s, errs
}

// checkOTLPEnv checks the standard OTLP exporter variables that the SDK's
// exporters read themselves, and would only complain of in their log
// (or not at all) while exporting nothing, or not as asked.
func checkOTLPEnv(getenv func(string) string) []error {
	var errs []error
	bad := func(k, v, want string) { errs = append(errs, fmt.Errorf("%s=%q: %s", k, v, want)) }
	for _, k := range otlpVariants("INSECURE") {
		// The SDK takes "true" in any case for true and anything else for
		// false: "1" would turn TLS on.
		if v := strings.TrimSpace(getenv(k)); v != "" && !strings.EqualFold(v, "true") && !strings.EqualFold(v, "false") {
			bad(k, v, "want true or false")
		}
	}
	for _, k := range otlpVariants("TIMEOUT") {
		if _, err := envTimeout(getenv, k, 0); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range otlpVariants("COMPRESSION") {
		if v := strings.TrimSpace(getenv(k)); v != "" && v != "gzip" && v != "none" {
			bad(k, v, "want gzip or none")
		}
	}
	// File paths are trimmed, as the SDK trims them (a ConfigMap's block
	// ends in a newline).
	for _, k := range otlpVariants("CERTIFICATE") {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			pem, err := os.ReadFile(v)
			switch {
			case err != nil:
				bad(k, v, err.Error())
			case !x509.NewCertPool().AppendCertsFromPEM(pem):
				bad(k, v, "no PEM certificate in it")
			}
		}
	}
	for _, signal := range []string{"", "TRACES_", "METRICS_"} {
		certKey, keyKey := "OTEL_EXPORTER_OTLP_"+signal+"CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_"+signal+"CLIENT_KEY"
		cert, key := strings.TrimSpace(getenv(certKey)), strings.TrimSpace(getenv(keyKey))
		switch {
		case cert == "" && key == "":
		case cert == "" || key == "":
			errs = append(errs, fmt.Errorf("%s=%q and %s=%q: want both files or neither", certKey, cert, keyKey, key))
		default:
			if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q and %s=%q: %w", certKey, cert, keyKey, key, err))
			}
		}
	}
	return errs
}

// envMillis reads a duration variable the way the SDKs parse them (whole
// positive milliseconds); def is the value when it is unset.
func envMillis(getenv func(string) string, key string, def int64) (time.Duration, error) {
	v := strings.TrimSpace(getenv(key))
	if v == "" {
		return time.Duration(def) * time.Millisecond, nil
	}
	d, err := strconv.ParseInt(v, 10, 64)
	if err != nil || d <= 0 || d > int64(math.MaxInt64/time.Millisecond) {
		return 0, fmt.Errorf("%s=%q: want a positive number of milliseconds", key, v)
	}
	return time.Duration(d) * time.Millisecond, nil
}

// envTimeout reads a timeout in milliseconds, where 0 means no limit (the
// specification's Timeout); def is the value when it is unset.
func envTimeout(getenv func(string) string, key string, def int64) (time.Duration, error) {
	v := strings.TrimSpace(getenv(key))
	if v == "0" {
		return 0, nil
	}
	d, err := envMillis(getenv, key, def)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want a number of milliseconds, 0 for no limit", key, v)
	}
	return d, nil
}

// envPositive reads a count; def is the value when it is unset.
func envPositive(getenv func(string) string, key string, def int) (int, error) {
	s := strings.TrimSpace(getenv(key))
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s=%q: want a positive integer", key, s)
	}
	return n, nil
}
