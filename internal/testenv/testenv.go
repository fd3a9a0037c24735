// Package testenv gates tests on what the machine offers. Outside CI a
// missing privilege or tool skips the test with a clear message; in CI
// (CI=true) the same gap fails the test, so a silent skip cannot hide a
// regression. It also holds the small helpers the tests of several
// packages share.
package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// InCI reports whether the tests run under CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test with reason, or fails it under CI.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("required in CI but unavailable: %s", reason)
	}
	t.Skip(reason)
}

// Privileged skips (fails in CI) unless the test runs as root, which the
// eBPF and namespace tests need.
func Privileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "privileged test: run as root (sudo go test ./...) to load eBPF programs and create namespaces")
	}
}

// LookPath returns the path of an executable the test needs, skipping (or
// failing in CI) when it is not installed.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, name+" is not installed (.ci/run installs it)")
	}
	return p
}

// Buffer is a bytes.Buffer that code under test may write to from its own
// goroutines (a logger, a printer) while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
