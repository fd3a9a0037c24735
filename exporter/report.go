package exporter

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// reporter logs drops and export failures at most once per reportInterval.
// A collector that is down makes every batch fail and every queue overflow;
// one line per event would bury the log and cost more than the export. The
// hot path only bumps counters; a ticker compares them with what was last
// logged.
type reporter struct {
	logger   *slog.Logger
	interval time.Duration
	quit     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once

	// spansFailing, metricsFailing: the last OTLP export of spans, of
	// metrics, failed. spansTried, metricsTried: one was tried at all.
	spansFailing, metricsFailing atomic.Bool
	spansTried, metricsTried     atomic.Bool

	mu        sync.Mutex
	spanErr   error // last span export error, with the sink's name
	spanSink  string
	metricErr error // last metric export error

	// Values at the last report, owned by the ticker goroutine, and
	// whether it said an export failed (so that the next says when they
	// work again).
	last                       Stats
	spansFailed, metricsFailed bool
}

func newReporter(logger *slog.Logger, interval time.Duration) *reporter {
	return &reporter{logger: logger, interval: interval, quit: make(chan struct{})}
}

// spansExported and metricsExported note an OTLP export that succeeded.
func (r *reporter) spansExported() {
	r.spansTried.Store(true)
	r.spansFailing.Store(false)
}

func (r *reporter) metricsExported() {
	r.metricsTried.Store(true)
	r.metricsFailing.Store(false)
}

func (r *reporter) spanError(sink string, err error) {
	if sink == otlpSink {
		r.spansTried.Store(true)
		r.spansFailing.Store(true)
	}
	r.mu.Lock()
	r.spanErr, r.spanSink = err, sink
	r.mu.Unlock()
}

// spansRejected notes an export the collector took but for some spans
// (partial success): the reason goes in the log with their count, but
// the collector works.
func (r *reporter) spansRejected(sink string, err error) {
	r.spansExported()
	r.mu.Lock()
	r.spanErr, r.spanSink = err, sink
	r.mu.Unlock()
}

func (r *reporter) metricError(err error) {
	r.metricsTried.Store(true)
	r.metricsFailing.Store(true)
	r.mu.Lock()
	r.metricErr = err
	r.mu.Unlock()
}

func (r *reporter) start(e *Exporter) {
	r.wg.Go(func() {
		t := time.NewTicker(r.interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.report(e.Stats())
			case <-r.quit:
				// A last report, so drops just before exit are not silent.
				r.report(e.Stats())
				return
			}
		}
	})
}

func (r *reporter) stop() {
	r.once.Do(func() { close(r.quit) })
	r.wg.Wait()
}

func (r *reporter) report(s Stats) {
	r.mu.Lock()
	spanErr, sink, metricErr := r.spanErr, r.spanSink, r.metricErr
	r.mu.Unlock()

	if n := s.DroppedRequests - r.last.DroppedRequests; n > 0 {
		r.logger.Warn("dropped requests: queue full", "dropped", n, "total", s.DroppedRequests)
	}
	if n := s.DroppedSpans - r.last.DroppedSpans; n > 0 {
		r.logger.Warn("dropped spans: queue full", "dropped", n, "total", s.DroppedSpans)
	}
	switch {
	case s.FailedSpans > r.last.FailedSpans:
		r.logger.Warn("span export failed", "sink", sink, "spans", s.FailedSpans-r.last.FailedSpans, "total", s.FailedSpans,
			"error", spanErr, "hint", exportHint(spanErr))
		r.spansFailed = true
	case r.spansFailed && !r.spansFailing.Load() && s.ExportedSpans > r.last.ExportedSpans:
		r.logger.Info("span export works again", "exported", s.ExportedSpans-r.last.ExportedSpans)
		r.spansFailed = false
	}
	switch {
	case s.FailedMetricExports > r.last.FailedMetricExports:
		r.logger.Warn("metric export failed", "exports", s.FailedMetricExports-r.last.FailedMetricExports, "total", s.FailedMetricExports,
			"error", metricErr, "hint", exportHint(metricErr))
		r.metricsFailed = true
	case r.metricsFailed && !r.metricsFailing.Load():
		r.logger.Info("metric export works again")
		r.metricsFailed = false
	}
	r.last = s
}

// exportHint says what an OTLP export error usually means, and what to
// change: the gRPC status alone ("Unimplemented") leaves a user guessing.
func exportHint(err error) string {
	if err == nil {
		return ""
	}
	code := status.Code(err)
	if code == codes.Unknown && errors.Is(err, context.DeadlineExceeded) {
		code = codes.DeadlineExceeded // the metric exporter's, not a status
	}
	switch code {
	case codes.Unauthenticated, codes.PermissionDenied:
		return "the collector refused the agent's credentials: check OTEL_EXPORTER_OTLP_HEADERS (or its _TRACES_ and _METRICS_ forms)"
	case codes.Unimplemented:
		return "the endpoint does not take this signal over OTLP/gRPC (a collector without that pipeline, or OTLP/HTTP's port 4318): " +
			"fix OTEL_EXPORTER_OTLP_ENDPOINT, or turn the signal off with OTEL_TRACES_EXPORTER=none or OTEL_METRICS_EXPORTER=none"
	case codes.Unavailable:
		return "the collector cannot be reached: check OTEL_EXPORTER_OTLP_ENDPOINT (and _INSECURE for TLS) and that it runs; " +
			"meanwhile what does not fit the queues is dropped and counted"
	case codes.DeadlineExceeded:
		return "no answer within OTEL_EXPORTER_OTLP_TIMEOUT (10 s by default): the collector is overloaded or far, or the endpoint " +
			"takes connections but does not speak OTLP/gRPC as configured (TLS against plaintext: OTEL_EXPORTER_OTLP_INSECURE; OTLP/HTTP's port 4318)"
	case codes.Internal:
		return "the call broke off, or the endpoint is not an OTLP/gRPC server (an HTTP server, a proxy without HTTP/2): check OTEL_EXPORTER_OTLP_ENDPOINT"
	case codes.ResourceExhausted:
		return "the collector is out of capacity, or refused a request as too large (raise its max_recv_msg_size_mib)"
	case codes.InvalidArgument:
		return "the collector refused the data as invalid: a bug, please report it with this line"
	}
	return ""
}
