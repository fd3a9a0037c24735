package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/bpf"
)

// fakeTLSCapture answers TraceTLS from a table, and records the calls.
type fakeTLSCapture struct {
	results  map[int]error // pid: TraceTLS's error; absent: traced, libssl.so.3
	traced   []int
	untraced []int
}

func (f *fakeTLSCapture) TraceTLS(pid int, spoke bool) (string, error) {
	f.traced = append(f.traced, pid)
	switch err := f.results[pid]; {
	case err == errGoAndSSL && spoke:
		return "/usr/lib/libssl.so.3,/app (Go crypto/tls)", nil
	case err == errGoAndSSL:
		return "/usr/lib/libssl.so.3", bpf.ErrTLSNotSpoken
	case err != nil && !(spoke && err == bpf.ErrTLSNotSpoken):
		return "", err
	}
	return "/usr/lib/libssl.so.3", nil
}

// errGoAndSSL makes fakeTLSCapture a Go program that maps libssl too.
var errGoAndSSL = errors.New("Go and libssl")

func (f *fakeTLSCapture) UntraceTLS(pid int) { f.untraced = append(f.untraced, pid) }

// TestTLSReader: a scan tries every selected neighbour once and logs each
// library once; a process without libssl is tried again only when it
// speaks TLS, at most every tlsRetryAfter, and is worth a line then, once;
// an exited process's uprobes are taken off; a handshake never blocks the
// capture's loop.
func TestTLSReader(t *testing.T) {
	root := t.TempDir()
	for _, pid := range []int{10, 11, 12, 13} {
		os.Mkdir(filepath.Join(root, fmt.Sprint(pid)), 0o755)
	}
	fake := &fakeTLSCapture{results: map[int]error{11: bpf.ErrNoTLSLibrary, 12: fmt.Errorf("uprobe: %w", os.ErrPermission)}}
	var log bytes.Buffer
	r := &tlsReader{capture: fake, procRoot: root, logger: slog.New(slog.NewTextHandler(&log, nil)), handshake: make(chan int, 1),
		selected: func(pid int) bool { return pid != 13 }, traced: map[int]string{}, failed: map[int]time.Time{}, told: map[int]bool{}, unspoken: map[int]bool{}}

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
	if !slices.Equal(fake.traced, []int{10, 11, 12, 10}) {
		t.Errorf("TraceTLS asked of %v, want [10 11 12 10] (13 is not selected; 11 and 12 failed, and wait tlsRetryAfter)", fake.traced)
	}
	r.try(11, true) // too soon
	for range 2 {
		r.failed[11] = time.Now().Add(-tlsRetryAfter)
		r.try(11, true)
	}
	if n := strings.Count(log.String(), `cannot read: its TLS connections give no spans" pid=11`); n != 1 {
		t.Errorf("pid 11's TLS without libssl logged %d times, want 1:\n%s", n, log.String())
	}
	if n := len(fake.traced); n != 6 {
		t.Errorf("TraceTLS asked %d times, want 6 (pid 11 again, twice, after tlsRetryAfter each)", n)
	}
	// A scan tries again those that failed, after tlsRetryAfter: 12 and
	// 13 (now selected), and 11; 10 as always.
	r.failed[11], r.failed[12], r.failed[13] = time.Now().Add(-tlsRetryAfter), time.Now().Add(-tlsRetryAfter), time.Now().Add(-tlsRetryAfter)
	r.selected = nil
	r.scan()
	if got := fake.traced[6:]; !slices.Equal(got, []int{10, 11, 12, 13}) {
		t.Errorf("the scan after tlsRetryAfter asked of %v, want [10 11 12 13]", got)
	}

	os.Remove(filepath.Join(root, "10"))
	r.scan()
	if len(fake.untraced) != 1 || fake.untraced[0] != 10 {
		t.Errorf("untraced %v, want [10]", fake.untraced)
	}
	if _, ok := r.traced[10]; ok {
		t.Error("pid 10 still traced")
	}

	// A handshake of a traced process asks nothing: a busy TLS server
	// makes one per connection.
	asked := len(fake.traced)
	r.try(13, true)
	if len(fake.traced) != asked {
		t.Errorf("TraceTLS asked again of a traced process at its handshake")
	}

	for pid := range 3 {
		r.sawHandshake(pid) // the channel holds one: the others must not block
	}
}

// TestTLSReaderGoAtHandshake: a Go program whose uprobes wait for its
// first TLS connection (bpf.ErrTLSNotSpoken) is neither logged nor held
// back by tlsRetryAfter: its first handshake probes it at once.
func TestTLSReaderGoAtHandshake(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "20"), 0o755)
	fake := &fakeTLSCapture{results: map[int]error{20: bpf.ErrTLSNotSpoken}}
	var log bytes.Buffer
	r := &tlsReader{capture: fake, procRoot: root, logger: slog.New(slog.NewTextHandler(&log, nil)), handshake: make(chan int, 1),
		traced: map[int]string{}, failed: map[int]time.Time{}, told: map[int]bool{}, unspoken: map[int]bool{}}
	r.scan()
	r.scan() // within tlsRetryAfter: not asked
	if log.Len() != 0 || len(r.traced) != 0 || len(fake.traced) != 1 {
		t.Fatalf("after two scans: traced %v, asked %v, log:\n%s", r.traced, fake.traced, log.String())
	}
	r.try(20, true)
	if _, ok := r.traced[20]; !ok || len(fake.traced) != 2 {
		t.Fatalf("after its handshake: traced %v, asked %v", r.traced, fake.traced)
	}
	if !strings.Contains(log.String(), `msg="reading TLS plaintext" pid=20`) {
		t.Errorf("log:\n%s", log.String())
	}

	// A Go program that maps libssl too: traced for its libssl at the
	// scan, and its handshake still probes its Go.
	os.Mkdir(filepath.Join(root, "21"), 0o755)
	fake.results[21] = errGoAndSSL
	r.scan()
	if lib := r.traced[21]; lib != "/usr/lib/libssl.so.3" {
		t.Fatalf("after the scan: pid 21 traced for %q", lib)
	}
	r.try(21, true)
	if lib := r.traced[21]; !strings.Contains(lib, "Go crypto/tls") {
		t.Errorf("after its handshake: pid 21 traced for %q", lib)
	}
	r.try(21, true)
	if n := slices.Index(fake.traced, 21); n < 0 || len(fake.traced)-n != 2 {
		t.Errorf("TraceTLS asked of %v: pid 21 twice, its second handshake asking nothing", fake.traced)
	}
}
