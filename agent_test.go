package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
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
	logs := waitsInPod(t, "operation not permitted")
	if !strings.Contains(logs, "nothing is traced") || !strings.Contains(logs, "operation not permitted") {
		t.Errorf("the log does not say why:\n%s", logs)
	}
}

// A configuration the agent cannot take: outside Kubernetes it exits
// with every mistake; in a pod it logs them and waits, as above.
func TestAgentConfigRefused(t *testing.T) {
	t.Setenv("PODTRACER_CAPTURE_BYTES", "lots")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if err := runAgent(context.Background(), slog.New(slog.DiscardHandler), nil); err == nil || !strings.Contains(err.Error(), "PODTRACER_CAPTURE_BYTES") {
		t.Errorf("outside Kubernetes: %v, want the configuration's error", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	waitsInPod(t, "PODTRACER_CAPTURE_BYTES")
}

// waitsInPod runs the agent as in a pod, where it cannot start: it must
// not return before SIGTERM, and must tell podtracer wait that it is not
// tracing, and why (want). It returns the agent's log.
func waitsInPod(t *testing.T, want string) string {
	t.Helper()
	t.Setenv("POD_UID", fmt.Sprintf("test-%s-%d", t.Name(), os.Getpid()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var logs testenv.Buffer
	defer func(w io.Writer) { logOutput = w }(logOutput)
	logOutput = &logs
	go func() { done <- runAgent(ctx, slog.New(slog.NewTextHandler(&logs, nil)), nil) }()
	var out strings.Builder
	if err := waitStarted([]string{"-timeout", "10s"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "not tracing") || !strings.Contains(out.String(), want) {
		t.Errorf("podtracer wait said %q, want that the agent is not tracing, and why (%s)", out.String(), want)
	}
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
	return logs.String()
}

// podtracer wait returns, without an error, when no agent has started by
// its timeout: the application starts anyway.
func TestWaitNoAgent(t *testing.T) {
	t.Setenv("POD_UID", fmt.Sprintf("test-%s-%d", t.Name(), os.Getpid()))
	var out strings.Builder
	start := time.Now()
	if err := waitStarted([]string{"-timeout", "300ms"}, &out); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("waited %v, want the timeout's 300ms", took)
	}
	if !strings.Contains(out.String(), "has not started after 300ms") {
		t.Errorf("podtracer wait said %q", out.String())
	}
	if err := waitStarted([]string{"-timeout", "soon"}, io.Discard); err == nil {
		t.Error("a timeout that is no duration was taken")
	}
}
