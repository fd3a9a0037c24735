package exporter

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// otlpSpans sends batches of records with an OTLP client, which does the
// gRPC call, the retries, the headers and the timeout that
// OTEL_EXPORTER_OTLP_* configure. The client is handed a stand-in request
// for each batch, which the connection's codec writes from the records
// themselves (traceCodec), so the worker only fills records and nothing
// builds protobuf messages.
type otlpSpans struct {
	client  otlptrace.Client
	codec   *traceCodec     // the client connection's; only the sink's goroutine exports
	partial *partialSuccess // the connection's

	stopOnce sync.Once
	stopErr  error
}

func (o *otlpSpans) exportSpans(ctx context.Context, spans []*spanRecord) error {
	o.partial.reset()
	err := o.client.UploadTraces(ctx, o.codec.request(spans))
	o.codec.done()
	if err != nil && o.partial.answered() {
		// The collector took the request, and said it rejected some of
		// it (OTLP partial success), which the client reports as an
		// error: the rest are exported.
		return &rejectedSpans{n: min(int(o.partial.rejected.Load()), len(spans)), err: err}
	}
	if err != nil {
		return fmt.Errorf("traces export: %w", err)
	}
	return nil
}

// rejectedSpans is an export the collector took but for n of its spans.
type rejectedSpans struct {
	n   int
	err error
}

func (e *rejectedSpans) Error() string {
	return fmt.Sprintf("traces export: %d spans rejected: %v", e.n, e.err)
}
func (e *rejectedSpans) Unwrap() error { return e.err }

// partialSuccess sees the answers to the span exports of a connection (a
// gRPC interceptor): whether the last one was an answer at all, and how
// many spans it said were rejected.
type partialSuccess struct {
	ok       atomic.Bool
	rejected atomic.Int64
}

func (p *partialSuccess) reset() {
	p.ok.Store(false)
	p.rejected.Store(0)
}

func (p *partialSuccess) answered() bool { return p.ok.Load() }

func (p *partialSuccess) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if r, ok := reply.(*coltracepb.ExportTraceServiceResponse); ok && err == nil {
		p.rejected.Store(r.GetPartialSuccess().GetRejectedSpans())
		p.ok.Store(true)
	}
	return err
}

// shutdown closes the connection; a second call (after a shutdown that
// gave up waiting) does nothing.
func (o *otlpSpans) shutdown(ctx context.Context) error {
	o.stopOnce.Do(func() { o.stopErr = o.client.Stop(ctx) })
	return o.stopErr
}
