package exporter

import (
	"context"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
)

// otlpSpans sends batches of records with an OTLP client, which does the
// gRPC call, the retries, the headers and the timeout that
// OTEL_EXPORTER_OTLP_* configure. The client is handed a stand-in request
// for each batch, which the connection's codec writes from the records
// themselves (traceCodec), so the worker only fills records and nothing
// builds protobuf messages.
type otlpSpans struct {
	client otlptrace.Client
	codec  *traceCodec // the client connection's; only the sink's goroutine exports

	stopOnce sync.Once
	stopErr  error
}

func (o *otlpSpans) exportSpans(ctx context.Context, spans []*spanRecord) error {
	err := o.client.UploadTraces(ctx, o.codec.request(spans))
	o.codec.done()
	if err != nil {
		return fmt.Errorf("traces export: %w", err)
	}
	return nil
}

// shutdown closes the connection; a second call (after a shutdown that
// gave up waiting) does nothing.
func (o *otlpSpans) shutdown(ctx context.Context) error {
	o.stopOnce.Do(func() { o.stopErr = o.client.Stop(ctx) })
	return o.stopErr
}
