package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podtracer/podtracer/bpf"
)

// fakeTLSCapture answers TraceTLS from a table, and records the calls.
type fakeTLSCapture struct {
	results  map[int]error // pid: TraceTLS's error; absent: traced, libssl.so.3
	traced   []int
	untraced []int
}

func (f *fakeTLSCapture) TraceTLS(pid int) (string, error) {
	f.traced = append(f.traced, pid)
	if err := f.results[pid]; err != nil {
		return "", err
	}
	return "/usr/lib/libssl.so.3", nil
}

func (f *fakeTLSCapture) UntraceTLS(pid int) { f.untraced = append(f.untraced, pid) }

// TestTLSReader: a scan tries every neighbour and logs each library once;
// a process without libssl is worth a line only when it speaks TLS, and
// once; an exited process's uprobes are taken off; a handshake never
// blocks the capture's loop.
func TestTLSReader(t *testing.T) {
	root := t.TempDir()
	for _, pid := range []int{10, 11, 12} {
		os.Mkdir(filepath.Join(root, fmt.Sprint(pid)), 0o755)
	}
	fake := &fakeTLSCapture{results: map[int]error{11: bpf.ErrNoTLSLibrary, 12: fmt.Errorf("uprobe: %w", os.ErrPermission)}}
	var log bytes.Buffer
	r := &tlsReader{capture: fake, procRoot: root, logger: slog.New(slog.NewTextHandler(&log, nil)), handshake: make(chan int, 1),
		traced: map[int]string{}, told: map[int]bool{}}

	r.scan()
	r.scan()
	if n := strings.Count(log.String(), `msg="reading TLS plaintext" pid=10 `); n != 1 {
		t.Errorf("pid 10's library logged %d times, want 1:\n%s", n, log.String())
	}
	if strings.Contains(log.String(), "pid=11") {
		t.Errorf("a process without libssl and without TLS logged:\n%s", log.String())
	}
	if n := strings.Count(log.String(), "pid=12"); n != 1 {
		t.Errorf("pid 12's failure logged %d times, want 1:\n%s", n, log.String())
	}
	r.try(11, true)
	r.try(11, true)
	if n := strings.Count(log.String(), `cannot read: its TLS connections give no spans" pid=11`); n != 1 {
		t.Errorf("pid 11's TLS without libssl logged %d times, want 1:\n%s", n, log.String())
	}

	os.Remove(filepath.Join(root, "10"))
	r.scan()
	if len(fake.untraced) != 1 || fake.untraced[0] != 10 {
		t.Errorf("untraced %v, want [10]", fake.untraced)
	}
	if _, ok := r.traced[10]; ok {
		t.Error("pid 10 still traced")
	}

	for pid := range 3 {
		r.sawHandshake(pid) // the channel holds one: the others must not block
	}
}
