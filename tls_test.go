package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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
		selected: func(pid int, _ string, _ bool) bool { return pid != 13 }, traced: map[int]string{}, failed: map[int]time.Time{}, told: map[int]bool{}, unspoken: map[int]bool{}}

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

// TestTLSReaderStarted: a program a neighbour starts is tried from a
// moment after its start (most of a script's programs are gone by then),
// whatever its pid's last program left (a failure within tlsRetryAfter),
// read again for the selection, with its name; while it maps no TLS
// library it is tried again at tlsStartedTries, and a handshake
// meanwhile tries it at once; no more once traced, gone, or tried for the
// last time; a server selected by its port once it listens; never the
// agent's own executable. sawExec never blocks the capture's loop.
func TestTLSReaderStarted(t *testing.T) {
	root := t.TempDir()
	fake := &fakeTLSCapture{results: map[int]error{30: bpf.ErrNoTLSLibrary, 31: bpf.ErrNoTLSLibrary, 32: bpf.ErrNoTLSLibrary}}
	var names []string
	r := newTLSReaderForTest(fake, root)
	r.selected = func(pid int, name string, fresh bool) bool {
		if fresh {
			names = append(names, name)
		}
		return true
	}
	asked := func(pid int) int {
		n := 0
		for _, p := range fake.traced {
			if p == pid {
				n++
			}
		}
		return n
	}

	t0 := time.Now()
	r.failed[30] = t0 // its last program, a moment ago
	r.startedProgram(startedEvent{pid: 30, name: "python3", at: t0})
	r.startedProgram(startedEvent{pid: 31, name: "sh", at: t0})
	r.startedProgram(startedEvent{pid: 32, name: "curl", at: t0})
	if d := r.nextStartedTry(t0); d != tlsStartedTries[0] {
		t.Errorf("first try in %v, want %v", d, tlsStartedTries[0])
	}
	r.retryStarted(t0.Add(tlsStartedTries[0] / 2))
	if len(fake.traced) != 0 {
		t.Errorf("tried before its time: %v", fake.traced)
	}
	r.retryStarted(t0.Add(tlsStartedTries[0]))
	if asked(30) != 1 || asked(31) != 1 || !slices.Equal(names, []string{"python3", "sh", "curl"}) {
		t.Fatalf("at the first try: asked %v, read again with the names %v", fake.traced, names)
	}
	r.retryStarted(t0.Add(tlsStartedTries[1]))
	if asked(30) != 2 || asked(31) != 2 {
		t.Errorf("not tried again at %v: %v", tlsStartedTries[1], fake.traced)
	}
	// Between two tries, a handshake tries it at once, as a scan does:
	// the failures of its first moments do not hold it back.
	r.try(31, true)
	if asked(31) != 3 {
		t.Errorf("a started program's handshake asked nothing: %v", fake.traced)
	}
	// The loader has mapped libssl into 30; 32 has exited.
	delete(fake.results, 30)
	fake.results[32] = fmt.Errorf("read maps: %w", os.ErrNotExist)
	r.retryStarted(t0.Add(tlsStartedTries[2]))
	if _, ok := r.traced[30]; !ok || asked(30) != 3 || asked(32) != 3 {
		t.Fatalf("at %v: traced %v, asked %v", tlsStartedTries[2], r.traced, fake.traced)
	}
	for _, at := range tlsStartedTries[3:] {
		r.retryStarted(t0.Add(at))
	}
	r.retryStarted(t0.Add(time.Minute))
	if asked(30) != 3 || asked(32) != 3 || asked(31) != 1+len(tlsStartedTries) {
		t.Errorf("asked %v: 30 traced, 32 gone, 31 tried %d times in all", fake.traced, 1+len(tlsStartedTries))
	}
	if _, held := r.failed[31]; !held {
		t.Error("tried for the last time, 31 is not held back by tlsRetryAfter")
	}
	if len(r.started) != 0 || r.nextStartedTry(t0) != time.Hour {
		t.Errorf("tries still pending: %v", r.started)
	}

	// A server selected by its port is not selected at first, before it
	// listens: it is tried again, and probed once it is selected.
	os.Mkdir(filepath.Join(root, "33"), 0o755)
	listening := false
	r.selected = func(pid int, _ string, _ bool) bool { return pid != 33 || listening }
	r.startedProgram(startedEvent{pid: 33, name: "server", at: t0})
	r.retryStarted(t0.Add(tlsStartedTries[0]))
	listening = true
	r.retryStarted(t0.Add(tlsStartedTries[1]))
	if _, ok := r.traced[33]; !ok || asked(33) != 1 {
		t.Errorf("a server selected after its start: traced %v, asked %v", r.traced, fake.traced)
	}

	// The agent's own executable (podtracer wait, the sidecar's hook) is
	// not probed.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(root, "40"), 0o755)
	if err := os.Symlink(self, filepath.Join(root, "40", "exe")); err != nil {
		t.Fatal(err)
	}
	r.startedProgram(startedEvent{pid: 40, name: "podtracer", at: t0})
	r.retryStarted(t0.Add(tlsStartedTries[0]))
	if asked(40) != 0 {
		t.Errorf("the agent's own executable probed")
	}

	// Past maxStarted pending, the oldest is left to the scans.
	for pid := range maxStarted + 1 {
		r.startedProgram(startedEvent{pid: 1000 + pid, at: t0})
	}
	if len(r.started) != maxStarted || r.started[len(r.started)-1].pid != 1000+maxStarted || r.started[0].pid != 1001 {
		t.Errorf("%d pending, from %d to %d", len(r.started), r.started[0].pid, r.started[len(r.started)-1].pid)
	}

	for pid := range 2 * cap(r.execs) {
		r.sawExec(pid, "sh") // the channel holds 64: the others must not block
	}
}

func newTLSReaderForTest(capture *fakeTLSCapture, root string) *tlsReader {
	r := newTLSReader(nil, root, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.capture = capture
	return r
}
