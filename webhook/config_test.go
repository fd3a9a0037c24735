package webhook

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestLoadConfigDefaults(t *testing.T) {
	c, err := LoadConfig([]string{
		"PODTRACER_WEBHOOK_TLS_CERT=/tls/tls.crt",
		"PODTRACER_WEBHOOK_TLS_KEY=/tls/tls.key",
		"PODTRACER_WEBHOOK_IMAGE=ghcr.io/podtracer/podtracer:v0.1.0",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != ":9443" || c.CertReloadInterval != 10*time.Second || c.OTLPEndpoint != "" {
		t.Errorf("defaults: %+v", c)
	}
	s := c.Sidecar()
	want := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	for _, list := range []struct{ got, want corev1.ResourceList }{{s.Resources.Requests, want.Requests}, {s.Resources.Limits, want.Limits}} {
		for name, q := range list.want {
			if got := list.got[name]; got.Cmp(q) != 0 {
				t.Errorf("%s = %s, want %s", name, got.String(), q.String())
			}
		}
	}
}

func TestLoadConfigSettings(t *testing.T) {
	c, err := LoadConfig([]string{
		"PODTRACER_WEBHOOK_ADDR=127.0.0.1:8443",
		"PODTRACER_WEBHOOK_TLS_CERT=/c",
		"PODTRACER_WEBHOOK_TLS_KEY=/k",
		"PODTRACER_WEBHOOK_TLS_RELOAD_INTERVAL=1m",
		"PODTRACER_WEBHOOK_IMAGE=podtracer:dev",
		"PODTRACER_WEBHOOK_IMAGE_PULL_POLICY=Never",
		"PODTRACER_WEBHOOK_OTLP_ENDPOINT=http://collector:4317",
		"PODTRACER_WEBHOOK_OTLP_INSECURE=true",
		"PODTRACER_WEBHOOK_CPU_LIMIT=0",
		"PODTRACER_WEBHOOK_MEMORY_LIMIT=1Gi",
	})
	if err != nil {
		t.Fatal(err)
	}
	s := c.Sidecar()
	if s.ImagePullPolicy != corev1.PullNever || s.OTLPEndpoint != "http://collector:4317" || s.OTLPInsecure != "true" {
		t.Errorf("sidecar: %+v", s)
	}
	if _, ok := s.Resources.Limits[corev1.ResourceCPU]; ok {
		t.Error("CPU limit 0 should mean none")
	}
	if q := s.Resources.Limits[corev1.ResourceMemory]; q.String() != "1Gi" {
		t.Errorf("memory limit %s", q.String())
	}
}

// TestLoadConfigReportsEverything: one run shows every mistake.
func TestLoadConfigReportsEverything(t *testing.T) {
	_, err := LoadConfig([]string{
		"PODTRACER_WEBHOOK_TLS_RELOAD_INTERVAL=often",
		"PODTRACER_WEBHOOK_IMAGE_PULL_POLICY=Sometimes",
		"PODTRACER_WEBHOOK_OTLP_ENDPOINT=collector:4317",
		"PODTRACER_WEBHOOK_OTLP_INSECURE=maybe",
		"PODTRACER_WEBHOOK_CPU_REQUEST=lots",
		"PODTRACER_WEBHOOK_MEMORY_REQUEST=512Mi",
		"PODTRACER_WEBHOOK_MEMORY_LIMIT=48Mi",
		"PODTRACER_WEBHOOK_CPU_LIMIT=500u",
		"PODTRACER_LOG_LEVEL=verbose",
		"PODTRACER_LOG_FORMAT=yaml",
	})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		"PODTRACER_WEBHOOK_TLS_CERT", "PODTRACER_WEBHOOK_TLS_KEY", "PODTRACER_WEBHOOK_IMAGE\"",
		"PODTRACER_WEBHOOK_TLS_RELOAD_INTERVAL", "Sometimes", "collector:4317", "maybe",
		"lots", "memory request 512Mi is above its limit 48Mi", "PODTRACER_WEBHOOK_MEMORY_LIMIT: 48Mi is below 64Mi", "PODTRACER_WEBHOOK_CPU_LIMIT: \"500u\" is finer than Kubernetes keeps",
		"PODTRACER_LOG_LEVEL: \"verbose\"", "PODTRACER_LOG_FORMAT: \"yaml\"",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	t.Log(msg)
}

// The log level is read as the webhook's logger reads it (slog's names, any
// case, with an offset): an INFO that worked before is no mistake.
func TestLoadConfigLogLevel(t *testing.T) {
	base := []string{"PODTRACER_WEBHOOK_TLS_CERT=c", "PODTRACER_WEBHOOK_TLS_KEY=k", "PODTRACER_WEBHOOK_IMAGE=i"}
	for _, level := range []string{"INFO", "Debug", "warn+2", "error"} {
		if _, err := LoadConfig(append(base, "PODTRACER_LOG_LEVEL="+level)); err != nil {
			t.Errorf("%s: %v", level, err)
		}
	}
}

// TestLoadConfigEmptyValues: a variable set to nothing (a Helm value left
// empty) is a mistake, not a value: an empty image would make every
// annotated Deployment invalid.
func TestLoadConfigEmptyValues(t *testing.T) {
	_, err := LoadConfig([]string{
		"PODTRACER_WEBHOOK_TLS_CERT=",
		"PODTRACER_WEBHOOK_TLS_KEY=",
		"PODTRACER_WEBHOOK_IMAGE=",
	})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"PODTRACER_WEBHOOK_TLS_CERT", "PODTRACER_WEBHOOK_TLS_KEY", "PODTRACER_WEBHOOK_IMAGE"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s:\n%v", want, err)
		}
	}
}

// TestZeroRequestWithLimit: a request of 0 means none, also when there is
// a limit, which Kubernetes would otherwise copy into the request.
func TestZeroRequestWithLimit(t *testing.T) {
	c, err := LoadConfig([]string{
		"PODTRACER_WEBHOOK_TLS_CERT=/c",
		"PODTRACER_WEBHOOK_TLS_KEY=/k",
		"PODTRACER_WEBHOOK_IMAGE=podtracer:dev",
		"PODTRACER_WEBHOOK_CPU_REQUEST=0",
		"PODTRACER_WEBHOOK_MEMORY_REQUEST=0",
		"PODTRACER_WEBHOOK_MEMORY_LIMIT=0",
	})
	if err != nil {
		t.Fatal(err)
	}
	res := c.Sidecar().Resources
	if q, ok := res.Requests[corev1.ResourceCPU]; !ok || !q.IsZero() {
		t.Errorf("CPU request %v (set: %v), want an explicit 0 beside the limit", q.String(), ok)
	}
	if _, ok := res.Requests[corev1.ResourceMemory]; ok {
		t.Error("memory request written with neither request nor limit")
	}
	if _, ok := res.Limits[corev1.ResourceMemory]; ok {
		t.Error("memory limit 0 should mean none")
	}
}

// A misspelt webhook variable is named, with the one it was meant to be;
// the variables of the webhook's own Service are not the user's.
func TestUnknownVariables(t *testing.T) {
	got := UnknownVariables([]string{
		"PODTRACER_WEBHOOK_OTLP_ENDPONT=http://collector:4317",
		"PODTRACER_WEBHOOK_CPU_LIMITS=1",
		"PODTRACER_WEBHOOK_IMAGE=podtracer:dev",
		"PODTRACER_WEBHOOK_SERVICE_HOST=10.0.0.1",
		"PODTRACER_WEBHOOK_SERVICE_PORT=443",
		"PODTRACER_WEBHOOK_SERVICE_PORT_HTTPS=443",
		"PODTRACER_WEBHOOK_PORT=tcp://10.0.0.1:443",
		"PODTRACER_WEBHOOK_PORT_443_TCP=tcp://10.0.0.1:443",
		"PODTRACER_WEBHOOK_PORT_443_TCP_PROTO=tcp",
		"PODTRACER_WEBHOOK_PORT_443_TCP_PORT=443",
		"PODTRACER_WEBHOOK_PORT_443_TCP_ADDR=10.0.0.1",
		"PODTRACER_LOG_LEVEL=debug",
	})
	want := []string{
		"PODTRACER_WEBHOOK_CPU_LIMITS is not a webhook variable, and has no effect; did you mean PODTRACER_WEBHOOK_CPU_LIMIT?",
		"PODTRACER_WEBHOOK_OTLP_ENDPONT is not a webhook variable, and has no effect; did you mean PODTRACER_WEBHOOK_OTLP_ENDPOINT?",
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
