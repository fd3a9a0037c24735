package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/podtracer/podtracer/bpf"
	"github.com/podtracer/podtracer/pod"
)

// tlsScanInterval is how often the neighbours are looked at for a TLS
// library to put the uprobes on: a new process, or one that loaded
// libssl late (Python's ssl module is imported when first used).
var tlsScanInterval = 2 * time.Second

// tlsRetryAfter is how long a process whose libraries could not be
// probed (none mapped, not selected yet, or the attach failed) waits
// before it is tried again: Python imports its ssl module when first
// used, and a process selected by its port may listen after its first
// TLS connections.
var tlsRetryAfter = 10 * time.Second

// tlsStartedTries are when a program a neighbour started (bpf.EventExec)
// is tried, from its start, until it is traced: the first try gets a Go
// program's crypto/tls, which is in the executable; the dynamic loader
// maps libssl a moment after the exec, and Python its ssl module's when
// the module is first imported, usually at start. The first is not at the
// exec itself: most programs that a pod's scripts and exec probes run
// have exited by 5 ms, and a try of a process gone costs a few failed
// opens, where one of a live one reads its /proc entry and executable
// (measured: a shell loop of 2000 /bin/true took the agent 325 µs of CPU
// per exec with a try at the exec).
var tlsStartedTries = []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second}

// maxStarted bounds the programs whose tries after their start are
// pending: past it, the oldest is left to the scans.
const maxStarted = 256

// tlsReader puts the kernel capture's uprobes on the TLS libraries of the
// selected neighbours (bpf.Capture.TraceTLS): those of a program a
// neighbour starts (bpf.EventExec), from 5 ms after its start and a few
// times in its first seconds, so that its first connections are read (a native sidecar
// starts before the application: every program of the pod's is such a
// one); those of every new process it finds at each scan; and at once
// those of a process whose TLS handshake the kernel reports
// (bpf.EventTLS), which loaded libssl late. A process with no TLS library
// it reads (libssl, Go's crypto/tls) pays nothing; one with one pays the
// uprobes on its TLS calls only.
type tlsReader struct {
	capture interface {
		TraceTLS(pid int, spoke bool) (string, error)
		UntraceTLS(pid int)
	}
	procRoot string
	// selected tells whether a process is to be traced
	// (PODTRACER_EXECUTABLE_NAME, PODTRACER_OPEN_PORTS): the others get
	// no uprobes. name is its program's kernel name, when known ("": the
	// name last seen); fresh asks for the process to be read again, not
	// taken from what is known of it (a program that has just started
	// may listen on a port of the selection any moment).
	selected  func(pid int, name string, fresh bool) bool
	logger    *slog.Logger
	handshake chan int          // pids whose handshake the kernel saw
	execs     chan startedEvent // programs the neighbours started

	// started are the programs whose tries after their start
	// (tlsStartedTries) are pending.
	started []startedProgram
	// self is the agent's own executable, which `podtracer wait`, the
	// sidecar's hook, runs in the pod: it speaks no TLS, and its
	// function table is the largest a probe would read.
	self os.FileInfo

	traced map[int]string    // pid: its libraries
	failed map[int]time.Time // pid: when it was last tried without success
	told   map[int]bool      // pids whose failure was logged
	// unspoken are the Go programs whose uprobes wait for their first
	// TLS connection (bpf.ErrTLSNotSpoken): a handshake tries them at once.
	unspoken map[int]bool
}

type startedEvent struct {
	pid  int
	name string
	at   time.Time
}

type startedProgram struct {
	startedEvent
	tries int // of tlsStartedTries, done
}

func newTLSReader(capture *bpf.Capture, procRoot string, selected func(pid int, name string, fresh bool) bool, logger *slog.Logger) *tlsReader {
	r := &tlsReader{capture: capture, procRoot: procRoot, selected: selected, logger: logger, handshake: make(chan int, 64),
		execs: make(chan startedEvent, 64), traced: map[int]string{}, failed: map[int]time.Time{}, told: map[int]bool{}, unspoken: map[int]bool{}}
	if exe, err := os.Executable(); err == nil {
		r.self, _ = os.Stat(exe)
	}
	return r
}

// sawHandshake tells the reader that process pid began a TLS connection.
// It never blocks: the capture's loop calls it.
func (r *tlsReader) sawHandshake(pid int) {
	select {
	case r.handshake <- pid:
	default: // the next scan gets to it
	}
}

// sawExec tells the reader that process pid started the program name. It
// never blocks: the capture's loop calls it.
func (r *tlsReader) sawExec(pid int, name string) {
	select {
	case r.execs <- startedEvent{pid: pid, name: name, at: time.Now()}:
	default: // the next scan gets to it
	}
}

// run scans the neighbours every tlsScanInterval, tries a program a
// neighbour started at tlsStartedTries, and a process whose handshake the
// kernel saw at once, until ctx ends.
func (r *tlsReader) run(ctx context.Context) {
	tick := time.NewTicker(tlsScanInterval)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	r.scan()
	// The first uprobes loaded their programs (the kernel's BTF for their
	// relocations) and read the libraries' symbols: a few MB of garbage,
	// given back now rather than when the scavenger gets to it, as after
	// the capture's load.
	debug.FreeOSMemory()
	for {
		select {
		case <-ctx.Done():
			return
		case pid := <-r.handshake:
			r.try(pid, true)
		case ev := <-r.execs:
			r.startedProgram(ev)
			retry.Reset(r.nextStartedTry(time.Now()))
		case <-retry.C:
			// Now, not the timer's time: a try may have kept this
			// goroutine busy past it.
			now := time.Now()
			r.retryStarted(now)
			retry.Reset(r.nextStartedTry(now))
		case <-tick.C:
			r.scan()
		}
	}
}

// startedProgram takes a program a neighbour has just started: what was
// known of the process's last program (a failure, a log line) is not its,
// and it is tried at tlsStartedTries until it is traced. Meanwhile it is
// not held back by tlsRetryAfter: a handshake, or a scan, tries it at once.
func (r *tlsReader) startedProgram(ev startedEvent) {
	r.started = slices.DeleteFunc(r.started, func(p startedProgram) bool { return p.pid == ev.pid })
	delete(r.failed, ev.pid)
	delete(r.told, ev.pid)
	delete(r.unspoken, ev.pid)
	if len(r.started) == maxStarted {
		// The oldest has had most of its tries; a new program's first
		// ones matter more.
		r.started = r.started[1:]
	}
	r.started = append(r.started, startedProgram{startedEvent: ev})
}

// retryStarted tries the started programs whose next try is due, and
// forgets those traced, gone, or tried for the last time (held back by
// tlsRetryAfter from then on, as any process that failed).
func (r *tlsReader) retryStarted(now time.Time) {
	kept := r.started[:0]
	for _, p := range r.started {
		if now.Sub(p.at) >= tlsStartedTries[p.tries] {
			p.tries++
			delete(r.failed, p.pid) // a handshake's try meanwhile
			name := ""
			if p.tries == 1 {
				name = p.name // its name at the exec, for the registry
			}
			if !r.tryNamed(p.pid, false, name, true) || p.tries == len(tlsStartedTries) {
				continue
			}
			delete(r.failed, p.pid)
		}
		kept = append(kept, p)
	}
	r.started = kept
}

// nextStartedTry is how long from now the next try of a started program
// is due (an hour when none is pending).
func (r *tlsReader) nextStartedTry(now time.Time) time.Duration {
	next := time.Hour
	for _, p := range r.started {
		next = min(next, max(0, p.at.Add(tlsStartedTries[p.tries]).Sub(now)))
	}
	return next
}

// scan tries every neighbour (those tried without success at most every
// tlsRetryAfter), which also checks that those it traces are still the
// processes it probed, and forgets the processes that exited.
func (r *tlsReader) scan() {
	pids, err := pod.Neighbours(r.procRoot)
	if err != nil {
		return // pod.Watch logs it
	}
	alive := make(map[int]bool, len(pids))
	for _, pid := range pids {
		alive[pid] = true
		r.try(pid, false)
	}
	for pid := range r.traced {
		if !alive[pid] {
			r.capture.UntraceTLS(pid)
			delete(r.traced, pid)
			delete(r.unspoken, pid)
		}
	}
	for pid := range r.failed {
		if !alive[pid] {
			delete(r.failed, pid)
			delete(r.told, pid)
			delete(r.unspoken, pid)
		}
	}
}

// try puts the uprobes on process pid's TLS libraries, if it has some and
// they are not there yet (for a traced process, TraceTLS checks that it is
// still the same, and probes a library it loaded since). A process tried
// without success is tried again at most every tlsRetryAfter. handshake
// says that the process speaks TLS: one without a TLS library it reads is
// then worth a line in the log, and a Go program whose uprobes wait for
// its first TLS connection (bpf.ErrTLSNotSpoken) gets them.
func (r *tlsReader) try(pid int, handshake bool) {
	r.tryNamed(pid, handshake, "", false)
}

// tryNamed is try for a process whose program's kernel name is name (""
// when not known), read again for the selection when fresh (a program
// just started). It tells whether a later try may find what this one did
// not: no TLS library mapped yet (bpf.ErrNoTLSLibrary), or, fresh, not
// selected yet (it may listen on a port of the selection soon).
func (r *tlsReader) tryNamed(pid int, handshake bool, name string, fresh bool) (later bool) {
	if _, traced := r.traced[pid]; traced && handshake && !r.unspoken[pid] {
		return false // one handshake per connection: the scans check traced processes
	}
	if last, tried := r.failed[pid]; tried && time.Since(last) < tlsRetryAfter && !(handshake && r.unspoken[pid]) {
		return false
	}
	if _, traced := r.traced[pid]; !traced && r.isSelf(pid) {
		// Looked at until traced: a traced process is not the agent's
		// executable, and the scans try every traced one again.
		r.failed[pid] = time.Now()
		return false
	}
	if r.selected != nil && !r.selected(pid, name, fresh) {
		r.failed[pid] = time.Now()
		_, err := os.Stat(filepath.Join(r.procRoot, strconv.Itoa(pid)))
		return fresh && err == nil
	}
	library, err := r.capture.TraceTLS(pid, handshake)
	if errors.Is(err, bpf.ErrTLSNotSpoken) {
		// A Go program's crypto/tls waits for its first handshake; its
		// libssl, if it maps one, is probed already.
		r.unspoken[pid] = true
		if library != "" {
			err = nil
		}
	} else {
		delete(r.unspoken, pid)
	}
	if err != nil {
		r.failed[pid] = time.Now()
		delete(r.traced, pid) // gone, or another program without libssl now: TraceTLS took its uprobes off
	}
	switch {
	case err == nil:
		delete(r.failed, pid)
		if r.traced[pid] != library {
			r.traced[pid] = library
			r.logger.Info("reading TLS plaintext", "pid", pid, "process", r.name(pid), "library", library)
		}
	case errors.Is(err, bpf.ErrNoTLSLibrary):
		if handshake && !r.told[pid] {
			r.told[pid] = true
			r.logger.Info("a neighbour speaks TLS that the agent cannot read: its TLS connections give no spans",
				"pid", pid, "process", r.name(pid), "reason", err)
		}
		return true
	case errors.Is(err, bpf.ErrTLSNotSpoken):
		// Its first handshake tries it again. Its libssl failed if
		// the error says more.
		if err != bpf.ErrTLSNotSpoken && !r.told[pid] {
			r.told[pid] = true
			r.logger.Warn("cannot read a neighbour's TLS plaintext", "pid", pid, "process", r.name(pid), "error", err)
		}
	case errors.Is(err, bpf.ErrClosed), errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ESRCH):
		// The agent is stopping, or the process is gone.
	default:
		if !r.told[pid] {
			r.told[pid] = true
			r.logger.Warn("cannot read a neighbour's TLS plaintext", "pid", pid, "process", r.name(pid), "error", err)
		}
	}
	return false
}

// isSelf tells whether process pid runs the agent's executable.
func (r *tlsReader) isSelf(pid int) bool {
	if r.self == nil {
		return false
	}
	exe, err := os.Stat(filepath.Join(r.procRoot, strconv.Itoa(pid), "exe"))
	return err == nil && os.SameFile(exe, r.self)
}

func (r *tlsReader) name(pid int) string {
	return pod.ReadProcess(r.procRoot, pid, "").Name
}
