package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

// receiverCounts is what the receiver has accepted so far.
type receiverCounts struct {
	Spans         uint64 `json:"spans"`
	ServerSpans   uint64 `json:"server_spans"`
	MetricPoints  uint64 `json:"metric_points"`
	TraceExports  uint64 `json:"trace_exports"`
	MetricExports uint64 `json:"metric_exports"`
}

// receiver is a minimal OTLP/gRPC collector: it accepts traces and metrics,
// counts them and throws them away. It shares the two cores with what is
// measured, so it does not decode the messages into Go values: it walks
// their protobuf wire format just deep enough to count spans and data
// points, which costs a fraction of a real unmarshal.
type receiver struct {
	spans, serverSpans, points, traceExports, metricExports atomic.Uint64
}

// rawMessage is a request that the codec does not decode: it hands the
// bytes to count while they are valid (gRPC recycles the buffer after).
type rawMessage struct{ count func([]byte) }

// rawCodec passes requests through as bytes and answers every call with an
// empty message, which is a valid Export*ServiceResponse.
type rawCodec struct{}

func (rawCodec) Marshal(any) ([]byte, error) { return nil, nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(*rawMessage)
	if !ok {
		return fmt.Errorf("unexpected message %T", v)
	}
	m.count(data)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// exportMethod is a unary Export method that hands the raw request to count.
func exportMethod(count func(r *receiver, b []byte)) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: "Export",
		Handler: func(srv any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			m := rawMessage{count: func(b []byte) { count(srv.(*receiver), b) }}
			if err := dec(&m); err != nil {
				return nil, err
			}
			return &m, nil
		},
	}
}

var (
	traceService = grpc.ServiceDesc{
		ServiceName: "opentelemetry.proto.collector.trace.v1.TraceService",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{exportMethod(func(r *receiver, b []byte) {
			var spans, server uint64
			// ExportTraceServiceRequest.resource_spans(1) > ResourceSpans.scope_spans(2)
			// > ScopeSpans.spans(2) > Span.kind(6)
			fields(b, 1, func(rs []byte) {
				fields(rs, 2, func(ss []byte) {
					fields(ss, 2, func(span []byte) {
						spans++
						if varintField(span, 6) == 2 { // SPAN_KIND_SERVER
							server++
						}
					})
				})
			})
			r.spans.Add(spans)
			r.serverSpans.Add(server)
			r.traceExports.Add(1)
		})},
	}
	metricsService = grpc.ServiceDesc{
		ServiceName: "opentelemetry.proto.collector.metrics.v1.MetricsService",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{exportMethod(func(r *receiver, b []byte) {
			var points uint64
			// ExportMetricsServiceRequest.resource_metrics(1) > ResourceMetrics.scope_metrics(2)
			// > ScopeMetrics.metrics(2) > Metric.{gauge 5, sum 7, histogram 9,
			// exponential_histogram 10, summary 11} > data_points(1)
			fields(b, 1, func(rm []byte) {
				fields(rm, 2, func(sm []byte) {
					fields(sm, 2, func(m []byte) {
						for _, kind := range []protowire.Number{5, 7, 9, 10, 11} {
							fields(m, kind, func(data []byte) {
								fields(data, 1, func([]byte) { points++ })
							})
						}
					})
				})
			})
			r.points.Add(points)
			r.metricExports.Add(1)
		})},
	}
)

// fields calls f with every length-delimited field num of the message b.
func fields(b []byte, num protowire.Number, f func([]byte)) {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return
			}
			f(v)
			b = b[l:]
			continue
		}
		if l = protowire.ConsumeFieldValue(n, typ, b); l < 0 {
			return
		}
		b = b[l:]
	}
}

// varintField returns the varint field num of b, or 0.
func varintField(b []byte, num protowire.Number) uint64 {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return 0
		}
		b = b[l:]
		if n == num && typ == protowire.VarintType {
			v, _ := protowire.ConsumeVarint(b)
			return v
		}
		if l = protowire.ConsumeFieldValue(n, typ, b); l < 0 {
			return 0
		}
		b = b[l:]
	}
	return 0
}

func (r *receiver) counts() receiverCounts {
	return receiverCounts{
		Spans:         r.spans.Load(),
		ServerSpans:   r.serverSpans.Load(),
		MetricPoints:  r.points.Load(),
		TraceExports:  r.traceExports.Load(),
		MetricExports: r.metricExports.Load(),
	}
}

// receiverMain serves OTLP/gRPC on -addr and the counts as JSON on
// http://-stats/. It prints "ready" once both listen.
func receiverMain(args []string) error {
	fs := flag.NewFlagSet("receiver", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:4317", "OTLP/gRPC listen address")
	statsAddr := fs.String("stats", "127.0.0.1:4318", "address serving the counts as JSON")
	fs.Parse(args)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	statsLn, err := net.Listen("tcp", *statsAddr)
	if err != nil {
		return err
	}
	r := &receiver{}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.MaxRecvMsgSize(64<<20))
	srv.RegisterService(&traceService, r)
	srv.RegisterService(&metricsService, r)
	go srv.Serve(ln)
	go http.Serve(statsLn, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(r.counts())
	}))
	fmt.Println("ready")
	<-ctx.Done()
	srv.Stop()
	return nil
}
