package exporter

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/podtracer/podtracer/internal/otlptest"
)

// The agent's own metrics reach the collector under its own resource: its
// span pipeline's counts by the semantic conventions (otel.sdk.*), and the
// kernel's and tracer's counts that the agent gives, as they are at each
// collection.
func TestSelfMetrics(t *testing.T) {
	rcv := otlptest.Start(t)
	otlpEnv(t, rcv.URL())
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.deployment.name=shop,service.version=4.2") // the neighbours' version
	t.Setenv("OTEL_SERVICE_NAME", "shop")                                                // the neighbours' name, not the agent's
	logger, _ := testLogger(t)
	e, err := New(context.Background(), Config{TracesOTLP: true, MetricsOTLP: true, Metadata: meta}, logger)
	if err != nil {
		t.Fatal(err)
	}
	var lost atomic.Uint64
	lost.Store(7)
	counts := func() SelfCounts { return SelfCounts{KernelEventsLost: lost.Load(), ParserFailures: 2} }
	if err := e.ReportSelf(counts); err != nil {
		t.Fatal(err)
	}
	if err := e.ReportSelf(counts); err == nil {
		t.Error("ReportSelf twice: no error")
	}
	e.Export(serverReq())
	rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) == 1 })

	point := func(ps []otlptest.MetricPoint, name string, attrs map[string]any) *otlptest.MetricPoint {
		var last *otlptest.MetricPoint
	next:
		for i, p := range ps {
			if p.Name != name || attrs != nil && len(p.Attributes) != len(attrs) {
				continue
			}
			for k, v := range attrs {
				if p.Attributes[k] != v {
					continue next
				}
			}
			last = &ps[i]
		}
		return last
	}
	exported := map[string]any{"otel.component.type": "otlp_grpc_span_exporter", "otel.component.name": "otlp_grpc_span_exporter/otlp"}
	ps := rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		p := point(ps, "otel.sdk.exporter.span.exported", exported)
		return p != nil && p.Value == 1 && point(ps, "podtracer.kernel.events.lost", nil) != nil
	})
	p := point(ps, "podtracer.kernel.events.lost", nil)
	if p.Value != 7 || p.Type != "sum" || p.Unit != "{event}" {
		t.Errorf("podtracer.kernel.events.lost: %+v", p)
	}
	for k, want := range map[string]any{"service.name": "podtracer", "k8s.pod.name": "shop-1", "k8s.namespace.name": "prod", "k8s.deployment.name": "shop"} {
		if got := p.Resource[k]; got != want {
			t.Errorf("resource %s = %v, want %v", k, got, want)
		}
	}
	if p.Resource["service.instance.id"] == nil || p.Resource["service.version"] == "4.2" {
		t.Errorf("resource %v: want a service.instance.id of its own, and not the neighbours' version", p.Resource)
	}
	if p := point(ps, "podtracer.parser.failures", nil); p == nil || p.Value != 2 {
		t.Errorf("podtracer.parser.failures: %+v", p)
	}
	for _, name := range []string{"podtracer.requests.dropped", "podtracer.metric_exports.failed", "otel.sdk.processor.span.processed"} {
		if point(ps, name, nil) == nil {
			t.Errorf("no %s", name)
		}
	}
	if p := point(ps, "otel.sdk.exporter.span.exported", map[string]any{"error.type": "rejected",
		"otel.component.type": "otlp_grpc_span_exporter", "otel.component.name": "otlp_grpc_span_exporter/otlp"}); p == nil || p.Value != 0 {
		t.Errorf("the rejected series before any span was rejected: %+v, want 0", p)
	}
	// A span the collector rejects (OTLP partial success) is one that
	// failed, as rejected.
	rcv.Set(otlptest.WithRejectedSpans(1))
	e.Export(serverReq())
	rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		p := point(ps, "otel.sdk.exporter.span.exported", map[string]any{"error.type": "rejected",
			"otel.component.type": "otlp_grpc_span_exporter", "otel.component.name": "otlp_grpc_span_exporter/otlp"})
		q := point(ps, "otel.sdk.processor.span.processed", map[string]any{
			"otel.component.type": "batching_span_processor", "otel.component.name": "batching_span_processor/otlp"})
		return p != nil && p.Value == 1 && q != nil && q.Value == 2
	})
	// A later count is what the next collection reports.
	lost.Store(9)
	rcv.WaitMetric(t, waitFor, func(ps []otlptest.MetricPoint) bool {
		p := point(ps, "podtracer.kernel.events.lost", nil)
		return p != nil && p.Value == 9
	})
	shutdown(t, e)
	if err := e.ReportSelf(counts); err != nil {
		t.Errorf("ReportSelf after Shutdown: %v", err)
	}
}
