package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"runtime/debug"
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

// tlsReader puts the kernel capture's uprobes on the TLS libraries of the
// selected neighbours (bpf.Capture.TraceTLS): those of every new process
// it finds at each scan, and at once those of a process whose TLS
// handshake the kernel reports (bpf.EventTLS), so that a short-lived
// client's first requests are not missed for want of a scan. A process
// with no TLS library it reads (libssl, Go's crypto/tls) pays nothing; one
// with one pays the uprobes on its TLS calls only.
type tlsReader struct {
	capture interface {
		TraceTLS(pid int, spoke bool) (string, error)
		UntraceTLS(pid int)
	}
	procRoot string
	// selected tells whether a process is to be traced
	// (PODTRACER_EXECUTABLE_NAME, PODTRACER_OPEN_PORTS): the others get
	// no uprobes.
	selected  func(pid int) bool
	logger    *slog.Logger
	handshake chan int // pids whose handshake the kernel saw

	traced map[int]string    // pid: its libraries
	failed map[int]time.Time // pid: when it was last tried without success
	told   map[int]bool      // pids whose failure was logged
	// unspoken are the Go programs whose uprobes wait for their first
	// TLS connection (bpf.ErrTLSNotSpoken): a handshake tries them at once.
	unspoken map[int]bool
}

func newTLSReader(capture *bpf.Capture, procRoot string, selected func(pid int) bool, logger *slog.Logger) *tlsReader {
	return &tlsReader{capture: capture, procRoot: procRoot, selected: selected, logger: logger, handshake: make(chan int, 64),
		traced: map[int]string{}, failed: map[int]time.Time{}, told: map[int]bool{}, unspoken: map[int]bool{}}
}

// sawHandshake tells the reader that process pid began a TLS connection.
// It never blocks: the capture's loop calls it.
func (r *tlsReader) sawHandshake(pid int) {
	select {
	case r.handshake <- pid:
	default: // the next scan gets to it
	}
}

// run scans the neighbours every tlsScanInterval, and tries a process
// whose handshake the kernel saw at once, until ctx ends.
func (r *tlsReader) run(ctx context.Context) {
	tick := time.NewTicker(tlsScanInterval)
	defer tick.Stop()
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
		case <-tick.C:
			r.scan()
		}
	}
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
	if _, traced := r.traced[pid]; traced && handshake && !r.unspoken[pid] {
		return // one handshake per connection: the scans check traced processes
	}
	if last, tried := r.failed[pid]; tried && time.Since(last) < tlsRetryAfter && !(handshake && r.unspoken[pid]) {
		return
	}
	if r.selected != nil && !r.selected(pid) {
		r.failed[pid] = time.Now()
		return
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
}

func (r *tlsReader) name(pid int) string {
	return pod.ReadProcess(r.procRoot, pid, "").Name
}
