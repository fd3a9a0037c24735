package exporter

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// spanExporter is a span destination: OTLP or the printer.
type spanExporter interface {
	// exportSpans sends one batch. It must not keep the records, which
	// go back to their pool when it returns.
	exportSpans(ctx context.Context, spans []*spanRecord) error
	shutdown(ctx context.Context) error
}

// batchConfig is how a sink batches, from OTEL_BSP_* as the SDK's batch
// processor reads them.
type batchConfig struct {
	queue   int           // spans held at most, queued or being exported
	size    int           // spans per export at most
	delay   time.Duration // longest wait before a partial batch is exported
	timeout time.Duration // per export
}

// spanSink is one span destination with its own bounded queue and
// goroutine, shared by every process: spans of many processes go out in
// one batch, grouped by resource.
//
// The sink counts the spans it holds, queued or in the export under way,
// and refuses a span beyond the queue size, so what a slow or unreachable
// collector costs is bounded, the worker never waits, and every loss is
// counted exactly.
type spanSink struct {
	name  string
	exp   spanExporter
	rep   *reporter
	cfg   batchConfig
	limit int64

	// queue carries spans in handfuls: the worker offers what one batch of
	// requests made at once, so the sink's goroutine wakes once per batch,
	// not per span.
	queue   chan []*spanRecord
	spare   slicePool[*spanRecord]
	pending []*spanRecord // made by the worker, not yet offered
	flushes chan chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	// ctx is the parent of every export; cancelling it when Shutdown's
	// deadline passes aborts an export stuck on a hung collector.
	ctx    context.Context
	cancel context.CancelFunc

	inflight  atomic.Int64
	dropped   atomic.Uint64
	submitted atomic.Uint64 // handed to the exporter, whatever came of it
	exported  atomic.Uint64
	failed    atomic.Uint64 // rejected + unsent
	rejected  atomic.Uint64 // refused by a collector that answered (partial success)
	unsent    atomic.Uint64 // in exports that failed

	batchBytes int // the encoded size of the batch being filled (maxBatchBytes)
}

// maxBatchBytes bounds an export request's encoded spans, below the 4 MiB
// that gRPC servers take by default, the OpenTelemetry Collector's OTLP
// receiver included (max_recv_msg_size_mib): a batch of 512 spans of long
// URLs or queries, or of 2048 shorter ones, would go over, and the
// collector would refuse it whole, every time. A batch that would pass it
// goes out early. The rest of a request (resources, headers) is a few
// kilobytes per process.
const maxBatchBytes = 4<<20 - 256<<10

// newSpanSink starts a sink.
func newSpanSink(name string, exp spanExporter, cfg batchConfig, rep *reporter) *spanSink {
	cfg.size = min(cfg.size, cfg.queue)
	k := &spanSink{
		name: name, exp: exp, rep: rep, cfg: cfg, limit: int64(cfg.queue),
		queue:   make(chan []*spanRecord, cfg.queue),
		spare:   newSlicePool[*spanRecord](),
		flushes: make(chan chan struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	k.ctx, k.cancel = context.WithCancel(context.Background())
	go k.run()
	return k
}

// hold keeps rec for the next offerPending. Only the worker calls it.
func (k *spanSink) hold(rec *spanRecord) {
	if k.pending == nil {
		k.pending = k.spare.get()
	}
	k.pending = append(k.pending, rec)
}

// offerPending hands the held spans to the sink's goroutine, and drops and
// counts those beyond the queue size. It never blocks: the channel has room
// for a handful per span the count lets in. Only the worker calls it.
func (k *spanSink) offerPending() {
	recs := k.pending
	if len(recs) == 0 {
		return
	}
	k.pending = nil
	if over := k.inflight.Add(int64(len(recs))) - k.limit; over > 0 {
		over = min(over, int64(len(recs)))
		k.inflight.Add(-over)
		k.dropped.Add(uint64(over))
		keep := len(recs) - int(over)
		for _, rec := range recs[keep:] {
			rec.release()
		}
		recs = recs[:keep]
		if keep == 0 {
			k.spare.put(recs)
			return
		}
	}
	k.queue <- recs
}

// offer queues one span at once.
func (k *spanSink) offer(rec *spanRecord) {
	k.hold(rec)
	k.offerPending()
}

// run collects batches and exports each when it is full or the oldest
// span waited cfg.delay, like the SDK's batch processor.
func (k *spanSink) run() {
	defer close(k.done)
	batch := make([]*spanRecord, 0, k.cfg.size)
	timer := time.NewTimer(k.cfg.delay)
	defer timer.Stop()
	for {
		select {
		case recs := <-k.queue:
			var sent bool
			if batch, sent = k.addAll(batch, recs); sent {
				timer.Reset(k.cfg.delay)
			}
		case <-timer.C:
			batch = k.export(batch)
			timer.Reset(k.cfg.delay)
		case done := <-k.flushes:
			batch = k.drain(batch)
			close(done)
		case <-k.stop:
			k.drain(batch)
			return
		}
	}
}

// drain exports the batch and everything queued.
func (k *spanSink) drain(batch []*spanRecord) []*spanRecord {
	for {
		select {
		case recs := <-k.queue:
			batch, _ = k.addAll(batch, recs)
		default:
			return k.export(batch)
		}
	}
}

// addAll appends recs to the batch, exporting it each time it is full,
// which it reports; recs goes back to the spare slices.
func (k *spanSink) addAll(batch, recs []*spanRecord) ([]*spanRecord, bool) {
	sent := false
	for _, rec := range recs {
		size := len(rec.wire) + 6 // its field's tag and length
		if len(batch) > 0 && k.batchBytes+size > maxBatchBytes {
			batch, sent = k.export(batch), true
		}
		batch = append(batch, rec)
		k.batchBytes += size
		if len(batch) == k.cfg.size {
			batch, sent = k.export(batch), true
		}
	}
	k.spare.put(recs)
	return batch, sent
}

// export sends a batch, counts the outcome, releases the records and
// returns the emptied batch.
func (k *spanSink) export(batch []*spanRecord) []*spanRecord {
	if len(batch) == 0 {
		return batch
	}
	ctx, cancel := k.ctx, context.CancelFunc(func() {})
	if k.cfg.timeout > 0 { // 0: no limit, as the specification says
		ctx, cancel = context.WithTimeout(k.ctx, k.cfg.timeout)
	}
	n := len(batch)
	k.submitted.Add(uint64(n))
	err := k.exp.exportSpans(ctx, batch)
	cancel()
	var rejected *rejectedSpans
	switch {
	case errors.As(err, &rejected):
		// The collector answered: it works, and took all but these.
		k.failed.Add(uint64(rejected.n))
		k.rejected.Add(uint64(rejected.n))
		k.exported.Add(uint64(n - rejected.n))
		k.rep.spansRejected(k.name, err)
	case err != nil:
		k.failed.Add(uint64(n))
		k.unsent.Add(uint64(n))
		k.rep.spanError(k.name, err)
	default:
		k.exported.Add(uint64(n))
		if k.name == otlpSink {
			k.rep.spansExported()
		}
	}
	releaseAll(batch)
	clear(batch)
	k.inflight.Add(-int64(n))
	k.batchBytes = 0
	return batch[:0]
}

// flush exports everything queued now and waits for it, or for ctx. Tests
// and benchmarks use it to make batching deterministic.
func (k *spanSink) flush(ctx context.Context) {
	done := make(chan struct{})
	select {
	case k.flushes <- done:
	case <-ctx.Done():
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// shutdown exports what is queued and closes the destination, within ctx.
// When ctx ends first, the export under way is aborted, and what is left
// fails at once and is counted as failed.
func (k *spanSink) shutdown(ctx context.Context) error {
	k.once.Do(func() { close(k.stop) })
	var err error
	select {
	case <-k.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	k.cancel()
	if serr := k.exp.shutdown(ctx); err == nil {
		err = serr
	}
	return err
}

// metricSink is the one OTLP metric exporter that every process's periodic
// reader exports through. Its Shutdown does nothing, so releasing a process's
// MeterProvider (whose reader shuts its exporter down) does not close the
// connection the others use; Exporter.Shutdown closes the real one.
type metricSink struct {
	sdkmetric.Exporter
	rep    *reporter
	failed atomic.Uint64
}

func (m *metricSink) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	err := m.Exporter.Export(ctx, rm)
	if err != nil {
		m.failed.Add(1)
		m.rep.metricError(err)
	} else {
		m.rep.metricsExported()
	}
	// Counted and logged; the reader would hand it to the global handler.
	return nil
}

func (*metricSink) Shutdown(context.Context) error { return nil }
