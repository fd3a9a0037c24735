package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/internal/testenv"
)

// TestKafka runs a kfake broker (a Kafka-protocol broker, in its own
// process) outside the pod, and Kafka clients in the pod with the agent:
// franz-go (kafkaapp) and kcat (librdkafka). The clients' spans must name
// the topic and partition, and put the broker on the peer's side.
func TestKafka(t *testing.T) {
	privileged(t)
	kcat := testenv.LookPath(t, "kcat")
	kafkaapp := fixture(t, "kafkaapp")

	rcv := otlptest.Start(t)
	port := freePort(t)
	broker := start(t, exec.Command(kafkaapp, "-broker", fmt.Sprint(port)))
	broker.waitOutput(t, "broker listening", 1, 20*time.Second)
	waitListening(t, port)
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	pod := newPod(t)
	agent := startAgent(t, pod, agentEnv(rcv))

	client := start(t, pod.command(kafkaapp, "-client", addr))
	for _, line := range []string{"produce orders 3", "produce2 orders events", "consume orders 4"} {
		fmt.Fprintln(client.stdin, line)
	}
	client.waitOutput(t, "ok", 3, 60*time.Second)
	if strings.Contains(client.output(), "error") {
		t.Fatalf("kafkaapp: %s", client.output())
	}
	run(t, pod.command("sh", "-c", fmt.Sprintf("printf 'one\\ntwo\\n' | %s -P -b %s -t events -p 2", kcat, addr)))
	if out := run(t, pod.command(kcat, "-C", "-b", addr, "-t", "events", "-p", "2", "-o", "beginning", "-c", "2", "-e", "-q")); !strings.Contains(out, "two") {
		t.Fatalf("kcat consumed %q", out)
	}

	spans := rcv.WaitSpans(t, 30*time.Second, func(s []otlptest.Span) bool {
		return findKafka(s, "send", "orders", "kafkaapp") != nil &&
			findKafka(s, "receive", "orders", "kafkaapp") != nil &&
			findKafka(s, "send", "events", "rdkafka") != nil &&
			findKafka(s, "receive", "events", "rdkafka") != nil &&
			findMultiSend(s) != nil
	})
	if t.Failed() {
		t.Logf("agent log:\n%s", agent.output())
		return
	}

	t.Run("franz-go producer", func(t *testing.T) {
		s := findKafka(spans, "send", "orders", "kafkaapp")
		if s.Name != "send orders" || s.Kind != trace.SpanKindClient {
			t.Errorf("name %q kind %v", s.Name, s.Kind)
		}
		expectKafka(t, s, "send", "orders", "0", "kafkaapp", port)
		expectResource(t, s, "kafkaapp")
		if c, ok := s.Attributes["messaging.batch.message_count"]; ok {
			t.Errorf("a send of one message has messaging.batch.message_count %v", c)
		}
		if d := s.End.Sub(s.Start); d <= 0 || d > 10*time.Second {
			t.Errorf("duration %v", d)
		}
		if s.StatusCode == codes.Error {
			t.Errorf("error status: %s", s.StatusMessage)
		}
		// produce2 wrote to two topics in one request: one span, no
		// single destination, a batch of two messages.
		multi := findMultiSend(spans)
		if multi == nil {
			t.Fatal("no span for the send to two topics")
		}
		if _, ok := multi.Attributes["messaging.destination.name"]; ok {
			t.Errorf("a send to two topics has a destination: %v", multi.Attributes)
		}
		if c := multi.Attributes["messaging.batch.message_count"]; c != int64(2) {
			t.Errorf("a send of two messages: messaging.batch.message_count %v", c)
		}
	})

	t.Run("franz-go consumer", func(t *testing.T) {
		s := findKafka(spans, "receive", "orders", "kafkaapp")
		if s.Name != "poll orders" || s.Kind != trace.SpanKindClient {
			t.Errorf("name %q kind %v", s.Name, s.Kind)
		}
		expectKafka(t, s, "receive", "orders", "0", "kafkaapp", port)
	})

	t.Run("kcat", func(t *testing.T) {
		for _, op := range []string{"send", "receive"} {
			s := findKafka(spans, op, "events", "rdkafka")
			expectKafka(t, s, op, "events", "2", "rdkafka", port)
			if s.Resource["service.name"] != "kcat" {
				t.Errorf("%s: resource %v", s.Name, s.Resource["service.name"])
			}
		}
	})

	t.Run("the broker is the peer", func(t *testing.T) {
		for _, s := range spans {
			if s.Attributes["messaging.system"] != "kafka" {
				continue
			}
			if s.Kind == trace.SpanKindServer || s.Kind == trace.SpanKindConsumer {
				t.Errorf("span of kind %v: %s %v", s.Kind, s.Name, s.Resource["service.name"])
			}
			if s.Attributes["server.port"] != int64(port) {
				t.Errorf("%s: server.port %v, want the broker's %d", s.Name, s.Attributes["server.port"], port)
			}
		}
	})

	t.Run("metrics", func(t *testing.T) {
		points := rcv.WaitMetric(t, 10*time.Second, func(m []otlptest.MetricPoint) bool {
			return kafkaHistogram(m, "send", "orders") != nil
		})
		p := kafkaHistogram(points, "send", "orders")
		if p == nil || p.Count < 3 || p.Unit != "s" {
			t.Fatalf("messaging.client.operation.duration for send orders: %+v", p)
		}
		if p.Attributes["messaging.system"] != "kafka" || p.Attributes["server.port"] != int64(port) {
			t.Errorf("attributes %v", p.Attributes)
		}
	})
}

// findKafka finds a span by its operation, topic and messaging.client.id.
func findKafka(spans []otlptest.Span, op, topic, clientID string) *otlptest.Span {
	for i := range spans {
		s := &spans[i]
		if s.Attributes["messaging.system"] == "kafka" && s.Attributes["messaging.operation.type"] == op &&
			s.Attributes["messaging.destination.name"] == topic && s.Attributes["messaging.client.id"] == clientID {
			return s
		}
	}
	return nil
}

// findMultiSend finds kafkaapp's send to two topics in one request: its
// span has no single destination, so it is named by the operation alone.
func findMultiSend(spans []otlptest.Span) *otlptest.Span {
	for i := range spans {
		s := &spans[i]
		if s.Name == "send" && s.Attributes["messaging.client.id"] == "kafkaapp" {
			return s
		}
	}
	return nil
}

func expectKafka(t *testing.T, s *otlptest.Span, op, topic, partition, clientID string, port int) {
	t.Helper()
	if s == nil {
		t.Fatalf("no %s span for %s", op, topic)
	}
	expect(t, s, map[string]any{
		"messaging.system":                   "kafka",
		"messaging.operation.type":           op,
		"messaging.operation.name":           map[string]string{"send": "send", "receive": "poll"}[op],
		"messaging.destination.name":         topic,
		"messaging.destination.partition.id": partition,
		"messaging.client.id":                clientID,
		"server.address":                     "127.0.0.1",
		"server.port":                        int64(port),
	})
}

func kafkaHistogram(points []otlptest.MetricPoint, op, topic string) *otlptest.MetricPoint {
	for i := range points {
		p := &points[i]
		if p.Name == "messaging.client.operation.duration" && p.Resource["service.name"] == "kafkaapp" &&
			p.Attributes["messaging.operation.type"] == op && p.Attributes["messaging.destination.name"] == topic {
			return p
		}
	}
	return nil
}
