package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestWebhookSubcommand: `podtracer webhook`, as manifests written before
// the split say, runs the podtracer-webhook binary beside it; without
// that binary it says where it looked. The agent links none of the
// Kubernetes API's packages.
func TestWebhookSubcommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries")
	}
	dir := t.TempDir()
	agent, hook := filepath.Join(dir, "podtracer"), filepath.Join(dir, "podtracer-webhook")
	for pkg, out := range map[string]string{".": agent, "./cmd/podtracer-webhook": hook} {
		if b, err := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	out, err := exec.Command(agent, "webhook", "-h").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Usage: podtracer-webhook") || !strings.Contains(string(out), "PODTRACER_WEBHOOK_IMAGE") {
		t.Errorf("podtracer webhook -h: %v\n%s", err, out)
	}
	// Its arguments go through: a bad one is the webhook's own error.
	out, err = exec.Command(agent, "webhook", "bogus").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `podtracer-webhook: webhook: unexpected argument "bogus"`) {
		t.Errorf("podtracer webhook bogus: %v\n%s", err, out)
	}

	os.Remove(hook)
	out, err = exec.Command(agent, "webhook").CombinedOutput()
	if err == nil || !strings.Contains(string(out), hook) || !strings.Contains(string(out), "no such file") {
		t.Errorf("podtracer webhook without its binary: %v\n%s", err, out)
	}

	// Nor, built as the image's (Dockerfile), text/template: it keeps every
	// exported method of every linked type in the executable (3.5 MB of
	// the agent's memory, by grpc-go's golang.org/x/net/trace).
	deps, err := exec.Command("go", "list", "-tags", "grpcnotrace", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(deps)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasSuffix(pkg, "/podtracer/webhook") || pkg == "text/template" {
			t.Errorf("the agent links %s", pkg)
		}
	}
}
