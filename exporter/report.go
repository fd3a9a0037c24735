package exporter

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
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
	// metrics, failed.
	spansFailing, metricsFailing atomic.Bool

	mu        sync.Mutex
	spanErr   error // last span export error, with the sink's name
	spanSink  string
	metricErr error // last metric export error

	// Values at the last report, owned by the ticker goroutine.
	last Stats
}

func newReporter(logger *slog.Logger, interval time.Duration) *reporter {
	return &reporter{logger: logger, interval: interval, quit: make(chan struct{})}
}

// spansExported and metricsExported note an OTLP export that succeeded.
func (r *reporter) spansExported()   { r.spansFailing.Store(false) }
func (r *reporter) metricsExported() { r.metricsFailing.Store(false) }

func (r *reporter) spanError(sink string, err error) {
	if sink == otlpSink {
		r.spansFailing.Store(true)
	}
	r.mu.Lock()
	r.spanErr, r.spanSink = err, sink
	r.mu.Unlock()
}

func (r *reporter) metricError(err error) {
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
	if n := s.FailedSpans - r.last.FailedSpans; n > 0 {
		r.logger.Warn("span export failed", "sink", sink, "spans", n, "total", s.FailedSpans, "error", spanErr)
	}
	if n := s.FailedMetricExports - r.last.FailedMetricExports; n > 0 {
		r.logger.Warn("metric export failed", "exports", n, "total", s.FailedMetricExports, "error", metricErr)
	}
	r.last = s
}
