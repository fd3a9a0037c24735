// Command bench measures what podtracer costs the pod it watches, side by
// side with the same server bare and, for Go, instrumented in-process with
// otelhttp, in one run on one machine. The servers are a Go net/http
// server, nginx, redis-server and a grpc-go server. See BENCHMARKS.md at
// the repository root for what it measures and how to read the figures.
//
//	cd bench && go run .                 # the figures (make bench)
//	cd bench && go run . -profile        # where podtracer's cost goes
//
// The same binary is also the pieces it runs: "server" (the Go workload,
// and with -grpc the gRPC one), "receiver" (the OTLP/gRPC receiver) and
// "load" (the open-loop load generator). It needs root, unshare and
// nsenter (util-linux), wrk and nginx; redis-server and redis-benchmark for
// the Redis workload, and ghz (built with go install when not on PATH) for
// the gRPC one.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	var err error
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "server":
			err = serverMain(os.Args[2:])
		case "receiver":
			err = receiverMain(os.Args[2:])
		case "load":
			err = loadMain(os.Args[2:])
		case "pingpong":
			err = pingpongMain(os.Args[2:])
		case "floor":
			err = floorMain(os.Args[2:])
		default:
			err = benchMain(os.Args[1:])
		}
	} else {
		err = benchMain(nil)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// options is the harness's command line.
type options struct {
	rounds    int
	duration  time.Duration
	warmup    time.Duration
	rates     []float64
	conns     int
	workloads []string
	variants  []string
	saturate  bool
	agent     string
	ghz       string
	repo      string
	rev       string
	jsonOut   string
	profile   bool
	profRate  float64
	env       []string // extra agent environment, KEY=value
	// The baseline variant: another agent (a git revision or a binary),
	// or the same one with other settings, measured in the same rounds.
	baselineRev   string
	baselineAgent string
	baselineEnv   []string // its extra environment, after env
	// traceparent: the HTTP clients send a sampled traceparent with every
	// request, as an instrumented caller does.
	traceparent bool

	quietCores float64       // a phase starts when the machine uses less than this
	quietWait  time.Duration // but waits no longer than this for it
}

// Workload and variant names.
const (
	workloadGo    = "go net/http"
	workloadNginx = "nginx"
	workloadRedis = "redis"
	workloadGRPC  = "grpc-go"
	// workloadGRPCTLS is the gRPC server over TLS: Go's crypto/tls,
	// which the agent reads by uprobes (README, "TLS").
	workloadGRPCTLS = "grpc-go over TLS"

	variantBare      = "bare"
	variantPodtracer = "podtracer"
	variantSampled   = "sampled"
	variantFloor     = "floor"
	variantOTelHTTP  = "otelhttp"
	variantBaseline  = "baseline"
)

// sampledEnv is what makes the sampled variant: the podtracer agent with
// one span in ten (and so the kernel's fast path for HTTP/1).
var sampledEnv = []string{"OTEL_TRACES_SAMPLER=parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG=0.1"}

// agentVariant tells whether variant runs something in the server's pod
// beside it: the podtracer agent (or the baseline's), or the floor
// program in its place.
func agentVariant(variant string) bool {
	return variant == variantPodtracer || variant == variantSampled || variant == variantBaseline || variant == variantFloor
}

// workload is a server the benchmark measures, and what drives it.
type workload struct {
	flag      string   // its name in -workloads
	name      string   // its name in the tables
	variants  []string // the otelhttp variant needs the SDK in the server: Go only
	tools     []string // commands it needs on PATH
	saturator string   // what drives it at saturation, with %d for the connections
	fixed     string   // what drives it at a fixed rate
}

var workloads = []workload{
	{"go", workloadGo, []string{variantBare, variantFloor, variantPodtracer, variantBaseline, variantSampled, variantOTelHTTP}, []string{"wrk"}, "wrk -t1 -c%d", "loadgen"},
	{"nginx", workloadNginx, []string{variantBare, variantFloor, variantPodtracer, variantBaseline, variantSampled}, []string{"wrk", "nginx"}, "wrk -t1 -c%d", "loadgen"},
	{"redis", workloadRedis, []string{variantBare, variantFloor, variantPodtracer, variantBaseline, variantSampled}, []string{"redis-server", "redis-benchmark"},
		"redis-benchmark -t get -P 1 -c %d", "loadgen -proto resp"},
	{"grpc", workloadGRPC, []string{variantBare, variantFloor, variantPodtracer, variantBaseline, variantSampled}, nil, "ghz -c %[1]d --connections %[1]d", "ghz --rps"},
	{"grpc-tls", workloadGRPCTLS, []string{variantBare, variantFloor, variantPodtracer, variantBaseline, variantSampled}, nil, "ghz --skipTLS -c %[1]d --connections %[1]d", "ghz --skipTLS --rps"},
}

// usesGhz tells whether workload w is driven by ghz.
func usesGhz(w string) bool { return w == workloadGRPC || w == workloadGRPCTLS }

// workloadNamed returns the workload whose table name is name.
func workloadNamed(name string) workload {
	for _, w := range workloads {
		if w.name == name {
			return w
		}
	}
	return workload{name: name}
}

func benchMain(args []string) error {
	var o options
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.IntVar(&o.rounds, "rounds", 5, "rounds; every round runs every variant of every phase once, in rotating order")
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "measured part of each phase")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "same load before the measured part (agent and server warm)")
	rates := fs.String("rates", "5000,20000", "fixed request rates (req/s) for latency, CPU and loss, comma-separated")
	fs.IntVar(&o.conns, "conns", 32, "keep-alive connections, for every load generator")
	workloadFlag := fs.String("workloads", "go,nginx", "workloads: go, nginx, redis, grpc, grpc-tls (gRPC over TLS), or all (the first four)")
	variants := fs.String("variants", "bare,podtracer,otelhttp", "variants: bare, podtracer, sampled (podtracer with one span in ten), floor (a minimal per-call kernel program instead of the agent: the least any such design costs), otelhttp (Go only); added figures need bare")
	fs.BoolVar(&o.saturate, "saturation", true, "run the saturation phase (wrk, redis-benchmark, ghz)")
	fs.StringVar(&o.agent, "agent", "", "podtracer binary to measure; empty: build it from -repo")
	fs.StringVar(&o.ghz, "ghz", "", "ghz binary (gRPC load); empty: ghz on PATH, else built with go install into the user cache folder")
	fs.StringVar(&o.repo, "repo", "..", "repository root, where the agent is built")
	fs.StringVar(&o.rev, "rev", "", "build the agent from this git revision (git archive) instead of the working tree")
	fs.StringVar(&o.jsonOut, "json", "", "also write every phase's raw results to this file")
	fs.BoolVar(&o.profile, "profile", false, "profile podtracer (perf, BPF run time) instead of benchmarking")
	fs.Float64Var(&o.profRate, "profile-rate", 10000, "request rate while profiling")
	fs.Float64Var(&o.quietCores, "quiet-cores", 0.3, "before each phase, wait until the machine uses less CPU than this (cores)")
	fs.DurationVar(&o.quietWait, "quiet-wait", 3*time.Second, "longest wait for a quiet machine before each phase")
	reportFrom := fs.String("report", "", "print the report of a run saved with -json, and run nothing")
	fs.BoolVar(&o.traceparent, "traceparent", false, "HTTP requests carry a sampled traceparent, as from an instrumented caller (wrk: one value; loadgen: a new one per request)")
	agentEnv := fs.String("agent-env", "", "extra agent environment, KEY=value,KEY=value (e.g. PODTRACER_CAPTURE_BYTES=256)")
	fs.StringVar(&o.baselineRev, "baseline", "", "A/B: also run the baseline variant, the agent built from this git revision, in the same rounds (e.g. HEAD, against the working tree)")
	fs.StringVar(&o.baselineAgent, "baseline-agent", "", "A/B: the baseline variant runs this podtracer binary")
	baselineEnv := fs.String("baseline-env", "", "A/B: the baseline's extra environment, after -agent-env; alone, the baseline is the same agent with it")
	fs.Parse(args)
	for _, s := range strings.Split(*rates, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		r, err := strconv.ParseFloat(s, 64)
		if err != nil || r <= 0 {
			return fmt.Errorf("-rates: bad rate %q", s)
		}
		o.rates = append(o.rates, r)
	}
	var names []string
	for _, w := range workloads {
		names = append(names, w.flag)
	}
	for _, f := range strings.Split(*workloadFlag, ",") {
		f = strings.TrimSpace(f)
		i := slices.IndexFunc(workloads, func(w workload) bool { return w.flag == f })
		switch {
		case f == "all":
			// The four; gRPC over TLS only when named.
			o.workloads = o.workloads[:0]
			for _, w := range workloads {
				if w.name != workloadGRPCTLS {
					o.workloads = append(o.workloads, w.name)
				}
			}
		case i >= 0:
			if !slices.Contains(o.workloads, workloads[i].name) {
				o.workloads = append(o.workloads, workloads[i].name)
			}
		case f != "":
			return fmt.Errorf("-workloads: unknown %q (%s, all)", f, strings.Join(names, ", "))
		}
	}
	for _, v := range strings.Split(*variants, ",") {
		switch v = strings.TrimSpace(v); v {
		case variantBare, variantPodtracer, variantBaseline, variantSampled, variantFloor, variantOTelHTTP:
			o.variants = append(o.variants, v)
		case "":
		default:
			return fmt.Errorf("-variants: unknown %q (bare, podtracer, baseline, sampled, floor, otelhttp)", v)
		}
	}
	var err error
	if o.env, err = splitEnv(*agentEnv); err != nil {
		return fmt.Errorf("-agent-env: %w", err)
	}
	if o.baselineEnv, err = splitEnv(*baselineEnv); err != nil {
		return fmt.Errorf("-baseline-env: %w", err)
	}
	switch ab := o.baselineRev != "" || o.baselineAgent != "" || o.baselineEnv != nil; {
	case o.baselineRev != "" && o.baselineAgent != "":
		return errors.New("-baseline and -baseline-agent: one baseline at a time")
	case ab && !slices.Contains(o.variants, variantBaseline):
		o.variants = append(o.variants, variantBaseline)
	case !ab && slices.Contains(o.variants, variantBaseline):
		return errors.New("-variants baseline: say what it is with -baseline, -baseline-agent or -baseline-env")
	}
	if slices.Contains(o.variants, variantBaseline) && (o.profile || !slices.Contains(o.variants, variantPodtracer)) {
		return errors.New("a baseline is measured against the podtracer variant: -variants needs podtracer, and -profile takes no baseline")
	}
	if *reportFrom != "" {
		return reportFile(*reportFrom)
	}
	if o.rounds < 1 {
		return errors.New("-rounds must be at least 1")
	}

	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates PID namespaces and loads BPF programs")
	}
	tools := []string{"unshare", "nsenter"}
	for _, w := range o.workloads {
		tools = append(tools, workloadNamed(w).tools...)
	}
	if o.profile {
		tools = append(tools, "perf", "bpftool")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found (apt-get install util-linux wrk nginx-light redis-server redis-tools linux-perf bpftool)", t)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := newHarness(o)
	if err != nil {
		return err
	}
	defer h.close()
	if o.profile {
		return h.profile(ctx)
	}
	return h.run(ctx)
}

// harness holds what every phase shares: the binaries, the receiver.
type harness struct {
	o        options
	dir      string // scratch folder, removed at the end
	self     string // this binary
	agent    string
	baseline string // the baseline variant's agent
	floor    string // the floor variant's compiled program
	ghz      string // the gRPC load generator
	www      string // nginx's document root
	receiver *process
	otlpAddr string
	statsURL string
}

func newHarness(o options) (_ *harness, err error) {
	h := &harness{o: o}
	if h.dir, err = os.MkdirTemp("", "podtracer-bench-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			h.close()
		}
	}()
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// Links with telling names, so that ps and perf show which piece is
	// which (a process's comm is the name it was started by).
	for _, name := range []string{"hello", "grpc-echo", "loadgen", "otlpsink"} {
		if err := os.Symlink(exe, filepath.Join(h.dir, name)); err != nil {
			return nil, err
		}
	}
	h.self = exe

	h.agent = o.agent
	if h.agent == "" {
		if h.agent, err = buildAgent(o.repo, o.rev, h.dir); err != nil {
			return nil, err
		}
	}
	if slices.Contains(o.variants, variantBaseline) {
		switch {
		case o.baselineAgent != "":
			h.baseline = o.baselineAgent
		case o.baselineRev != "":
			// Its own folder: the same binary name, so that the two are
			// told apart by nothing but their code.
			dir := filepath.Join(h.dir, "baseline")
			if err := os.Mkdir(dir, 0o755); err != nil {
				return nil, err
			}
			if h.baseline, err = buildAgent(o.repo, o.baselineRev, dir); err != nil {
				return nil, err
			}
		default:
			h.baseline = h.agent
		}
	}
	if slices.Contains(o.variants, variantFloor) {
		if h.floor, err = buildFloor(o.repo, h.dir); err != nil {
			return nil, err
		}
	}

	if slices.ContainsFunc(o.workloads, usesGhz) {
		if h.ghz = o.ghz; h.ghz == "" {
			if h.ghz, err = findGhz(); err != nil {
				return nil, err
			}
			h.o.ghz = h.ghz // for the report
		}
		if err := os.WriteFile(filepath.Join(h.dir, "echo.proto"), []byte(echoProto), 0o644); err != nil {
			return nil, err
		}
	}

	h.www = filepath.Join(h.dir, "www")
	if err := os.MkdirAll(h.www, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(h.www, "index.html"), hello, 0o644); err != nil {
		return nil, err
	}

	otlpPort, statsPort := freePort(), freePort()
	h.otlpAddr = fmt.Sprintf("127.0.0.1:%d", otlpPort)
	h.statsURL = fmt.Sprintf("http://127.0.0.1:%d/", statsPort)
	cmd := exec.Command(filepath.Join(h.dir, "otlpsink"), "receiver", "-addr", h.otlpAddr, "-stats", fmt.Sprintf("127.0.0.1:%d", statsPort))
	if h.receiver, err = start("receiver", cmd, false); err != nil {
		return nil, err
	}
	if err := h.receiver.waitOutput("ready", 10*time.Second); err != nil {
		return nil, err
	}
	return h, nil
}

// splitEnv splits a comma-separated list of KEY=value settings. A value
// may hold commas itself (PODTRACER_OPT_IN_ATTRIBUTES=url.scheme,url.template,
// OTEL_RESOURCE_ATTRIBUTES=a=1,b=2): a piece that does not start with a
// variable's name (upper case, digits, _) and "=" belongs to the value
// before it.
func splitEnv(list string) ([]string, error) {
	var env []string
	for _, piece := range strings.Split(list, ",") {
		name, _, ok := strings.Cut(piece, "=")
		switch {
		case ok && name != "" && strings.Trim(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == "":
			env = append(env, piece)
		case len(env) > 0:
			env[len(env)-1] += "," + piece
		case piece != "":
			return nil, fmt.Errorf("%q is not KEY=value", piece)
		}
	}
	return env, nil
}

// buildAgent builds podtracer from the working tree at repo, or from a git
// revision of it exported into dir, as the image's is built (Dockerfile:
// static, and grpcnotrace): a binary linked with libc maps it, 1.5 MB of
// resident memory that users' agents do not have. Its symbols stay, for
// -profile's perf.
func buildAgent(repo, rev, dir string) (string, error) {
	src := repo
	if rev != "" {
		src = filepath.Join(dir, "src")
		if err := os.MkdirAll(src, 0o755); err != nil {
			return "", err
		}
		archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", repo, rev, src)
		if out, err := archive.CombinedOutput(); err != nil {
			return "", fmt.Errorf("export revision %s: %v\n%s", rev, err, out)
		}
	}
	bin := filepath.Join(dir, "podtracer")
	logf("building podtracer from %s %s", repo, rev)
	cmd := exec.Command("go", "build", "-trimpath", "-tags", "grpcnotrace", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build podtracer: %v\n%s", err, out)
	}
	return bin, nil
}

func (h *harness) close() {
	if h.receiver != nil {
		h.receiver.stop(5 * time.Second)
	}
	if h.dir != "" {
		os.RemoveAll(h.dir)
	}
}

// run runs every round and prints the report.
func (h *harness) run(ctx context.Context) error {
	m, err := describeMachine(h.o)
	if err != nil {
		return err
	}
	phases := h.o.phases()
	var results []*result
	began := time.Now()
	for round := 0; round < h.o.rounds; round++ {
		for _, w := range h.o.workloads {
			var variants []string
			for _, v := range workloadNamed(w).variants {
				if slices.Contains(h.o.variants, v) {
					variants = append(variants, v)
				}
			}
			// A/B: podtracer and the baseline swap places every other
			// round, so that neither always runs right after the other
			// (whatever one phase leaves behind, the receiver's garbage,
			// maps being freed, lands on both alike).
			if i, j := slices.Index(variants, variantPodtracer), slices.Index(variants, variantBaseline); i >= 0 && j >= 0 && round%2 == 1 {
				variants[i], variants[j] = variants[j], variants[i]
			}
			for _, ph := range phases {
				// Rotate the order each round, so that no variant always
				// runs first or last.
				for i := range variants {
					v := variants[(i+round)%len(variants)]
					if err := ctx.Err(); err != nil {
						return err
					}
					res, err := h.runPhase(ctx, w, v, ph)
					if err != nil {
						return fmt.Errorf("round %d, %s %s %s: %w", round+1, w, v, ph.name, err)
					}
					res.Round = round
					results = append(results, res)
					logf("round %d/%d  %-11s %-9s %-10s %s", round+1, h.o.rounds, w, v, ph.name, res.summary())
				}
			}
		}
	}
	logf("done in %v", time.Since(began).Round(time.Second))
	if h.o.jsonOut != "" {
		b, _ := json.MarshalIndent(runFile{m, h.o.rounds, h.o.duration, h.o.warmup, h.o.conns, h.o.workloads, h.o.rates, h.o.saturate, h.o.traceparent, results}, "", "  ")
		if err := os.WriteFile(h.o.jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	report(os.Stdout, m, h.o, phases, results)
	return nil
}

// runFile is what -json writes and -report reads back.
type runFile struct {
	Machine          machine
	Rounds           int
	Duration, Warmup time.Duration
	Conns            int
	Workloads        []string
	Rates            []float64
	Saturation       bool
	Traceparent      bool `json:",omitempty"`
	Results          []*result
}

// reportFile prints the report of a run saved with -json.
func reportFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var f runFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	o := options{rounds: f.Rounds, duration: f.Duration, warmup: f.Warmup, conns: f.Conns, workloads: f.Workloads, rates: f.Rates, saturate: f.Saturation, traceparent: f.Traceparent}
	report(os.Stdout, f.Machine, o, o.phases(), f.Results)
	return nil
}

// phases are the loads every variant runs, in order.
func (o options) phases() []phase {
	var phases []phase
	if o.saturate {
		phases = append(phases, phase{name: "saturation"})
	}
	for _, r := range o.rates {
		phases = append(phases, phase{name: fmt.Sprintf("%g/s", r), rate: r})
	}
	return phases
}

// phase is one kind of load: saturation (wrk) or a fixed rate.
type phase struct {
	name string
	rate float64 // 0: saturation
}

// result is what one phase of one variant measured in one round.
type result struct {
	Workload, Variant, Phase string
	Round                    int
	Rate                     float64 // achieved requests/s, measured part

	Served  uint64 // responses in the measured part
	Warmup  uint64 // responses in the warm-up
	Errors  uint64 // non-2xx responses and socket errors
	P50     float64
	P99     float64 // µs; fixed rates only
	Backlog uint64  // fixed rate: requests that waited for a free connection

	ServerCPU, AgentCPU, ClientCPU time.Duration // measured part
	// ReceiverCPU is the OTLP receiver's, over the measured part and the
	// agent's settling: a collector elsewhere would not take it from the
	// pod's cores, this one does.
	ReceiverCPU      time.Duration
	AgentCtxSwitches uint64

	// Agent memory, kB: right after start, at the end of the measured
	// part, and the peak over its life.
	RSSIdle, RSSEnd, HWM, AnonEnd uint64
	KernelMemory                  uint64 // bytes the capture's BPF maps hold (memlock), not in RSS

	AgentStats map[string]uint64 // the "final stats" line
	Received   receiverCounts    // what reached the receiver in this phase

	// Noise: CPU the machine used before the phase (cores, while waiting
	// for quiet), and during the measured part for anything but the
	// server, agent, load generator and receiver; host steal time.
	BusyBefore, Background, Steal float64
	TracingPrograms               int // BPF tracing programs loaded before the phase; -1: unknown
}

func (r *result) summary() string {
	s := fmt.Sprintf("%8.0f req/s", r.Rate)
	if r.P50 > 0 {
		s += fmt.Sprintf("  p50 %6.0fµs p99 %6.0fµs", r.P50, r.P99)
	}
	if r.Served > 0 {
		s += fmt.Sprintf("  cpu/req server %5.1fµs agent %5.1fµs", us(r.ServerCPU)/float64(r.Served), us(r.AgentCPU)/float64(r.Served))
	}
	if agentVariant(r.Variant) {
		s += fmt.Sprintf("  hwm %dMB lost %d spans %d/%d", r.HWM>>10, r.AgentStats["kernel_lost"], r.Received.ServerSpans, r.Served+r.Warmup)
	} else if r.Variant == variantOTelHTTP {
		s += fmt.Sprintf("  spans %d/%d", r.Received.ServerSpans, r.Served+r.Warmup)
	}
	s += fmt.Sprintf("  other %.2f cores", r.Background+r.Steal)
	if r.Errors > 0 {
		s += fmt.Sprintf("  ERRORS %d", r.Errors)
	}
	return s
}

// instance is one running variant of a workload in its own pod.
type instance struct {
	workload string
	pod      *pod
	addr     string
	server   *process
	agent    *process

	// redis-benchmark has no duration: the rate of its last run sets the
	// number of requests of the next.
	lastRate float64
}

// startInstance starts the workload's server in a new pod, and the agent
// beside it for the podtracer variant.
func (h *harness) startInstance(w, variant string) (_ *instance, err error) {
	in := &instance{workload: w}
	if in.pod, err = newPod(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			in.stop()
		}
	}()
	port := freePort()
	in.addr = fmt.Sprintf("127.0.0.1:%d", port)
	var cmd *exec.Cmd
	switch w {
	case workloadGo:
		args := []string{"server", "-addr", in.addr}
		if variant == variantOTelHTTP {
			args = append(args, "-otel")
		}
		cmd = in.pod.command(filepath.Join(h.dir, "hello"), args...)
		cmd.Env = append(os.Environ(), h.otlpEnv()...) // otelhttp's exporter
	case workloadNginx:
		conf, err := h.nginxConf(port)
		if err != nil {
			return nil, err
		}
		cmd = in.pod.command("nginx", "-c", conf)
	case workloadRedis:
		dir, err := os.MkdirTemp(h.dir, "redis-")
		if err != nil {
			return nil, err
		}
		cmd = in.pod.command("redis-server", "--save", "", "--appendonly", "no", "--port", strconv.Itoa(port),
			"--bind", "127.0.0.1", "--dir", dir)
	case workloadGRPC:
		cmd = in.pod.command(filepath.Join(h.dir, "grpc-echo"), "server", "-grpc", "-addr", in.addr)
	case workloadGRPCTLS:
		cmd = in.pod.command(filepath.Join(h.dir, "grpc-echo"), "server", "-grpc", "-tls", "-addr", in.addr)
	default:
		return nil, fmt.Errorf("unknown workload %q", w)
	}
	if in.server, err = start("server", cmd, true); err != nil {
		return nil, err
	}
	if err := waitListening(in.addr, in.server); err != nil {
		return nil, err
	}
	if w == workloadRedis {
		if err := redisSeed(in.addr); err != nil {
			return nil, err
		}
	}
	if agentVariant(variant) {
		var cmd *exec.Cmd
		if variant == variantFloor {
			cmd = in.pod.command(h.self, "floor", h.floor)
		} else {
			agent := h.agent
			if variant == variantBaseline {
				agent = h.baseline
			}
			cmd = in.pod.command(agent)
			cmd.Env = append(append(os.Environ(), h.agentEnv()...), h.o.env...)
			switch variant {
			case variantSampled:
				cmd.Env = append(cmd.Env, sampledEnv...)
			case variantBaseline:
				cmd.Env = append(cmd.Env, h.o.baselineEnv...)
			}
		}
		if in.agent, err = start(variant, cmd, true); err != nil {
			return nil, err
		}
		if err := in.agent.waitOutput("podtracer agent running", 60*time.Second); err != nil {
			return nil, err
		}
		if w == workloadGRPCTLS && variant != variantFloor {
			// Its uprobes in before the first connection: a read begun
			// before them is not read (README, "TLS").
			if err := in.agent.waitOutput(`msg="reading TLS plaintext"`, 30*time.Second); err != nil {
				return nil, err
			}
		}
	}
	return in, nil
}

func (in *instance) stop() {
	if in.agent != nil {
		in.agent.stop(15 * time.Second)
	}
	if in.server != nil {
		in.server.stop(15 * time.Second)
	}
	in.pod.close()
}

// serverPIDs are the pod's processes but the agent: the server, or nginx's
// master and worker. Each counts all its threads (redis-server's background
// ones too).
func (in *instance) serverPIDs() []int {
	var pids []int
	for _, pid := range in.pod.members() {
		if in.agent == nil || pid != in.agent.pid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// otlpEnv points an exporter at the bench's receiver.
func (h *harness) otlpEnv() []string {
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + h.otlpAddr,
		"OTEL_EXPORTER_OTLP_INSECURE=true",
	}
}

// agentEnv is the agent's environment: export to the bench's receiver,
// and stop at once when stopped, since the load has ended by then (no
// drain of a second, PODTRACER_SHUTDOWN_WAIT, per phase).
func (h *harness) agentEnv() []string {
	return append(h.otlpEnv(), "PODTRACER_SHUTDOWN_WAIT=0")
}

// runPhase runs one phase of one variant in a fresh pod: warm-up, then the
// measured part, then the agent's and the receiver's accounts.
func (h *harness) runPhase(ctx context.Context, w, variant string, ph phase) (*result, error) {
	busy, progs := h.waitQuiet()
	if busy >= h.o.quietCores || progs > 0 {
		logf("machine not quiet after %v: %.2f cores busy, %d BPF tracing programs loaded; measuring anyway", h.o.quietWait, busy, progs)
	}
	before, err := h.receiverCounts()
	if err != nil {
		return nil, err
	}
	in, err := h.startInstance(w, variant)
	if err != nil {
		return nil, err
	}
	defer in.stop()
	res := &result{Workload: w, Variant: variant, Phase: ph.name, BusyBefore: busy, TracingPrograms: progs}
	if in.agent != nil {
		res.RSSIdle = procStatus(in.agent.pid)["VmRSS"]
	}

	warm, err := h.load(in, ph, h.o.warmup)
	if err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	res.Warmup = warm.served

	pids := in.serverPIDs()
	serverCPU := cpuTimes(pids)
	var agentCPU time.Duration
	var agentSwitches uint64
	if in.agent != nil {
		agentCPU, _ = cpuTime(in.agent.pid)
		agentSwitches = contextSwitches(in.agent.pid)
	}
	machine0, receiver0, began := readCPUStat(), cpuTimes([]int{h.receiver.pid}), time.Now()

	l, err := h.load(in, ph, h.o.duration)
	if err != nil {
		return nil, err
	}
	res.Rate, res.Served, res.Errors, res.P50, res.P99, res.Backlog, res.ClientCPU = l.rate, l.served, l.errors, l.p50, l.p99, l.backlog, l.cpu

	if in.agent != nil {
		// The agent may still be draining the ring buffer: wait until it
		// is idle, so that its whole cost for the load is counted.
		settle(in.agent.pid, 5*time.Second)
		t, _ := cpuTime(in.agent.pid)
		res.AgentCPU = t - agentCPU
		res.AgentCtxSwitches = contextSwitches(in.agent.pid) - agentSwitches
		st := procStatus(in.agent.pid)
		res.RSSEnd, res.HWM, res.AnonEnd = st["VmRSS"], st["VmHWM"], st["RssAnon"]
	}
	res.ServerCPU = cpuTimes(pids) - serverCPU
	machine1, elapsed := readCPUStat(), time.Since(began)
	res.ReceiverCPU = cpuTimes([]int{h.receiver.pid}) - receiver0
	ours := res.ServerCPU + res.AgentCPU + res.ClientCPU + res.ReceiverCPU
	res.Background = max(0, float64(machine1.busy-machine0.busy-ours)/float64(elapsed))
	res.Steal = float64(machine1.steal-machine0.steal) / float64(elapsed)

	// Stop the producers so that what they still held is flushed, then
	// read the accounts.
	if in.agent != nil {
		events, lost, untracked, memlock, ok := kernelCounters(in.agent.pid)
		in.agent.stop(15 * time.Second)
		res.AgentStats = parseFinalStats(in.agent.output())
		if res.AgentStats == nil {
			return nil, fmt.Errorf("no final stats line from the agent:\n%s", in.agent.output())
		}
		if variant == variantFloor && res.AgentStats["floor_calls"] == 0 {
			return nil, fmt.Errorf("the floor program followed none of the pod's calls: it measured nothing:\n%s", in.agent.output())
		}
		if ok {
			res.AgentStats["kernel_events"], res.AgentStats["kernel_lost"], res.AgentStats["calls_untracked"] = events, lost, untracked
			res.KernelMemory = memlock
		}
		in.agent = nil
	}
	in.server.stop(15 * time.Second)
	after, err := h.receiverCounts()
	if err != nil {
		return nil, err
	}
	res.Received = receiverCounts{
		Spans:         after.Spans - before.Spans,
		ServerSpans:   after.ServerSpans - before.ServerSpans,
		MetricPoints:  after.MetricPoints - before.MetricPoints,
		TraceExports:  after.TraceExports - before.TraceExports,
		MetricExports: after.MetricExports - before.MetricExports,
	}
	return res, nil
}

// settle waits until pid has used no CPU for 200 ms, or timeout.
func settle(pid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	last, _ := cpuTime(pid)
	quiet := 0
	for time.Now().Before(deadline) && quiet < 2 {
		time.Sleep(100 * time.Millisecond)
		t, err := cpuTime(pid)
		if err != nil {
			return
		}
		if t-last <= clockTick {
			quiet++
		} else {
			quiet = 0
		}
		last = t
	}
}

// loadRun is the common part of what wrk and the open-loop generator say.
type loadRun struct {
	served, errors, backlog uint64
	rate, p50, p99          float64
	cpu                     time.Duration
}

// load drives the instance for d: at saturation, wrk (HTTP),
// redis-benchmark (Redis) or ghz (gRPC); at the phase's rate, the open-loop
// generator (HTTP, Redis) or ghz. They run outside the pod, so they are
// not traced.
func (h *harness) load(in *instance, ph phase, d time.Duration) (*loadRun, error) {
	switch {
	case usesGhz(in.workload):
		return h.runGhz(in.addr, ph.rate, h.o.conns, d, in.workload == workloadGRPCTLS)
	case ph.rate == 0 && in.workload == workloadRedis:
		if in.lastRate == 0 {
			in.lastRate = 20000 // a guess, for the warm-up
		}
		l, err := redisBenchmark(in.addr, h.o.conns, max(1000, uint64(in.lastRate*d.Seconds())))
		if err == nil {
			in.lastRate = l.rate
		}
		return l, err
	case ph.rate == 0:
		return runWrk(in.addr, h.o.conns, d, h.o.traceparent)
	}
	proto := "http"
	if in.workload == workloadRedis {
		proto = "resp"
	}
	out, cpu, err := runLoader("load generator", exec.Command(filepath.Join(h.dir, "loadgen"), "load", "-proto", proto,
		"-addr", in.addr, "-rate", fmt.Sprint(ph.rate), "-conns", strconv.Itoa(h.o.conns), "-duration", d.String(),
		fmt.Sprintf("-traceparent=%v", h.o.traceparent && proto == "http")))
	if err != nil {
		return nil, err
	}
	var r loadResult
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("load generator said %q: %w", out, err)
	}
	return &loadRun{served: r.Completed, errors: r.Errors + r.Failed + (r.Scheduled - r.Completed), backlog: r.Backlogged,
		rate: r.Rate, p50: r.P50, p99: r.P99, cpu: cpu}, nil
}

// runLoader runs a load generator to its end, and returns its output and
// the CPU it used. It dies with the harness.
func runLoader(name string, cmd *exec.Cmd) ([]byte, time.Duration, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w (%s)", name, err, exitOutput(err))
	}
	return out, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

func runWrk(addr string, conns int, d time.Duration, traceparent bool) (*loadRun, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", secs)}
	if traceparent {
		args = append(args, "-H", "traceparent: "+benchTraceparent)
	}
	out, cpu, err := runLoader("wrk", exec.Command("wrk", append(args, "http://"+addr+"/")...))
	if err != nil {
		return nil, err
	}
	r := &loadRun{cpu: cpu}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			r.served, _ = strconv.ParseUint(f[0], 10, 64)
		case len(f) == 2 && f[0] == "Requests/sec:":
			r.rate, _ = strconv.ParseFloat(f[1], 64)
		case strings.HasPrefix(strings.TrimSpace(line), "Non-2xx or 3xx responses:"):
			n, _ := strconv.ParseUint(f[len(f)-1], 10, 64)
			r.errors += n
		case strings.HasPrefix(strings.TrimSpace(line), "Socket errors:"):
			// Socket errors: connect 0, read 0, write 0, timeout 0
			for i := 2; i+1 < len(f); i += 2 {
				n, _ := strconv.ParseUint(strings.TrimSuffix(f[i+1], ","), 10, 64)
				r.errors += n
			}
		}
	}
	if r.served == 0 {
		return nil, fmt.Errorf("wrk served nothing:\n%s", out)
	}
	return r, nil
}

func exitOutput(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

func (h *harness) receiverCounts() (receiverCounts, error) {
	var c receiverCounts
	resp, err := httpGet(h.statsURL)
	if err != nil {
		return c, fmt.Errorf("receiver stats: %w", err)
	}
	return c, json.Unmarshal(resp, &c)
}

// parseFinalStats reads the agent's `msg="final stats" key=value ...` line.
func parseFinalStats(log string) map[string]uint64 {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `msg="final stats"`) {
			continue
		}
		m := map[string]uint64{}
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				m[k] = n
			}
		}
		return m
	}
	return nil
}

func (h *harness) nginxConf(port int) (string, error) {
	dir, err := os.MkdirTemp(h.dir, "nginx-")
	if err != nil {
		return "", err
	}
	// One worker (like the Go server, the workload gets what the two cores
	// give it), keep-alive without a request limit, a small static file.
	conf := fmt.Sprintf(`daemon off;
user root;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events {}
http {
	access_log off;
	keepalive_requests 100000000;
	keepalive_timeout 60s;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen 127.0.0.1:%[2]d;
		root %[3]s;
	}
}
`, dir, port, h.www)
	path := filepath.Join(dir, "nginx.conf")
	return path, os.WriteFile(path, []byte(conf), 0o644)
}

// freePort returns a TCP port nobody listens on now.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitListening waits until addr accepts connections.
func waitListening(addr string, p *process) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited:\n%s", p.name, p.output())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("nothing listens on %s:\n%s", addr, p.output())
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
