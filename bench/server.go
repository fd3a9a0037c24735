package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

var hello = []byte("hello, world\n")

// serverMain is the Go workload: a net/http hello server. With -otel it is
// the same server instrumented in-process by otelhttp, exporting spans and
// metrics over OTLP/gRPC to OTEL_EXPORTER_OTLP_ENDPOINT, the way an
// application instrumented with the SDK would be. With -grpc it is the gRPC
// workload instead: a grpc-go server of demo.Echo/Say.
func serverMain(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	withOTel := fs.Bool("otel", false, "instrument with otelhttp and the OpenTelemetry SDK")
	withGRPC := fs.Bool("grpc", false, "serve demo.Echo/Say over gRPC instead of HTTP")
	overTLS := fs.Bool("tls", false, "-grpc: over TLS, with a self-signed certificate")
	fs.Parse(args)
	if *withOTel && *withGRPC {
		return errors.New("-otel instruments the HTTP server only")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(hello)
	})
	var handler http.Handler = mux
	shutdownSDK := func(context.Context) error { return nil }
	if *withOTel {
		var err error
		if shutdownSDK, err = setupSDK(ctx); err != nil {
			return err
		}
		handler = otelhttp.NewHandler(mux, "hello")
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if *withGRPC {
		return serveEcho(ctx, ln, *overTLS)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	flushCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return shutdownSDK(flushCtx)
}

// setupSDK installs the SDK's tracer and meter providers with their usual
// defaults (batch span processor, periodic metric reader), configured by the
// standard OTEL_* variables exactly as the agent's exporters are.
func setupSDK(ctx context.Context) (func(context.Context) error, error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName("hello-otelhttp")))
	if err != nil {
		return nil, fmt.Errorf("resource: %w", err)
	}
	spans, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	metrics, err := otlpmetricgrpc.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("otlp metric exporter: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(spans), sdktrace.WithResource(res))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metrics)), sdkmetric.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	return func(ctx context.Context) error {
		return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx))
	}, nil
}
