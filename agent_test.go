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
	logs := waitsInPod(t, "kernel programs did not load")
	if !strings.Contains(logs, "nothing is traced") || !strings.Contains(logs, "operation not permitted") {
		t.Errorf("the log does not say why:\n%s", logs)
	}
}

// A configuration the agent cannot take: outside Kubernetes it exits
// with every mistake; in a pod it logs them and waits, as above.
func TestAgentConfigRefused(t *testing.T) {
	t.Setenv("PODTRACER_CAPTURE_BYTES", "lots")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t%zz") // refused too, and secret
	t.Setenv("PODTRACER_OPEN_PORT", "8080")                     // a warning: said with the errors
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if err := runAgent(context.Background(), slog.New(slog.DiscardHandler), nil); err == nil || !strings.Contains(err.Error(), "PODTRACER_CAPTURE_BYTES") {
		t.Errorf("outside Kubernetes: %v, want the configuration's error", err)
	}
	// In some pod, but not as its sidecar (no downward-API variables):
	// a program run by hand, which exits too.
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	t.Setenv("POD_UID", "")
	t.Setenv("POD_NAME", "")
	if err := runAgent(context.Background(), slog.New(slog.DiscardHandler), nil); err == nil {
		t.Error("run by hand in a pod: no error")
	}
	logs := waitsInPod(t, "configuration was refused")
	if !strings.Contains(logs, "PODTRACER_CAPTURE_BYTES") || !strings.Contains(logs, "did you mean PODTRACER_OPEN_PORTS?") {
		t.Errorf("the log does not say why, and what else is amiss:\n%s", logs)
	}
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
	if err := waitStarted(context.Background(), []string{"-timeout", "10s"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "not tracing") || !strings.Contains(out.String(), want) {
		t.Errorf("podtracer wait said %q, want that the agent is not tracing, and what failed (%s)", out.String(), want)
	}
	if strings.Contains(out.String(), "s3cr3t") {
		t.Errorf("podtracer wait said %q: a secret, to anyone in the pod", out.String())
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
// its timeout, at SIGTERM, and whatever its arguments: the application
// starts anyway.
func TestWaitNoAgent(t *testing.T) {
	t.Setenv("POD_UID", fmt.Sprintf("test-%s-%d", t.Name(), os.Getpid()))
	var out strings.Builder
	start := time.Now()
	if err := waitStarted(context.Background(), []string{"-timeout", "300ms"}, &out); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("waited %v, want the timeout's 300ms", took)
	}
	if !strings.Contains(out.String(), "no answer from the agent after 300ms") {
		t.Errorf("podtracer wait said %q", out.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	for _, args := range [][]string{{"-timeout", "soon"}, {"-h"}, {"extra", "-timeout=3"}} {
		out.Reset()
		if err := waitStarted(ctx, args, &out); err != nil {
			t.Errorf("podtracer wait %q: %v", args, err)
		}
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("podtracer wait went on %v after SIGTERM", took)
	}

	t.Setenv("POD_UID", "")
	start = time.Now()
	out.Reset()
	waitStarted(context.Background(), nil, &out)
	if !strings.Contains(out.String(), "no POD_UID") || time.Since(start) > time.Second {
		t.Errorf("without POD_UID, podtracer wait said %q after %v", out.String(), time.Since(start))
	}
}

// podtracer wait gets the agent's answer, as the agent gives it once it
// traces, and only from the agent of its own pod.
func TestWaitAnswer(t *testing.T) {
	uid := fmt.Sprintf("test-%s-%d", t.Name(), os.Getpid())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	announceStarted(ctx, slog.New(slog.DiscardHandler), uid, "tracing")
	t.Setenv("POD_UID", uid)
	var out strings.Builder
	start := time.Now()
	waitStarted(context.Background(), nil, &out)
	if got := out.String(); got != "podtracer wait: the agent answered: tracing\n" || time.Since(start) > 5*time.Second {
		t.Errorf("podtracer wait said %q after %v", got, time.Since(start))
	}
	t.Setenv("POD_UID", uid+"-other")
	out.Reset()
	waitStarted(context.Background(), []string{"-timeout", "100ms"}, &out)
	if strings.Contains(out.String(), "answered") {
		t.Errorf("another pod's agent answered: %q", out.String())
	}
	// Once the agent stops, nobody answers.
	cancel()
	time.Sleep(50 * time.Millisecond)
	t.Setenv("POD_UID", uid)
	out.Reset()
	waitStarted(context.Background(), []string{"-timeout", "100ms"}, &out)
	if strings.Contains(out.String(), "answered") {
		t.Errorf("a stopped agent answered: %q", out.String())
	}
}
