package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/internal/testenv"
)

// A kernel capture that does not load: outside Kubernetes the agent exits
// with the error; in a pod it logs it and waits for SIGTERM, since a
// crash-looping sidecar would keep its pod from being ready.
func TestAgentCaptureNotLoaded(t *testing.T) {
	defer func(l func(bpf.Config, *slog.Logger) (*bpf.Capture, error)) { loadCapture = l }(loadCapture)
	loadCapture = func(bpf.Config, *slog.Logger) (*bpf.Capture, error) {
		return nil, errors.New("operation not permitted")
	}
	t.Setenv("PODTRACER_TRACE_PRINTER", "off")

	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if err := runAgent(context.Background(), slog.New(slog.DiscardHandler), nil); err == nil || !strings.Contains(err.Error(), "operation not permitted") {
		t.Errorf("outside Kubernetes: %v, want the load's error", err)
	}

	t.Setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs testenv.Buffer
	defer func(w io.Writer) { logOutput = w }(logOutput)
	logOutput = &logs
	go func() { done <- runAgent(ctx, slog.New(slog.DiscardHandler), nil) }()
	select {
	case err := <-done:
		t.Fatalf("in a pod the agent returned at once: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("in a pod, after SIGTERM: %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the agent did not end after SIGTERM")
	}
	if !strings.Contains(logs.String(), "nothing is traced") || !strings.Contains(logs.String(), "operation not permitted") {
		t.Errorf("the log does not say why:\n%s", logs.String())
	}
}
