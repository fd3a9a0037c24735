// Package bpf owns everything that runs in the kernel: the capture program
// (capture.c), its generated bindings, and a small API to load it, attach it,
// read its events and close it. It hides cilium/ebpf from the rest of the
// agent.
package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// MaxCaptureBytes is the largest payload prefix the kernel copies per
// syscall (MAX_CAPTURE in capture.c).
const MaxCaptureBytes = 4096

// MinCaptureBytes keeps room for a request line and the tail logic.
const MinCaptureBytes = 64

// PollInterval is the longest Read waits between looks for events. The
// programs do not wake the reader per event (see submit in capture.c), so
// this is the most delay between a syscall and its event reaching user
// space. A busy pod is polled sooner (see nextPoll), down to
// MinPollInterval, which keeps the batches large (shorter waits measured
// worse: more, smaller batches); and a quarter of the ring buffer filling
// wakes the reader at once. A quieter pod waits longer: at 5k requests/s
// a wait of up to 200 ms rather than 40 cost the agent 1.3 µs less per
// request (BENCHMARKS.md, "What we tried"); the spans' batches wait 5 s
// anyway.
const PollInterval = 200 * time.Millisecond

// maxPoll is PollInterval, a variable so that tests, which wait for the
// reader's polls, can have them sooner.
var maxPoll = PollInterval

// MinPollInterval is the shortest wait between polls.
const MinPollInterval = 10 * time.Millisecond

// Hook sets: which kernel hooks capture the traffic (Config.Hooks).
const (
	// HooksAuto picks HooksSocket where the kernel has it, else HooksSyscall.
	HooksAuto = "auto"
	// HooksSocket: the sock_recv_length and sock_send_length tracepoints
	// (tp_btf, Linux 6.3+) fire once per socket receive or send, and
	// inet_sock_set_state marks connects and closes. The node's other
	// syscalls pay nothing.
	HooksSocket = "socket"
	// HooksSyscall: the raw tracepoints sys_enter and sys_exit (Linux 5.8+)
	// run on every syscall of the node and follow the socket ones.
	HooksSyscall = "syscall"
)

// HookSets lists the values of Config.Hooks.
var HookSets = []string{HooksAuto, HooksSocket, HooksSyscall}

// Config sets the kernel side's bounds.
type Config struct {
	// Hooks picks the kernel hooks (HooksAuto when empty).
	Hooks string
	// CaptureBytes is the payload prefix copied per read or write.
	CaptureBytes int
	// RingBufferBytes sizes the ring buffer to user space (a power of two
	// multiple of the page size).
	RingBufferBytes int
	// MaxConnections bounds the kernel's per-fd connection cache.
	MaxConnections int
	// TLS lets TraceTLS put uprobes on the neighbours' TLS libraries (the
	// socket hooks only). Either way the kernel holds back the records of
	// the connections it sees start TLS.
	TLS bool
	// Fast, with the socket hooks, lets the kernel measure the HTTP/1
	// requests that need no span itself, and drop the server-side Redis
	// commands that need none (see fast.go).
	Fast Fast
}

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("capture closed")

// Capture is the loaded and attached kernel capture.
type Capture struct {
	// Drained, when set, is called by Read each time it has handed out
	// every event of a poll, before it waits for the next one: the moment
	// to pass on work gathered from a batch of events. Read's goroutine
	// calls it.
	Drained func()

	hooks string // the hook set attached: HooksSocket or HooksSyscall
	// execs: the socket hooks tell of the programs the neighbours start
	// (EventExec), for TraceTLS, which only Config.TLS wants.
	execs  bool
	events *ebpf.Map
	stats  *ebpf.Map
	// programs are the attached programs, whose runs the kernel skipped
	// are counted (Stats.RunsSkipped).
	programs []*ebpf.Program
	fast     *fastMaps // nil: no fast path
	// redisDrop: the kernel drops server-side Redis commands not sampled.
	redisDrop bool
	// httpSpans, redisSpans: the kernel's spans of HTTP requests and of
	// Redis commands are on; heads is their registry (http_heads), nil
	// when neither is.
	httpSpans, redisSpans bool
	heads                 *ebpf.Map
	// histograms: the fast path, when on, fills the kernel's histograms
	// (Fast.HTTP), not only the kernel's spans.
	histograms bool
	// h2Frames: the kernel adds the HTTP/2 frames past the prefix to
	// events (Event.Pieces).
	h2Frames bool
	// tls puts the uprobes on neighbours' TLS libraries (TraceTLS); nil
	// with the syscall hooks, which do not follow TLS, and without
	// Config.TLS.
	tls     *tlsTracer
	objects []io.Closer // programs and maps, closed by Close
	links   []link.Link
	reader  *ringbuf.Reader // never blocks: its deadline is in the past
	record  ringbuf.Record
	// wake is the ring buffer's fd in Go's network poller: Read sleeps
	// there between polls, as a parked goroutine. (The reader's own wait
	// is a blocking epoll_wait, which keeps the runtime's sysmon thread
	// waking every 20 µs to 1 ms for as long as it lasts: two thirds of the
	// agent's context switches at a moderate rate.)
	wake      *os.File
	wakeConn  syscall.RawConn
	firstWait bool
	// What the last poll found, for the next one's wait (nextPoll).
	ringBytes int
	found     int // bytes read since the last poll
	lastPoll  time.Time
	// closeMu keeps Close from unmapping the ring while woken reads it;
	// closing is set first, so that woken stops reading it.
	closeMu sync.Mutex
	closing bool

	bootToWall atomic.Int64 // wall-clock ns minus CLOCK_BOOTTIME ns
	stopSync   chan struct{}
	stopping   atomic.Bool // Stop was called: Read ends when the ring is empty
	stopOnce   sync.Once
	stopErr    error
	closeOnce  sync.Once
	closeErr   error
}

// Load loads the capture programs, scoped to the caller's PID namespace and
// excluding the caller itself, and attaches them.
func Load(cfg Config, logger *slog.Logger) (_ *Capture, err error) {
	if cfg.CaptureBytes < MinCaptureBytes || cfg.CaptureBytes > MaxCaptureBytes {
		return nil, fmt.Errorf("capture bytes %d: must be within %d..%d", cfg.CaptureBytes, MinCaptureBytes, MaxCaptureBytes)
	}
	// Kernels before 5.11 account BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		logger.Debug("remove memlock limit", "error", err)
	}

	var ns unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &ns); err != nil {
		return nil, fmt.Errorf("stat own pid namespace: %w", err)
	}

	spec, err := loadCapture()
	if err != nil {
		return nil, fmt.Errorf("load capture spec: %w", err)
	}
	if cfg.RingBufferBytes > 0 {
		spec.Maps["events"].MaxEntries = uint32(cfg.RingBufferBytes)
	}
	ringBytes := spec.Maps["events"].MaxEntries
	if cfg.MaxConnections > 0 {
		spec.Maps["conns"].MaxEntries = uint32(cfg.MaxConnections)
	}
	if cfg.Fast.MaxSeries > 0 {
		spec.Maps["http_hist"].MaxEntries = uint32(cfg.Fast.MaxSeries)
	}
	if !cfg.TLS {
		shrinkTLSMaps(spec)
	}
	settings := map[string]any{
		"pidns_dev":     uint64(ns.Dev),
		"pidns_ino":     ns.Ino,
		"agent_tgid":    uint32(os.Getpid()),
		"capture_bytes": uint32(cfg.CaptureBytes),
		"wakeup_bytes":  uint64(ringBytes / 4),
	}
	if err := cfg.Fast.set(spec); err != nil {
		return nil, err
	}
	for name, value := range settings {
		if err := spec.Variables[name].Set(value); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}

	c := &Capture{stopSync: make(chan struct{}), histograms: cfg.Fast.HTTP, execs: cfg.TLS}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	switch cfg.Hooks {
	case HooksSocket:
		err = c.attachSocketFast(spec, cfg.Fast, logger)
	case HooksSyscall:
		err = c.attachSyscall(spec, logger)
	case HooksAuto, "":
		err = c.attachSocketFast(spec, cfg.Fast, logger)
		var refused *ebpf.VerifierError
		if errors.Is(err, unix.EPERM) && !errors.As(err, &refused) {
			// A capability missing (CAP_PERFMON, CAP_BPF: EPERM, where the
			// verifier's refusals are mostly EACCES), not a kernel
			// without the tracepoints: the syscall ones would need it too,
			// and the error should say that, not that the kernel is old.
			break
		}
		if err != nil {
			logger.Info("socket tracepoints unavailable (they need Linux 6.3+ with BTF): using syscall tracepoints, which run on every syscall of the node",
				"reason", err)
			err = c.attachSyscall(spec, logger)
		}
	default:
		err = fmt.Errorf("unknown hook set %q (want one of %s)", cfg.Hooks, strings.Join(HookSets, ", "))
	}
	if err != nil {
		return nil, err
	}
	if !cfg.TLS {
		c.tls = nil // and the spec its programs would be loaded from
	}
	logger.Info("attached kernel capture", "hooks", c.hookNames(), "pid_namespace", ns.Ino, "capture_bytes", cfg.CaptureBytes,
		"ring_buffer_bytes", c.events.MaxEntries(), "http2_frames", c.h2Frames)

	if c.reader, err = ringbuf.NewReader(c.events); err != nil {
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	c.reader.SetDeadline(time.Unix(1, 0))
	c.ringBytes, c.lastPoll = int(c.events.MaxEntries()), time.Now()
	if err := c.openWake(); err != nil {
		return nil, fmt.Errorf("poll ring buffer: %w", err)
	}
	c.syncClock()
	go c.keepClockInSync()
	return c, nil
}

// socketObjects are what the socket-tracepoint capture loads: its programs
// and the maps the loader reads. The maps only its programs use (socket
// storage, scratch) come along and are closed with the programs.
type socketObjects struct {
	SockRecvLength   *ebpf.Program  `ebpf:"sock_recv_length"`
	SockSendLength   *ebpf.Program  `ebpf:"sock_send_length"`
	InetSockSetState *ebpf.Program  `ebpf:"inet_sock_set_state"`
	TCPDestroySock   *ebpf.Program  `ebpf:"tcp_destroy_sock"`
	SchedProcessExec *ebpf.Program  `ebpf:"sched_process_exec"`
	Events           *ebpf.Map      `ebpf:"events"`
	Stats            *ebpf.Map      `ebpf:"stats"`
	HTTPRoutes       *ebpf.Map      `ebpf:"http_routes"`
	HTTPHist         *ebpf.Map      `ebpf:"http_hist"`
	HistRoom         *ebpf.Map      `ebpf:"hist_room"`
	HTTPHeads        *ebpf.Map      `ebpf:"http_heads"`
	TLSCalls         *ebpf.Map      `ebpf:"tls_calls"`
	TLSConns         *ebpf.Map      `ebpf:"tls_conns"`
	GoTLSReads       *ebpf.Map      `ebpf:"go_tls_reads"`
	TLSH2            *ebpf.Map      `ebpf:"tls_h2"`
	TLSPids          *ebpf.Map      `ebpf:"tls_pids"`
	Announced        *ebpf.Map      `ebpf:"announced"`
	TLSProbed        *ebpf.Variable `ebpf:"tls_probed"`
	tlsPrograms
}

// tlsPrograms are the uprobes on a TLS library (TraceTLS), loaded with the
// socket programs, whose maps they share.
type tlsPrograms struct {
	TLSWrite     *ebpf.Program `ebpf:"tls_write"`
	TLSWriteEx   *ebpf.Program `ebpf:"tls_write_ex"`
	TLSRead      *ebpf.Program `ebpf:"tls_read"`
	TLSReadEx    *ebpf.Program `ebpf:"tls_read_ex"`
	TLSHandshake *ebpf.Program `ebpf:"tls_handshake"`
	TLSFree      *ebpf.Program `ebpf:"tls_free_entry"`
	TLSReturn    *ebpf.Program `ebpf:"tls_return"`
	// Go's crypto/tls, in the order of enum go_tls_function.
	GoTLSWrite      *ebpf.Program `ebpf:"go_tls_write"`
	GoTLSRead       *ebpf.Program `ebpf:"go_tls_read"`
	GoTLSReadReturn *ebpf.Program `ebpf:"go_tls_read_return"`
	GoTLSReadCopy   *ebpf.Program `ebpf:"go_tls_read_copy"`
}

// syscallObjects are what the syscall-tracepoint capture loads.
type syscallObjects struct {
	SysEnter *ebpf.Program `ebpf:"sys_enter"`
	SysExit  *ebpf.Program `ebpf:"sys_exit"`
	Events   *ebpf.Map     `ebpf:"events"`
	Stats    *ebpf.Map     `ebpf:"stats"`
}

// attachSocket loads and attaches the socket tracepoints (tp_btf). On
// failure nothing of it stays loaded.
func (c *Capture) attachSocket(spec *ebpf.CollectionSpec, logger *slog.Logger) error {
	var objs socketObjects
	if err := loadObjects(spec, &objs, logger); err != nil {
		return err
	}
	objects := []io.Closer{objs.SockRecvLength, objs.SockSendLength, objs.InetSockSetState, objs.TCPDestroySock, objs.SchedProcessExec, objs.Events, objs.Stats, objs.HTTPRoutes, objs.HTTPHist, objs.HistRoom, objs.HTTPHeads,
		objs.TLSCalls, objs.TLSConns, objs.GoTLSReads, objs.TLSH2, objs.TLSPids, objs.Announced,
		objs.TLSWrite, objs.TLSWriteEx, objs.TLSRead, objs.TLSReadEx, objs.TLSHandshake, objs.TLSFree, objs.TLSReturn,
		objs.GoTLSWrite, objs.GoTLSRead, objs.GoTLSReadReturn, objs.GoTLSReadCopy}
	var hooks []func() (link.Link, error)
	programs := []*ebpf.Program{objs.SockRecvLength, objs.SockSendLength, objs.InetSockSetState, objs.TCPDestroySock}
	if c.execs {
		programs = append(programs, objs.SchedProcessExec)
	}
	for _, p := range programs {
		hooks = append(hooks, func() (link.Link, error) {
			l, err := link.AttachTracing(link.TracingOptions{Program: p})
			if err != nil {
				return nil, fmt.Errorf("attach tp_btf %s: %w", p, err)
			}
			return l, nil
		})
	}
	set := func(name string) bool {
		var on uint8
		return spec.Variables[name] != nil && spec.Variables[name].Get(&on) == nil && on != 0
	}
	var fast *fastMaps
	if set("fast_http") {
		// Before anything is attached: should it fail, nothing of these
		// programs is left on the node (with auto, the syscall hooks are
		// tried next).
		fast = &fastMaps{routes: objs.HTTPRoutes, hist: objs.HTTPHist, room: objs.HistRoom}
		if err := fast.setRoom(0); err != nil {
			closeAll(objects)
			return err
		}
	}
	links, err := attachEach(objects, hooks)
	if err != nil {
		return err
	}
	c.hooks, c.events, c.stats, c.objects, c.links = HooksSocket, objs.Events, objs.Stats, objects, links
	c.programs = programs
	c.tls = &tlsTracer{progs: objs.tlsPrograms, procs: map[int]*tlsProcess{}, logger: logger, probed: objs.TLSProbed, pids: objs.TLSPids,
		loadMulti: func() (*tlsMulti, error) { return loadTLSMulti(spec, objs) }}
	var bound uint64
	if spec.Variables["sample_bound"] != nil {
		spec.Variables["sample_bound"].Get(&bound)
	}
	// With every command picked (a bound of 2^63) nothing is dropped.
	c.redisDrop = set("fast_redis") && set("redis_drop") && bound < 1<<63
	c.redisSpans = set("fast_redis") && set("redis_spans")
	c.h2Frames = set("h2_frames")
	if fast != nil {
		c.fast = fast
		c.httpSpans = set("fast_spans")
	}
	if c.httpSpans || c.redisSpans {
		c.heads = objs.HTTPHeads
	}
	return nil
}

// attachSocketFast is attachSocket with the fast path and the Redis drop
// as fast asks, and without them when the kernel refuses that: they only
// save the agent work, and a kernel that cannot verify them still gets the
// socket hooks rather than the syscall ones.
func (c *Capture) attachSocketFast(spec *ebpf.CollectionSpec, fast Fast, logger *slog.Logger) error {
	return withoutFastOnRefusal(fast, func() error { return c.attachSocket(spec, logger) },
		func(name string) error { return spec.Variables[name].Set(uint8(0)) }, logger)
}

// withoutFastOnRefusal runs attach; while the verifier refuses it, it turns
// off what fast asked for and runs it again: the kernel's Redis spans
// first, then the Redis drop, then the kernel's HTTP spans, then the HTTP
// fast path; and last the walk of HTTP/2 frames past the prefix, which
// the agent's HTTP/2 spans need on connections that send big messages.
// When the stack is what the verifier refused, the walk goes first: its
// calls are the deepest, and kernels before 6.10 round each frame up to
// 32 bytes, which may take the programs past 512.
func withoutFastOnRefusal(fast Fast, attach func() error, turnOff func(variable string) error, logger *slog.Logger) error {
	err := attach()
	steps := []struct {
		on    bool
		names []string
		what  string
	}{
		{fast.RedisSpans && fast.Redis, []string{"redis_spans"}, "kernel Redis spans unavailable: every Redis command picked for a span goes through the agent"},
		{fast.RedisSpans && !fast.Redis, []string{"redis_spans", "fast_redis"}, "kernel Redis spans unavailable: every Redis command goes through the agent"},
		{fast.Redis, []string{"fast_redis", "redis_drop"}, "kernel Redis sampling unavailable: every Redis command goes through the agent"},
		// Without the histograms the fast path has nothing left to do.
		{fast.Spans && fast.HTTP, []string{"fast_spans"}, "kernel HTTP spans unavailable: every request picked for a span goes through the agent whole"},
		{fast.Spans && !fast.HTTP, []string{"fast_spans", "fast_http"}, "kernel HTTP spans unavailable: every request goes through the agent"},
		{fast.HTTP, []string{"fast_http"}, "kernel HTTP metrics and spans unavailable: every request goes through the agent"},
		{true, []string{"h2_frames"}, h2FramesOff},
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) && slices.ContainsFunc(verr.Log, func(line string) bool { return strings.Contains(line, "stack size") }) {
		logger.Info(h2FramesOff, "reason", err)
		if err := turnOff("h2_frames"); err != nil {
			return err
		}
		steps = steps[:len(steps)-1]
		err = attach()
	}
	for _, step := range steps {
		if err == nil || !errors.As(err, &verr) {
			return err // loaded, or refused for something else than the fast path
		}
		if !step.on {
			continue
		}
		logger.Info(step.what, "reason", err)
		for _, name := range step.names {
			if err := turnOff(name); err != nil {
				return err
			}
		}
		err = attach()
	}
	return err
}

const h2FramesOff = "kernel HTTP/2 frame walk unavailable: after a write with a big message, an HTTP/2 connection may lose the spans of calls whose headers are in the HPACK table (counted in http2_lost)"

// attachSyscall loads and attaches the raw syscall tracepoints. Raw
// tracepoints need neither kprobes nor tracefs.
func (c *Capture) attachSyscall(spec *ebpf.CollectionSpec, logger *slog.Logger) error {
	var objs syscallObjects
	if err := loadObjects(spec, &objs, logger); err != nil {
		return err
	}
	objects := []io.Closer{objs.SysEnter, objs.SysExit, objs.Events, objs.Stats}
	var hooks []func() (link.Link, error)
	for name, p := range map[string]*ebpf.Program{"sys_enter": objs.SysEnter, "sys_exit": objs.SysExit} {
		hooks = append(hooks, func() (link.Link, error) {
			l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: name, Program: p})
			if err != nil {
				return nil, fmt.Errorf("attach raw tracepoint %s: %w", name, err)
			}
			return l, nil
		})
	}
	links, err := attachEach(objects, hooks)
	if err != nil {
		return err
	}
	c.hooks, c.events, c.stats, c.objects, c.links = HooksSyscall, objs.Events, objs.Stats, objects, links
	c.programs = []*ebpf.Program{objs.SysEnter, objs.SysExit}
	return nil
}

// loadObjects loads what objs names from a copy of spec (a failed attempt
// leaves spec as it was for the next one).
func loadObjects(spec *ebpf.CollectionSpec, objs any, logger *slog.Logger) error {
	if err := spec.Copy().LoadAndAssign(objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			logger.Debug("verifier rejected capture program", "log", fmt.Sprintf("%+v", verr))
		}
		return fmt.Errorf("load capture programs: %w", err)
	}
	return nil
}

// attachEach attaches every hook. On a failure it detaches what it had
// attached and closes objects, so that nothing of the attempt stays.
func attachEach(objects []io.Closer, hooks []func() (link.Link, error)) ([]link.Link, error) {
	var links []link.Link
	for _, attach := range hooks {
		l, err := attach()
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			closeAll(objects)
			return nil, err
		}
		links = append(links, l)
	}
	return links, nil
}

func closeAll(objects []io.Closer) {
	for _, o := range objects {
		o.Close()
	}
}

// Hooks returns the hook set attached: HooksSocket or HooksSyscall.
func (c *Capture) Hooks() string { return c.hooks }

// HTTP2Frames tells whether the kernel follows the frames of HTTP/2
// connections and adds those past the prefix to events (Event.Pieces):
// the socket hooks do, unless the verifier refused it.
func (c *Capture) HTTP2Frames() bool { return c.h2Frames }

func (c *Capture) hookNames() string {
	if c.hooks == HooksSocket && c.execs {
		return "tp_btf/sock_recv_length,tp_btf/sock_send_length,tp_btf/inet_sock_set_state,tp_btf/tcp_destroy_sock,tp_btf/sched_process_exec"
	}
	if c.hooks == HooksSocket {
		return "tp_btf/sock_recv_length,tp_btf/sock_send_length,tp_btf/inet_sock_set_state,tp_btf/tcp_destroy_sock"
	}
	return "raw_tracepoint/sys_enter,raw_tracepoint/sys_exit"
}

// Read blocks until the next event and decodes it into ev. ev.Payload and
// ev.Tail point into a buffer that the next Read reuses. It returns
// ErrClosed once Close was called.
//
// Events arrive in batches: the ring buffer is drained every 10 to 200 ms
// (nextPoll; or when it fills), so a busy pod costs the agent one wake-up per batch,
// not one per syscall.
func (c *Capture) Read(ev *Event) error {
	for {
		if err := c.reader.ReadInto(&c.record); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// The ring buffer is drained: sleep until the next poll,
				// unless the programs are detached and no more can come.
				if c.Drained != nil {
					c.Drained()
				}
				if c.stopping.Load() {
					return ErrClosed
				}
				if err := c.sleep(); err != nil {
					return err
				}
				continue
			}
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return ErrClosed
			}
			return fmt.Errorf("read ring buffer: %w", err)
		}
		c.found += len(c.record.RawSample) + 8 // and the record's header
		if ev.decode(c.record.RawSample) {
			return nil
		}
	}
}

// openWake puts a duplicate of the ring buffer's fd into Go's network
// poller. The kernel makes it readable when the programs force a wake-up
// (a quarter of the ring is full).
func (c *Capture) openWake() error {
	fd, err := unix.FcntlInt(uintptr(c.events.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return err
	}
	// A non-blocking fd is registered with the poller (edge-triggered).
	c.wake = os.NewFile(uintptr(fd), "ringbuf")
	c.wakeConn, err = c.wake.SyscallConn()
	return err
}

// sleep waits for the next poll: PollInterval, or less if the kernel
// forces a wake-up. The goroutine is parked meanwhile, not in a syscall.
func (c *Capture) sleep() error {
	now := time.Now()
	if err := c.wake.SetReadDeadline(now.Add(c.nextPoll(now))); err != nil {
		return c.closedOr(err)
	}
	c.firstWait = true
	err := c.wakeConn.Read(c.woken)
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return c.closedOr(err)
}

// nextPoll is how long to wait for the next poll: the time the programs
// took to write an eighth of the ring buffer, at the rate the last poll
// found, within MinPollInterval and PollInterval. A quiet pod is polled
// 5 times a second, each wake-up costing the agent less per request; a
// busy one about as often as it fills an eighth of the ring, but at most
// every MinPollInterval, past which a quarter filling wakes the reader.
func (c *Capture) nextPoll(now time.Time) time.Duration {
	elapsed := now.Sub(c.lastPoll)
	found := c.found
	c.lastPoll, c.found = now, 0
	if found == 0 || elapsed <= 0 {
		return maxPoll
	}
	wait := time.Duration(float64(elapsed) * float64(c.ringBytes/8) / float64(found))
	return min(max(wait, MinPollInterval), maxPoll)
}

// woken tells the poller whether to stop waiting. The first call, before
// any wait, says no, so that events that came without a wake-up wait for
// the poll; after a wake-up, yes if there is something to read.
func (c *Capture) woken(uintptr) bool {
	if c.firstWait {
		c.firstWait = false
		return false
	}
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	return c.closing || c.reader.AvailableBytes() > 0
}

// closedOr is ErrClosed if Close was called (a sleeping Read then sees
// the poller's "use of closed file"), else err.
func (c *Capture) closedOr(err error) error {
	c.closeMu.Lock()
	closing := c.closing
	c.closeMu.Unlock()
	if closing || errors.Is(err, os.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("wait for ring buffer: %w", err)
}

// WallTime converts a kernel CLOCK_BOOTTIME timestamp to wall-clock time.
func (c *Capture) WallTime(bootNS uint64) time.Time {
	return time.Unix(0, int64(bootNS)+c.bootToWall.Load())
}

// Stats are the kernel side's counters.
type Stats struct {
	Events uint64 // events delivered to the ring buffer
	Lost   uint64 // events lost because the ring buffer was full
	// CallsUntracked counts syscalls not followed because the kernel had
	// no memory for the thread's in-flight state.
	CallsUntracked uint64
	// FastRequests are HTTP requests measured in the kernel (fast path);
	// FastLost those of them not counted, the histogram map being full.
	FastRequests, FastLost uint64
	// RedisDropped are server-side Redis commands the kernel dropped, not
	// picked for a span.
	RedisDropped uint64
	// HTTPSpans are HTTP requests picked for a span that the kernel stood
	// for with an EventHTTP or EventHTTPRequest (Fast.Spans).
	HTTPSpans uint64
	// RedisSpans are Redis commands picked for a span that the kernel
	// stood for with an EventRedis or EventRedisRequest (Fast.RedisSpans).
	RedisSpans uint64
	// H2Quiet are HTTP/2 segments of window updates and pings alone that
	// the kernel did not send: the agent does not read them (HTTP2Frames).
	H2Quiet uint64
	// TLSRecords are sends and receives of TLS records the kernel did not
	// send (EventTLS): their plaintext comes from the TLS library.
	// TLSLost are TLS plaintexts lost: the kernel did not know their SSL
	// object's connection (it began before the uprobes were in, or its
	// library encrypts into memory, not onto the socket).
	TLSRecords, TLSLost uint64
	// RunsSkipped are runs of the programs the kernel skipped because the
	// same program was already running on the CPU: inet_sock_set_state,
	// in a task's connect or close, interrupted by a softirq's state
	// change of another connection, whose mark at its connect is then
	// missing, or whose close waits until its socket is freed
	// (tcp_destroy_sock); Linux 5.12 and later count them, 0 before.
	RunsSkipped uint64
}

// Stats sums the kernel's per-CPU counters.
func (c *Capture) Stats() (Stats, error) {
	sum := func(index uint32) (uint64, error) {
		var perCPU []uint64
		if err := c.stats.Lookup(index, &perCPU); err != nil {
			return 0, fmt.Errorf("read stat %d: %w", index, err)
		}
		var total uint64
		for _, v := range perCPU {
			total += v
		}
		return total, nil
	}
	var s Stats
	var err error
	if s.Events, err = sum(0); err != nil {
		return s, err
	}
	if s.Lost, err = sum(1); err != nil {
		return s, err
	}
	if s.CallsUntracked, err = sum(2); err != nil {
		return s, err
	}
	if s.FastRequests, err = sum(3); err != nil {
		return s, err
	}
	if s.FastLost, err = sum(4); err != nil {
		return s, err
	}
	if s.RedisDropped, err = sum(5); err != nil {
		return s, err
	}
	if s.HTTPSpans, err = sum(6); err != nil {
		return s, err
	}
	if s.RedisSpans, err = sum(7); err != nil {
		return s, err
	}
	if s.H2Quiet, err = sum(8); err != nil {
		return s, err
	}
	if s.TLSRecords, err = sum(9); err != nil {
		return s, err
	}
	if s.TLSLost, err = sum(10); err != nil {
		return s, err
	}
	for _, p := range c.programs {
		if ps, err := p.Stats(); err == nil {
			s.RunsSkipped += ps.RecursionMisses
		}
	}
	return s, nil
}

// Stop detaches the programs, so that no new events come, and lets Read
// return the events still in the ring buffer before it returns ErrClosed:
// a clean shutdown loses nothing the kernel captured. Stats still work
// until Close.
func (c *Capture) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		for _, l := range c.links {
			errs = append(errs, l.Close())
		}
		errs = append(errs, c.tls.close())
		c.stopErr = errors.Join(errs...)
		c.stopping.Store(true)
	})
	return c.stopErr
}

// Close detaches the programs and frees the maps. It is safe to call more
// than once; a blocked Read returns ErrClosed at once, events still in the
// ring buffer are dropped (Stop first to read them).
func (c *Capture) Close() error {
	c.closeOnce.Do(func() {
		close(c.stopSync)
		errs := []error{c.Stop()}
		c.closeMu.Lock()
		c.closing = true // from now on woken does not touch the ring
		c.closeMu.Unlock()
		if c.wake != nil {
			// Ends a sleeping Read; waits for a woken under way, so it
			// must not hold closeMu.
			errs = append(errs, c.wake.Close())
		}
		c.closeMu.Lock()
		defer c.closeMu.Unlock()
		if c.reader != nil {
			errs = append(errs, c.reader.Close())
		}
		for _, o := range c.objects {
			errs = append(errs, o.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

func (c *Capture) syncClock() {
	var ts unix.Timespec
	before := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return
	}
	c.bootToWall.Store(before.UnixNano() - ts.Nano())
}

// keepClockInSync follows wall-clock steps (NTP) so span times stay right.
func (c *Capture) keepClockInSync() {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.stopSync:
			return
		case <-t.C:
			c.syncClock()
		}
	}
}

// EventType says what an event reports.
type EventType uint8

const (
	EventData  EventType = 1 // bytes sent or received
	EventClose EventType = 2 // the process closed the connection's fd
	// EventHTTP is an HTTP/1 server exchange the kernel measured for a
	// span (Fast.Spans): HeadHash names the request's head, Status and
	// Body are the response's, EnterNS and ExitNS the request's arrival
	// and the response's send. Its payload is the value of the request's
	// traceparent (TraceparentLen bytes) when its head has one
	// (HeadParent), else empty.
	EventHTTP EventType = 3
	// EventHTTPRequest stands for the bytes of a request whose head is
	// HeadHash's, received at EnterNS (with a body of that head's
	// Content-Length), its traceparent's value as payload as in EventHTTP:
	// the kernel owned it for a span, but its response comes as data.
	EventHTTPRequest EventType = 4
	// EventRedis is a Redis command a server in the pod read and answered,
	// measured for a span (Fast.RedisSpans): HeadHash names the command's
	// shape (RedisShape), EnterNS is when it was read, ExitNS when its
	// reply, whole and not an error, was sent. No payload.
	EventRedis EventType = 5
	// EventRedisRequest stands for the bytes of a command of HeadHash's
	// shape, read at EnterNS: the kernel owned it for a span, but its
	// reply comes as data.
	EventRedisRequest EventType = 6
	// EventTLS says that a connection's bytes started a TLS handshake (or
	// a TLS record, first seen): the kernel sends none of its records
	// from now on, and its plaintext comes from the process's TLS library
	// once TraceTLS has put its uprobes there (FlagPlaintext). Sent once
	// per connection; no payload.
	EventTLS EventType = 7
	// EventExec says that process PID started a program (Comm is its
	// name): no connection, no payload. Sent with the socket hooks and
	// Config.TLS, at once, so that the program's TLS can be probed before
	// it connects.
	EventExec EventType = 8
)

// Direction of the bytes, seen from the observed process.
type Direction uint8

const (
	Ingress Direction = 0 // received
	Egress  Direction = 1 // sent
)

// Role is what the kernel saw of how the connection was made.
type Role uint8

const (
	RoleUnknown Role = 0 // existed before the agent, or not seen
	RoleServer  Role = 1 // accepted
	RoleClient  Role = 2 // connected
)

// EventFlags say what the kernel left out of a connection's bytes before
// an event: server-side Redis commands it dropped (Fast.Redis), with
// their replies.
type EventFlags uint8

const (
	// FlagGap: a command the kernel dropped has no reply yet; the next
	// reply on the connection is its.
	FlagGap EventFlags = 1
	// FlagLost: the reply of a command the kernel dropped may go on; its
	// rest comes before the reply to this event's command. With
	// FlagPlaintext, and no bytes: plaintext that the uprobes could not
	// read was received on the connection before (a Go program's read
	// entered before they were in).
	FlagLost EventFlags = 2
	// FlagPlaintext: the payload is a TLS connection's plaintext, read
	// from its TLS library's buffer (TraceTLS), not from the socket.
	FlagPlaintext EventFlags = 4
)

// Event is one syscall on a TCP connection of a neighbour process.
type Event struct {
	Type     EventType
	Dir      Direction
	Role     Role
	EnterNS  uint64 // CLOCK_BOOTTIME at syscall entry
	ExitNS   uint64 // and exit
	Conn     uint64 // kernel socket identity, stable for the connection's life
	PID, TID uint32 // in the pod's PID namespace
	FD       uint32
	Len      uint32 // bytes transferred; Payload holds a prefix of them
	Local    netip.AddrPort
	Remote   netip.AddrPort
	Comm     [16]byte
	// TraceLow is the low half of the trace ID the kernel drew for a
	// request (the fast path's sampling, which the agent's ratio sampler
	// judges alike); 0 when it drew none, as with every request sampled.
	TraceLow uint64
	// Flags say what the kernel left out before this event (FlagGap,
	// FlagLost).
	Flags EventFlags
	// HeadHash is the kernel's hash of the request head in this event, or
	// of the one an EventHTTP or EventHTTPRequest stands for (Fast.Spans),
	// or the shape of an EventRedis's or EventRedisRequest's command;
	// 0 when none.
	HeadHash uint64
	// Status and Body are an EventHTTP's response status and body bytes.
	Status  uint16
	Body    uint32
	Payload []byte
	Tail    []byte // the last bytes transferred, when Len > len(Payload)
	// Pieces are more of the bytes transferred, past Payload: on an
	// HTTP/2 connection, the frame headers and the parts of frames the
	// agent reads (NextPiece).
	Pieces []byte
}

// NextPiece splits the first piece off pieces (Event.Pieces): the offset
// of its bytes in the transfer, and the bytes. ok is false when there is
// none, or what is left is not a whole piece.
func NextPiece(pieces []byte) (off int, data, rest []byte, ok bool) {
	if len(pieces) < pieceHeader {
		return 0, nil, nil, false
	}
	n := int(le.Uint16(pieces[4:]))
	if len(pieces) < pieceHeader+n {
		return 0, nil, nil, false
	}
	return int(le.Uint32(pieces)), pieces[pieceHeader : pieceHeader+n], pieces[pieceHeader+n:], true
}

// pieceHeader is a piece's offset (u32) and length (u16), as capture.c
// writes them (PIECE_HEADER).
const pieceHeader = 6

// Layout of struct event, taken from the generated binding.
var (
	payloadOffset = int(unsafe.Offsetof(captureEvent{}.Payload))
	le            = binary.LittleEndian
)

func (ev *Event) decode(b []byte) bool {
	if len(b) < payloadOffset {
		return false
	}
	var raw captureEvent
	ev.EnterNS = le.Uint64(b[unsafe.Offsetof(raw.TsEnter):])
	ev.ExitNS = le.Uint64(b[unsafe.Offsetof(raw.TsExit):])
	ev.Conn = le.Uint64(b[unsafe.Offsetof(raw.Sock):])
	ev.TraceLow = le.Uint64(b[unsafe.Offsetof(raw.TraceLow):])
	ev.Flags = EventFlags(b[unsafe.Offsetof(raw.Flags)])
	ev.HeadHash = le.Uint64(b[unsafe.Offsetof(raw.HeadHash):])
	ev.Status = le.Uint16(b[unsafe.Offsetof(raw.Status):])
	ev.Body = le.Uint32(b[unsafe.Offsetof(raw.Body):])
	ev.PID = le.Uint32(b[unsafe.Offsetof(raw.Tgid):])
	ev.TID = le.Uint32(b[unsafe.Offsetof(raw.Tid):])
	ev.FD = le.Uint32(b[unsafe.Offsetof(raw.Fd):])
	ev.Len = le.Uint32(b[unsafe.Offsetof(raw.Len):])
	captured := int(le.Uint16(b[unsafe.Offsetof(raw.Captured):]))
	extra := int(le.Uint16(b[unsafe.Offsetof(raw.Extra):]))
	ev.Type = EventType(b[unsafe.Offsetof(raw.Type)])
	ev.Dir = Direction(b[unsafe.Offsetof(raw.Dir)])
	ev.Role = Role(b[unsafe.Offsetof(raw.Role)])
	tailLen := int(b[unsafe.Offsetof(raw.TailLen)])
	family := le.Uint16(b[unsafe.Offsetof(raw.Family):])
	lport := le.Uint16(b[unsafe.Offsetof(raw.Lport):])
	rport := le.Uint16(b[unsafe.Offsetof(raw.Rport):])
	laddr := b[unsafe.Offsetof(raw.Laddr):][:16]
	raddr := b[unsafe.Offsetof(raw.Raddr):][:16]
	ev.Local = netip.AddrPortFrom(addr(family, laddr), lport)
	ev.Remote = netip.AddrPortFrom(addr(family, raddr), rport)
	copy(ev.Comm[:], b[unsafe.Offsetof(raw.Comm):])
	if tailLen > 16 {
		tailLen = 16
	}
	ev.Tail = b[unsafe.Offsetof(raw.Tail):][:tailLen]
	if payloadOffset+captured > len(b) {
		captured = len(b) - payloadOffset
	}
	ev.Payload = b[payloadOffset : payloadOffset+captured]
	ev.Pieces = b[payloadOffset+captured : payloadOffset+min(captured+extra, len(b)-payloadOffset)]
	return ev.Type >= EventData && ev.Type <= EventExec
}

func addr(family uint16, b []byte) netip.Addr {
	if family == syscall.AF_INET {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	a := netip.AddrFrom16([16]byte(b[:16]))
	// Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
	return a.Unmap()
}

// CommString returns the process's kernel name (its main thread's comm).
func (ev *Event) CommString() string {
	for i, c := range ev.Comm {
		if c == 0 {
			return string(ev.Comm[:i])
		}
	}
	return string(ev.Comm[:])
}
