package exporter

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/pod"
)

func randomTraceID(rng *rand.Rand) trace.TraceID {
	var tid trace.TraceID
	for i := range tid {
		tid[i] = byte(rng.Uint32())
	}
	return tid
}

// sdkDecision is what the SDK's sampler decides for a span with this
// (remote or absent) parent and trace ID.
func sdkDecision(s sdktrace.Sampler, parent trace.SpanContext, tid trace.TraceID) bool {
	ctx := context.Background()
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	res := s.ShouldSample(sdktrace.SamplingParameters{ParentContext: ctx, TraceID: tid, Name: "x"})
	return res.Decision == sdktrace.RecordAndSample
}

// TestSamplerAgreesWithSDK compares every OTEL_TRACES_SAMPLER setting with
// the SDK sampler it names, for random trace IDs, roots and sampled and
// unsampled remote parents: the same trace must get the same decision from
// podtracer as from any SDK in the services it observes.
func TestSamplerAgreesWithSDK(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		env, arg string
		sdk      sdktrace.Sampler
	}{
		{"", "", sdktrace.ParentBased(sdktrace.AlwaysSample())},
		{"parentbased_always_on", "", sdktrace.ParentBased(sdktrace.AlwaysSample())},
		{"always_on", "", sdktrace.AlwaysSample()},
		{"always_off", "", sdktrace.NeverSample()},
		{"parentbased_always_off", "", sdktrace.ParentBased(sdktrace.NeverSample())},
		{"traceidratio", "", sdktrace.TraceIDRatioBased(1)},
		{"parentbased_traceidratio", "", sdktrace.ParentBased(sdktrace.TraceIDRatioBased(1))},
	}
	for _, ratio := range []float64{0, 1e-6, 0.001, 0.1, 0.25, 0.5, 0.7531, 0.999, 1} {
		arg := strconv.FormatFloat(ratio, 'g', -1, 64)
		tests = append(tests,
			struct {
				env, arg string
				sdk      sdktrace.Sampler
			}{"traceidratio", arg, sdktrace.TraceIDRatioBased(ratio)},
			struct {
				env, arg string
				sdk      sdktrace.Sampler
			}{"PARENTBASED_TRACEIDRATIO", arg, sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))})
	}
	for _, tt := range tests {
		t.Run(tt.env+"/"+tt.arg, func(t *testing.T) {
			t.Setenv("OTEL_TRACES_SAMPLER", tt.env)
			t.Setenv("OTEL_TRACES_SAMPLER_ARG", tt.arg)
			s, err := samplerFromEnv(os.Getenv)
			if err != nil {
				t.Fatal(err)
			}
			var kept int
			const n = 20000
			for i := range n {
				tid := randomTraceID(rng)
				var parent trace.SpanContext
				switch i % 3 {
				case 1, 2: // a remote parent, sampled or not
					parent = trace.NewSpanContext(trace.SpanContextConfig{
						TraceID: tid, SpanID: trace.SpanID{1}, Remote: true,
						TraceFlags: trace.TraceFlags(i % 3 & 1),
					})
				}
				got, want := s.sample(parent, tid), sdkDecision(tt.sdk, parent, tid)
				if got != want {
					t.Fatalf("trace %v parent %v: sampled %v, SDK says %v", tid, parent, got, want)
				}
				if got {
					kept++
				}
			}
			t.Logf("%d of %d kept", kept, n)
		})
	}
}

func TestSamplerEnvErrors(t *testing.T) {
	for _, tt := range []struct {
		env, arg string
		want     []string
	}{
		{"sometimes", "", []string{`OTEL_TRACES_SAMPLER="sometimes": want always_on`}},
		{"traceidratio", "half", []string{`OTEL_TRACES_SAMPLER_ARG="half": want a ratio between 0 and 1`}},
		{"parentbased_traceidratio", "-0.1", []string{`OTEL_TRACES_SAMPLER_ARG="-0.1"`}},
		{"traceidratio", "NaN", []string{`OTEL_TRACES_SAMPLER_ARG="NaN"`}},
		// Both mistakes at once.
		{"Sometimes", "2", []string{`OTEL_TRACES_SAMPLER="Sometimes"`, `OTEL_TRACES_SAMPLER_ARG="2"`}},
	} {
		vars := map[string]string{"OTEL_TRACES_SAMPLER": tt.env, "OTEL_TRACES_SAMPLER_ARG": tt.arg}
		_, err := samplerFromEnv(func(k string) string { return vars[k] })
		for _, want := range tt.want {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s %s: err = %v, want %q", tt.env, tt.arg, err, want)
			}
		}
	}
	// An argument the sampler does not take is not read.
	vars := map[string]string{"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "half"}
	if _, err := samplerFromEnv(func(k string) string { return vars[k] }); err != nil {
		t.Errorf("always_on with an argument: %v", err)
	}
}

// writeCA writes a self-signed CA certificate, PEM, and returns its path.
func writeCA(t *testing.T) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// CheckEnv names every bad standard variable at once, and none of the
// good ones.
func TestCheckEnv(t *testing.T) {
	good := map[string]string{
		"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
		"OTEL_METRIC_EXPORT_INTERVAL": "10000", "OTEL_METRIC_EXPORT_TIMEOUT": "5000",
		"OTEL_BSP_MAX_QUEUE_SIZE": "8192", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2048",
		"OTEL_BSP_SCHEDULE_DELAY": "1000", "OTEL_BSP_EXPORT_TIMEOUT": "0",
		"OTEL_METRICS_EXEMPLAR_FILTER": "Always_Off", "OTEL_GO_X_CARDINALITY_LIMIT": "-1",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "GRPC",
		"OTEL_EXPORTER_OTLP_INSECURE": "TRUE", "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "false",
		"OTEL_EXPORTER_OTLP_TIMEOUT": "10000", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
		// As the SDK reads them: 0 is no limit, a path is trimmed.
		"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0", "OTEL_EXPORTER_OTLP_CERTIFICATE": writeCA(t) + "\n",
		"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE":        "Delta",
		"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "explicit_bucket_histogram",
	}
	if errs := CheckEnv(func(k string) string { return good[k] }); len(errs) > 0 {
		t.Errorf("good values: %v", errs)
	}
	if errs := CheckEnv(func(string) string { return "" }); len(errs) > 0 {
		t.Errorf("nothing set: %v", errs)
	}
	bad := map[string]string{
		"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5",
		"OTEL_METRIC_EXPORT_TIMEOUT": "0",
		"OTEL_BSP_MAX_QUEUE_SIZE":    "-1", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "lots",
		"OTEL_BSP_SCHEDULE_DELAY": "5s", "OTEL_BSP_EXPORT_TIMEOUT": "x",
		"OTEL_METRICS_EXEMPLAR_FILTER": "sometimes", "OTEL_GO_X_CARDINALITY_LIMIT": "many",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json",
		// "1" is not true to the SDK: it would turn TLS on.
		"OTEL_EXPORTER_OTLP_INSECURE": "1", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "10s",
		"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
		"OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE": "/etc/hostname", // not PEM
		"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE":  "/nonexistent/client.pem",
		// The metric SDK reads its interval untrimmed.
		"OTEL_METRIC_EXPORT_INTERVAL":                              " 5000",
		"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE":        "sometimes",
		"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "base2_exponential_bucket_histogram",
	}
	errs := CheckEnv(func(k string) string { return bad[k] })
	text := fmt.Sprint(errs)
	for k, v := range bad {
		if k == "OTEL_TRACES_SAMPLER" {
			continue // good: its argument is not
		}
		if !strings.Contains(text, fmt.Sprintf("%s=%q", k, v)) {
			t.Errorf("%s=%s not reported", k, v)
		}
	}
	if !strings.Contains(text, "want both files or neither") {
		t.Errorf("a client certificate without its key not reported:\n%s", text)
	}
	if len(errs) != len(bad)-1 {
		t.Errorf("%d errors, want %d:\n%s", len(errs), len(bad)-1, text)
	}
}

// batchRecorder is a span destination that remembers the batches it got
// and, when gate is set, waits for it before answering.
type batchRecorder struct {
	gate chan struct{}

	mu      sync.Mutex
	batches [][]string // span names
	ids     []trace.SpanContext
	got     chan struct{}
}

func newBatchRecorder() *batchRecorder { return &batchRecorder{got: make(chan struct{}, 100)} }

func (b *batchRecorder) exportSpans(ctx context.Context, spans []*spanRecord) error {
	if b.gate != nil {
		select {
		case <-b.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	names := make([]string, len(spans))
	b.mu.Lock()
	for i, s := range spans {
		names[i] = s.name
		b.ids = append(b.ids, trace.NewSpanContext(trace.SpanContextConfig{TraceID: s.traceID, SpanID: s.spanID}))
	}
	b.batches = append(b.batches, names)
	b.mu.Unlock()
	b.got <- struct{}{}
	return nil
}

func (*batchRecorder) shutdown(context.Context) error { return nil }

func (b *batchRecorder) sizes() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n []int
	for _, s := range b.batches {
		n = append(n, len(s))
	}
	return n
}

func (b *batchRecorder) wait(t *testing.T, batches int) {
	t.Helper()
	for range batches {
		select {
		case <-b.got:
		case <-time.After(waitFor):
			t.Fatalf("got batches %v, want %d", b.sizes(), batches)
		}
	}
}

func offerN(k *spanSink, n int) {
	for i := range n {
		rec := newRecord(1)
		rec.name = "span" + strconv.Itoa(i)
		k.offer(rec)
	}
}

func TestSinkBatchesBySize(t *testing.T) {
	rec := newBatchRecorder()
	k := newSpanSink("test", rec, batchConfig{queue: 100, size: 4, delay: time.Hour, timeout: time.Minute}, newReporter(nil, time.Hour))
	offerN(k, 10)
	rec.wait(t, 2)
	time.Sleep(20 * time.Millisecond) // a third batch would come now
	if got := rec.sizes(); !reflect.DeepEqual(got, []int{4, 4}) {
		t.Errorf("batches %v before the delay, want [4 4]", got)
	}
	// Shutdown exports the rest.
	if err := k.shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.sizes(); !reflect.DeepEqual(got, []int{4, 4, 2}) {
		t.Errorf("batches %v, want [4 4 2]", got)
	}
	if k.exported.Load() != 10 || k.inflight.Load() != 0 {
		t.Errorf("exported %d, in flight %d", k.exported.Load(), k.inflight.Load())
	}
	if rec.batches[2][1] != "span9" {
		t.Errorf("last batch %v: order lost", rec.batches[2])
	}
}

// A batch goes out before its encoded spans pass maxBatchBytes, below the
// 4 MiB a collector takes by default: 40 spans of 300 KiB are four
// requests, not one that the collector would refuse whole.
func TestSinkBatchesByBytes(t *testing.T) {
	rec := newBatchRecorder()
	k := newSpanSink("test", rec, batchConfig{queue: 100, size: 512, delay: time.Hour, timeout: time.Minute}, newReporter(nil, time.Hour))
	for i := range 40 {
		r := newRecord(1)
		r.name, r.wire = "span"+strconv.Itoa(i), make([]byte, 300<<10)
		k.offer(r)
	}
	if err := k.shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	per := maxBatchBytes / (300<<10 + 6)
	if got, want := rec.sizes(), []int{per, per, per, 40 - 3*per}; !reflect.DeepEqual(got, want) {
		t.Errorf("batches %v, want %v", got, want)
	}
	if k.exported.Load() != 40 {
		t.Errorf("exported %d", k.exported.Load())
	}
}

// TestSinkHandfuls: spans held by the worker and offered together make the
// same batches as spans offered one by one, and those beyond the queue size
// are dropped, released and counted exactly.
func TestSinkHandfuls(t *testing.T) {
	rec := newBatchRecorder()
	k := newSpanSink("test", rec, batchConfig{queue: 6, size: 4, delay: time.Hour, timeout: time.Minute}, newReporter(nil, time.Hour))
	for i := range 10 {
		r := newRecord(1)
		r.name = "span" + strconv.Itoa(i)
		k.hold(r)
	}
	k.offerPending()
	k.offerPending() // nothing held: a no-op
	rec.wait(t, 1)
	if err := k.shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.sizes(); !reflect.DeepEqual(got, []int{4, 2}) {
		t.Errorf("batches %v, want [4 2]", got)
	}
	if k.exported.Load() != 6 || k.dropped.Load() != 4 || k.inflight.Load() != 0 {
		t.Errorf("exported %d, dropped %d, in flight %d; want 6, 4, 0", k.exported.Load(), k.dropped.Load(), k.inflight.Load())
	}
	if rec.batches[1][1] != "span5" {
		t.Errorf("last batch %v, want the first six spans kept", rec.batches[1])
	}
}

func TestSinkBatchesByDelay(t *testing.T) {
	rec := newBatchRecorder()
	const delay = 50 * time.Millisecond
	k := newSpanSink("test", rec, batchConfig{queue: 100, size: 50, delay: delay, timeout: time.Minute}, newReporter(nil, time.Hour))
	defer k.shutdown(context.Background())
	start := time.Now()
	offerN(k, 3)
	rec.wait(t, 1)
	if took := time.Since(start); took > delay+waitFor/2 {
		t.Errorf("partial batch took %v", took)
	}
	if got := rec.sizes(); !reflect.DeepEqual(got, []int{3}) {
		t.Errorf("batches %v, want [3]", got)
	}
}

func TestSinkFullQueueDrops(t *testing.T) {
	rec := newBatchRecorder()
	rec.gate = make(chan struct{})
	k := newSpanSink("test", rec, batchConfig{queue: 4, size: 2, delay: time.Millisecond, timeout: time.Minute}, newReporter(nil, time.Hour))
	start := time.Now()
	offerN(k, 10) // the collector hangs: 4 are held, 6 dropped at once
	if took := time.Since(start); took > time.Second {
		t.Errorf("offer blocked for %v", took)
	}
	if d, in := k.dropped.Load(), k.inflight.Load(); d != 6 || in != 4 {
		t.Errorf("dropped %d, in flight %d; want 6 and 4", d, in)
	}
	close(rec.gate)
	if err := k.shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e, d := k.exported.Load(), k.dropped.Load(); e != 4 || d != 6 {
		t.Errorf("exported %d dropped %d, want 4 and 6", e, d)
	}
}

// TestBatchOfSeveralProcesses sends the spans of three processes in one
// export and checks that each arrives under its own resource.
func TestBatchOfSeveralProcesses(t *testing.T) {
	rcv := otlptest.Start(t)
	otlpEnv(t, rcv.URL())
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "600000") // only Shutdown exports
	logger, _ := testLogger(t)
	e, err := New(context.Background(), Config{TracesOTLP: true, Metadata: meta}, logger)
	if err != nil {
		t.Fatal(err)
	}
	procs := []*pod.Process{python, curl, {PID: 413, Exe: "/usr/bin/node", Name: "node"}}
	for i := range 9 {
		r := serverReq()
		r.Process = procs[i%3]
		r.Route = "/p" + strconv.Itoa(procs[i%3].PID)
		e.Export(r)
	}
	shutdown(t, e)
	if calls, _ := rcv.Calls(); calls != 1 {
		t.Errorf("%d trace exports, want 1 batch", calls)
	}
	spans := rcv.Spans()
	if len(spans) != 9 {
		t.Fatalf("%d spans, want 9", len(spans))
	}
	for _, s := range spans {
		pid := s.Resource["process.pid"].(int64)
		if s.Name != "GET /p"+strconv.FormatInt(pid, 10) {
			t.Errorf("span %q under the resource of pid %d", s.Name, pid)
		}
		want := map[int64]string{412: "python3", 77: "curl", 413: "node"}[pid]
		if s.Resource["service.name"] != want || s.Resource["k8s.pod.name"] != "shop-1" || s.Resource["telemetry.sdk.language"] != "go" {
			t.Errorf("pid %d resource %v", pid, s.Resource)
		}
		if s.Scope != scopeName {
			t.Errorf("scope %q", s.Scope)
		}
	}
}

// TestSpanFlags checks the W3C flags and OTLP's remote-parent bits, which
// the SDK sets and backends read.
func TestSpanFlags(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	e.Export(serverReq())
	root := clientReq()
	e.Export(root)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) == 2 })
	child, r := find(spans, "GET /users/{id}")[0], find(spans, "POST")[0]
	if child.Flags != 0x301 || r.Flags != 0x101 {
		t.Errorf("flags child %#x root %#x, want 0x301 and 0x101", child.Flags, r.Flags)
	}
	if !r.TraceID.IsValid() || r.TraceID == child.TraceID || !r.SpanID.IsValid() {
		t.Errorf("root trace %v span %v", r.TraceID, r.SpanID)
	}
}

// TestSpanTraceState: the parent's tracestate travels on the child span,
// as the W3C context says it must; a root span has none.
func TestSpanTraceState(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	ts, err := trace.ParseTraceState("vendor=opaque,other=1")
	if err != nil {
		t.Fatal(err)
	}
	r := serverReq()
	r.Parent = parent.WithTraceState(ts)
	e.Export(r)
	e.Export(clientReq())
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) == 2 })
	if got := find(spans, "GET /users/{id}")[0].TraceState; got != ts.String() {
		t.Errorf("child tracestate %q, want %q", got, ts.String())
	}
	if got := find(spans, "POST")[0].TraceState; got != "" {
		t.Errorf("root tracestate %q, want none", got)
	}
}

func TestSpanKindPB(t *testing.T) {
	for k, want := range map[trace.SpanKind]tracepb.Span_SpanKind{
		trace.SpanKindUnspecified: tracepb.Span_SPAN_KIND_UNSPECIFIED,
		trace.SpanKindInternal:    tracepb.Span_SPAN_KIND_INTERNAL,
		trace.SpanKindServer:      tracepb.Span_SPAN_KIND_SERVER,
		trace.SpanKindClient:      tracepb.Span_SPAN_KIND_CLIENT,
		trace.SpanKindProducer:    tracepb.Span_SPAN_KIND_PRODUCER,
		trace.SpanKindConsumer:    tracepb.Span_SPAN_KIND_CONSUMER,
		trace.SpanKind(42):        tracepb.Span_SPAN_KIND_UNSPECIFIED,
	} {
		if got := spanKindPB(k); got != want {
			t.Errorf("%v: %v, want %v", k, got, want)
		}
	}
}

// exemplarMetrics keeps the trace and span IDs of the exemplars exported.
type exemplarMetrics struct {
	discardMetrics
	mu  sync.Mutex
	ids []trace.SpanContext
}

func (m *exemplarMetrics) Export(_ context.Context, rm *metricdata.ResourceMetrics) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, sm := range rm.ScopeMetrics {
		for _, md := range sm.Metrics {
			h, ok := md.Data.(metricdata.Histogram[float64])
			if !ok {
				continue
			}
			for _, dp := range h.DataPoints {
				for _, ex := range dp.Exemplars {
					m.ids = append(m.ids, trace.NewSpanContext(trace.SpanContextConfig{
						TraceID: trace.TraceID(ex.TraceID), SpanID: trace.SpanID(ex.SpanID),
					}))
				}
			}
		}
	}
	return nil
}

// TestExemplarLinksSpan checks that a metric point's exemplar names the
// span of the same request, as it did when spans came from the SDK.
func TestExemplarLinksSpan(t *testing.T) {
	t.Setenv("OTEL_TRACES_SAMPLER", "")
	t.Setenv("OTEL_METRICS_EXEMPLAR_FILTER", "")
	spans := newBatchRecorder()
	metrics := &exemplarMetrics{}
	e := benchNew(t, []destination{{name: "rec", exp: spans}}, metrics)
	e.handle(serverReq())
	e.sinks[0].flush(context.Background())
	for _, p := range e.procs {
		if err := p.mp.ForceFlush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if len(spans.ids) != 1 || !reflect.DeepEqual(metrics.ids, spans.ids) {
		t.Errorf("exemplars %v, spans %v", metrics.ids, spans.ids)
	}
	if spans.ids[0].TraceID() != parent.TraceID() {
		t.Errorf("span trace %v, want the parent's", spans.ids[0].TraceID())
	}
}

// A failed export's log line says what the error usually means and what
// to change; once exports work again, a line says so, once.
func TestReportHintAndRecovery(t *testing.T) {
	var log bytes.Buffer
	r := newReporter(slog.New(slog.NewTextHandler(&log, nil)), time.Hour)
	r.spanError(otlpSink, fmt.Errorf("traces export: %w", status.Error(grpccodes.Unauthenticated, "bad token")))
	r.report(Stats{FailedSpans: 512})
	if !strings.Contains(log.String(), "OTEL_EXPORTER_OTLP_HEADERS") {
		t.Errorf("no hint about the headers:\n%s", log.String())
	}
	r.spansExported()
	r.report(Stats{FailedSpans: 512, ExportedSpans: 100})
	r.report(Stats{FailedSpans: 512, ExportedSpans: 200})
	if n := strings.Count(log.String(), "span export works again"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, log.String())
	}
	r.metricError(status.Error(grpccodes.Unimplemented, "unknown service opentelemetry.proto.collector.metrics.v1.MetricsService"))
	r.report(Stats{FailedSpans: 512, ExportedSpans: 200, FailedMetricExports: 1})
	if !strings.Contains(log.String(), "OTEL_METRICS_EXPORTER=none") {
		t.Errorf("no hint for an endpoint without metrics:\n%s", log.String())
	}
}

// stuckMetrics is a metric exporter that, like otlpmetricgrpc's, lets one
// export through at a time whatever the context says, and holds the first
// until released: a collector that does not answer.
type stuckMetrics struct {
	discardMetrics
	mu      sync.Mutex
	release chan struct{}
}

func (s *stuckMetrics) Export(context.Context, *metricdata.ResourceMetrics) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	<-s.release
	return nil
}

// Releasing processes never waits on the metric exporter, even when more
// processes go than flushes may run at once and a collector holds their
// readers' exports: the worker that releases them must go on.
func TestReleaseNeverBlocks(t *testing.T) {
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "10")
	stuck := &stuckMetrics{release: make(chan struct{})}
	e := benchNew(t, nil, stuck)
	t.Cleanup(func() { close(stuck.release) }) // before benchNew's shutdown, which runs after
	for pid := range 8 {
		r := serverReq()
		r.Process = &pod.Process{PID: 100 + pid, Name: "worker", Exe: "/app/worker"}
		e.handle(r)
	}
	time.Sleep(100 * time.Millisecond) // the readers' exports begin, and stick
	done := make(chan struct{})
	go func() {
		for k, s := range e.procs {
			e.release(k, s)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("releasing processes waited on a stuck metric export")
	}
}
