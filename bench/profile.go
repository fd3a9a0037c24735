package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// profile answers "where does podtracer's cost go": it runs bare and
// podtracer at one fixed rate, samples every CPU with perf meanwhile, and
// reads the kernel's own run-time accounting of the BPF programs. It prints
// markdown on stdout and leaves perf.data files and full reports in out/.
func (h *harness) profile(ctx context.Context) error {
	outDir, err := filepath.Abs("out")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	ph := phase{name: fmt.Sprintf("%g/s", h.o.profRate), rate: h.o.profRate}
	out := os.Stdout
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }
	p("## Profile at %s, %v per variant (perf files in %s)\n", ph.name, h.o.duration, outDir)
	if err := h.tax(out); err != nil {
		return err
	}
	for _, w := range h.o.workloads {
		for _, v := range []string{variantBare, variantFloor, variantSampled, variantPodtracer} {
			if !slices.Contains(h.o.variants, v) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			logf("profiling %s %s at %s", w, v, ph.name)
			if err := h.profileOne(out, outDir, w, v, ph); err != nil {
				return fmt.Errorf("profile %s %s: %w", w, v, err)
			}
		}
	}
	return nil
}

func (h *harness) profileOne(out io.Writer, outDir, w, v string, ph phase) error {
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }
	if busy, progs := h.waitQuiet(); busy >= h.o.quietCores || progs > 0 {
		logf("machine not quiet: %.2f cores busy, %d BPF tracing programs; profiling anyway", busy, progs)
	}
	in, err := h.startInstance(w, v)
	if err != nil {
		return err
	}
	defer in.stop()
	if _, err := h.load(in, ph, h.o.warmup); err != nil {
		return err
	}
	var restore func()
	if in.agent != nil {
		// The kernel counts BPF run time only while asked to; it costs a
		// little per run, so only here, never in the benchmark.
		if restore, err = sysctl("/proc/sys/kernel/bpf_stats_enabled", "1"); err != nil {
			return err
		}
		defer restore()
	}
	progsBefore, _ := bpfPrograms()
	pids := in.serverPIDs()
	serverCPU := cpuTimes(pids)
	var agentCPU time.Duration
	var agentSwitches uint64
	if in.agent != nil {
		agentCPU, _ = cpuTime(in.agent.pid)
		agentSwitches = contextSwitches(in.agent.pid)
	}

	slug := strings.NewReplacer(" ", "-", "/", "-").Replace(w + "-" + v)
	data := filepath.Join(outDir, "perf-"+slug+".data")
	os.Remove(data) // else perf keeps it as .old
	perf := exec.Command("perf", "record", "-a", "-g", "-F", "1999", "-e", "cpu-clock", "-o", data,
		"--", "sleep", fmt.Sprint(h.o.duration.Seconds()))
	perf.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var perfOut bytes.Buffer
	perf.Stdout, perf.Stderr = &perfOut, &perfOut
	if err := perf.Start(); err != nil {
		return fmt.Errorf("perf record: %w", err)
	}
	l, err := h.load(in, ph, h.o.duration)
	if err != nil {
		perf.Process.Kill()
		perf.Wait()
		return err
	}
	if err := perf.Wait(); err != nil {
		return fmt.Errorf("perf record: %w\n%s", err, perfOut.String())
	}
	var mem map[string]uint64
	var maps string
	if in.agent != nil {
		agentSwitches = contextSwitches(in.agent.pid) - agentSwitches
		settle(in.agent.pid, 5*time.Second)
		t, _ := cpuTime(in.agent.pid)
		agentCPU = t - agentCPU
		mem = procStatus(in.agent.pid)
		maps = topMappings(in.agent.pid, 6)
	}
	serverCPU = cpuTimes(pids) - serverCPU
	progsAfter, _ := bpfPrograms()
	var stats map[string]uint64
	if in.agent != nil {
		in.agent.stop(15 * time.Second)
		stats = parseFinalStats(in.agent.output())
	}

	p("\n### %s, %s\n\n", w, v)
	p("%d requests at %.0f/s; p50 %.0f µs, p99 %.0f µs. CPU per request: server %.2f µs", l.served, l.rate, l.p50, l.p99,
		us(serverCPU)/float64(l.served))
	if in.agent != nil {
		p(", agent %.2f µs", us(agentCPU)/float64(l.served))
	}
	p(", load generator %.2f µs (outside the pod).\n", us(l.cpu)/float64(l.served))
	if stats != nil {
		p("Agent final stats: %v.\n", stats)
		p("Agent: %.2f context switches (wake-ups) per request; memory at the end: VmRSS %d kB = RssAnon %d + RssFile %d + RssShmem %d; VmHWM %d kB.\n",
			float64(agentSwitches)/float64(l.served), mem["VmRSS"], mem["RssAnon"], mem["RssFile"], mem["RssShmem"], mem["VmHWM"])
		p("Largest resident mappings: %s.\n", maps)
	}

	if in.agent != nil && progsAfter != nil {
		p("\nBPF programs (kernel run-time accounting, all processes on the machine):\n\n")
		p("| program | runs | runs / request | ns / run | ns / request |\n|---|---|---|---|---|\n")
		for _, pa := range progsAfter {
			if !captureProgram(pa.Name) {
				continue
			}
			var b bpfProgram
			for _, pb := range progsBefore {
				if pb.ID == pa.ID {
					b = pb
				}
			}
			runs, ns := pa.RunCnt-b.RunCnt, pa.RunTimeNS-b.RunTimeNS
			if runs == 0 {
				continue
			}
			p("| %s (id %d) | %d | %.1f | %.0f | %.0f |\n", pa.Name, pa.ID, runs, float64(runs)/float64(l.served),
				float64(ns)/float64(runs), float64(ns)/float64(l.served))
		}
	}

	if rep, err := perfReport(data, nil, "--no-children", "--sort", "comm"); err == nil {
		p("\nWhole machine, samples by command (noise check):\n\n```\n%s```\n", topLines(rep, 8))
	}

	// Where the samples fell, per process: self time by symbol.
	for _, who := range []struct {
		name string
		pids []int
	}{{"server", pids}, {"agent", agentPIDs(in)}} {
		if len(who.pids) == 0 {
			continue
		}
		rep, err := perfReport(data, who.pids, "--no-children", "--sort", "dso,sym")
		if err != nil {
			return err
		}
		file := filepath.Join(outDir, fmt.Sprintf("report-%s-%s.txt", slug, who.name))
		if err := os.WriteFile(file, []byte(rep), 0o644); err != nil {
			return err
		}
		p("\n%s (pids %v): top symbols by self time (full report: %s)\n\n```\n%s```\n", who.name, who.pids, file, topLines(rep, 20))
	}
	if in.agent != nil {
		breakdown, err := agentBreakdown(data, agentPIDs(in), us(agentCPU)/float64(l.served))
		if err != nil {
			return err
		}
		p("\nagent: where its CPU goes (perf samples, each counted once)\n\n%s", breakdown)
	}
	bpfShare, err := bpfBreakdown(data, pids, us(serverCPU)/float64(l.served))
	if err != nil {
		return err
	}
	p("\nserver: BPF programs\n\n%s", bpfShare)
	return nil
}

func agentPIDs(in *instance) []int {
	if in.agent == nil {
		return nil
	}
	return []int{in.agent.pid}
}

// sysctl sets a /proc/sys file and returns how to put the old value back.
func sysctl(path, value string) (func(), error) {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return nil, err
	}
	return func() { os.WriteFile(path, old, 0o644) }, nil
}

// captureProgram tells whether a BPF program name is one of the
// capture's, of either hook set, or the floor's (the kernel cuts names to 15 bytes;
// bpftool may print the full one from BTF).
func captureProgram(name string) bool {
	for _, p := range []string{"sys_enter", "sys_exit", "sock_recv_lengt", "sock_send_lengt", "inet_sock_set_s", "floor_recv", "floor_send"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

type bpfProgram struct {
	ID        int    `json:"id"`
	Name      string `json:"name"`
	RunTimeNS uint64 `json:"run_time_ns"`
	RunCnt    uint64 `json:"run_cnt"`
}

func bpfPrograms() ([]bpfProgram, error) {
	out, err := exec.Command("bpftool", "prog", "show", "-j").Output()
	if err != nil {
		return nil, err
	}
	var progs []bpfProgram
	return progs, json.Unmarshal(out, &progs)
}

func perfReport(data string, pids []int, args ...string) (string, error) {
	a := []string{"report", "-i", data, "--stdio", "--percent-limit", "0.5", "-g", "none", "--percentage", "relative"}
	if len(pids) > 0 {
		a = append(a, "--pid", joinInts(pids))
	}
	a = append(a, args...)
	out, err := exec.Command("perf", a...).Output()
	if err != nil {
		return "", fmt.Errorf("perf report: %w (%s)", err, exitOutput(err))
	}
	return string(out), nil
}

// topLines returns the first n sample lines of a perf report.
func topLines(rep string, n int) string {
	var b strings.Builder
	for _, line := range strings.Split(rep, "\n") {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			if strings.HasPrefix(line, "# Samples") || strings.HasPrefix(line, "# Event count") {
				b.WriteString(line + "\n")
			}
			continue
		}
		b.WriteString(line + "\n")
		if n--; n == 0 {
			break
		}
	}
	return b.String()
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

// stacks reads perf script's call chains of pids: one []string of symbols
// per sample, leaf first.
func stacks(data string, pids []int) ([][]string, error) {
	cmd := exec.Command("perf", "script", "-i", data, "--pid", joinInts(pids), "-F", "ip,sym,dso")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var all [][]string
	var cur []string
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			if len(cur) > 0 {
				all = append(all, cur)
			}
			cur = nil
			continue
		}
		// "ffffffff81000000 symbol+0x12 ([kernel.kallsyms])"
		ip, rest, _ := strings.Cut(line, " ")
		sym, dso := rest, ""
		if i := strings.LastIndex(rest, " ("); i >= 0 {
			sym, dso = rest[:i], strings.Trim(rest[i+2:], "()")
		}
		if i := strings.LastIndex(sym, "+0x"); i > 0 {
			sym = sym[:i]
		}
		switch m := bpfProgDSO.FindStringSubmatch(dso); {
		case m != nil:
			sym = "[bpf] " + m[1]
		case strings.HasPrefix(dso, "[kernel") || (dso == "[unknown]" && strings.HasPrefix(ip, "ffff")):
			sym = "[k] " + sym
		}
		cur = append(cur, sym)
	}
	if len(cur) > 0 {
		all = append(all, cur)
	}
	return all, cmd.Wait()
}

// agentParts split the agent's samples into exclusive parts: the first
// whose pattern some frame of the sample matches takes it. Goroutines are
// recognised by the functions they run.
var agentParts = []struct{ name, re string }{
	{"capture loop: ring buffer read (epoll wait, ReadInto, decode)", `ringbuf\.\(\*Reader\)\.ReadInto|bpf\.\(\*Event\)\.decode`},
	{"capture loop: tracer (HTTP parse, pairing, Request)", `tracer\.\(\*Tracer\)\.Handle`},
	{"capture loop: other", `main\.runAgent`},
	{"exporter worker: request to SDK span and metric points", `exporter\.\(\*Exporter\)\.run`},
	{"batch span processor: OTLP conversion, protobuf, gRPC send", `sdk/trace\.NewBatchSpanProcessor|batchSpanProcessor`},
	{"gRPC transport goroutines", `google\.golang\.org/grpc/internal/transport`},
	{"metric reader (periodic export)", `sdk/metric\.\(\*PeriodicReader\)`},
	{"garbage collector (background mark, sweep, scavenge)", `runtime\.(gcBgMarkWorker|bgsweep|bgscavenge)`},
	{"Go scheduler: idle, spinning, wake-ups", `runtime\.(mstart|park_m|gosched_m|schedule|goexit0|mcall|exitsyscallNoP)$`},
	{"pod discovery (/proc)", `pod\.`},
}

// agentBreakdown splits the agent's samples into agentParts, in shares and
// in µs per request (perReq is the agent's CPU per request).
func agentBreakdown(data string, pids []int, perReq float64) (string, error) {
	st, err := stacks(data, pids)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if len(st) == 0 {
		return "no samples\n", nil
	}
	res := make([]*regexp.Regexp, len(agentParts))
	for i, part := range agentParts {
		res[i] = regexp.MustCompile(part.re)
	}
	counts := make([]int, len(agentParts)+1)
	var kernel, malloc, assist int
	for _, s := range st {
		part := len(agentParts)
		for i, re := range res {
			if slices.ContainsFunc(s, re.MatchString) {
				part = i
				break
			}
		}
		counts[part]++
		if strings.HasPrefix(s[0], "[k] ") {
			kernel++
		}
		if slices.Contains(s, "runtime.mallocgc") {
			malloc++
		}
		if slices.Contains(s, "runtime.gcAssistAlloc") {
			assist++
		}
	}
	n := float64(len(st))
	fmt.Fprintf(&b, "| part | share of agent CPU | µs per request |\n|---|---|---|\n")
	for i, c := range counts {
		name := "other"
		if i < len(agentParts) {
			name = agentParts[i].name
		}
		if c == 0 {
			continue
		}
		fmt.Fprintf(&b, "| %s | %.1f%% | %.2f |\n", name, 100*float64(c)/n, perReq*float64(c)/n)
	}
	fmt.Fprintf(&b, "\nAcross those parts: %.1f%% of the samples are in the kernel (leaf frame), %.1f%% under runtime.mallocgc, %.1f%% in GC assists (%d samples).\n",
		100*float64(kernel)/n, 100*float64(malloc)/n, 100*float64(assist)/n, len(st))
	return b.String(), nil
}

// bpfBreakdown counts the server's samples spent inside the BPF programs
// (under bpf_trace_run*, which runs them from the tracepoint), by the
// helper or program at the bottom of the call.
func bpfBreakdown(data string, pids []int, perReq float64) (string, error) {
	st, err := stacks(data, pids)
	if err != nil {
		return "", err
	}
	callee := map[string]int{}
	inBPF := 0
	for _, s := range st {
		i := slices.IndexFunc(s, func(f string) bool { return strings.HasPrefix(f, "[k] bpf_trace_run") })
		if i < 0 {
			continue
		}
		inBPF++
		// The frame right under the program, or the program itself.
		j := slices.IndexFunc(s, isBPFProg)
		switch {
		case j > 0:
			callee[s[j]+" → "+s[j-1]]++
		case j == 0:
			callee[s[0]+" (own code)"]++
		default:
			callee[s[i]+" → "+s[max(0, i-1)]]++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d server samples (%.1f%%, about %.2f µs per request) are inside the BPF programs.\n\n",
		inBPF, len(st), 100*float64(inBPF)/float64(max(1, len(st))), perReq*float64(inBPF)/float64(max(1, len(st))))
	if inBPF == 0 {
		return b.String(), nil
	}
	type kv struct {
		k string
		v int
	}
	var kvs []kv
	for k, v := range callee {
		kvs = append(kvs, kv{k, v})
	}
	slices.SortFunc(kvs, func(a, b kv) int { return b.v - a.v })
	fmt.Fprintf(&b, "| program → what it called (leaf side) | share of in-BPF samples |\n|---|---|\n")
	for i, e := range kvs {
		if i == 15 {
			break
		}
		fmt.Fprintf(&b, "| %s | %.1f%% |\n", e.k, 100*float64(e.v)/float64(inBPF))
	}
	return b.String(), nil
}

func isBPFProg(sym string) bool { return strings.HasPrefix(sym, "[bpf] ") }

var bpfProgDSO = regexp.MustCompile(`^bpf_prog_[0-9a-f]+_(.+)$`)

// tax measures what the capture costs processes that are not in the pod:
// the harness itself times syscalls with no agent, then with an agent
// loaded in an idle pod. getppid is a syscall the programs do not follow;
// a one-byte read of /dev/zero is one they follow up to the PID namespace
// check. A loopback TCP round trip (two sends, two receives) is timed
// outside the pod (another pod's traffic: the socket hooks run, and leave
// at the PID namespace check) and inside it (traced: each call copies its
// bytes to the agent).
func (h *harness) tax(out io.Writer) error {
	bareGetppid, bareRead := syscallCost()
	pd, err := newPod()
	if err != nil {
		return err
	}
	defer pd.close()
	bareOutside, bareInside, err := h.roundTrips(pd)
	if err != nil {
		return err
	}
	cmd := pd.command(h.agent)
	cmd.Env = append(append(os.Environ(), h.agentEnv()...), h.o.env...)
	agent, err := start("podtracer", cmd, true)
	if err != nil {
		return err
	}
	defer agent.stop(15 * time.Second)
	if err := agent.waitOutput("podtracer agent running", 60*time.Second); err != nil {
		return err
	}
	getppid, read := syscallCost()
	outside, inside, err := h.roundTrips(pd)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nTax on processes outside the pod (ns per syscall, best of 5 runs of 200000, measured by the harness itself):\n\n")
	fmt.Fprintf(out, "| syscall | no agent | agent loaded | added |\n|---|---|---|---|\n")
	fmt.Fprintf(out, "| getppid (not followed) | %.0f | %.0f | %+.0f |\n", bareGetppid, getppid, getppid-bareGetppid)
	fmt.Fprintf(out, "| read 1 byte of /dev/zero (followed: PID namespace check, then dropped) | %.0f | %.0f | %+.0f |\n", bareRead, read, read-bareRead)
	fmt.Fprintf(out, "\nKernel cost per socket call (ns per loopback TCP round trip of two sends and two receives, best of 5 runs of 100000; added per call is a quarter of the added):\n\n")
	fmt.Fprintf(out, "| where | no agent | agent loaded | added | added per call |\n|---|---|---|---|---|\n")
	fmt.Fprintf(out, "| outside the pod (another pod's traffic: filtered out) | %.0f | %.0f | %+.0f | %+.0f |\n", bareOutside, outside, outside-bareOutside, (outside-bareOutside)/4)
	fmt.Fprintf(out, "| inside the pod (traced: payload to the agent) | %.0f | %.0f | %+.0f | %+.0f |\n", bareInside, inside, inside-bareInside, (inside-bareInside)/4)
	return nil
}

// roundTrips times a socket round trip outside the pod (by the harness
// itself) and inside it, in ns.
func (h *harness) roundTrips(pd *pod) (outside, inside float64, err error) {
	if outside, err = socketRoundTrip(100000); err != nil {
		return 0, 0, err
	}
	inside, err = h.podRoundTrip(pd)
	return outside, inside, err
}

// podRoundTrip runs the pingpong role in the pod and returns what it
// measured.
func (h *harness) podRoundTrip(pd *pod) (float64, error) {
	out, err := pd.command(h.self, "pingpong").Output()
	if err != nil {
		return 0, fmt.Errorf("pingpong in the pod: %w", err)
	}
	var ns float64
	if _, err := fmt.Sscan(string(out), &ns); err != nil {
		return 0, fmt.Errorf("pingpong in the pod: %q: %w", out, err)
	}
	return ns, nil
}

// syscallCost times getppid and a 1-byte read on a locked thread, in ns.
func syscallCost() (getppid, read float64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.Open("/dev/zero")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	fd := int(f.Fd())
	buf := make([]byte, 1)
	const n = 200000
	getppid, read = math.Inf(1), math.Inf(1)
	for range 5 {
		t := time.Now()
		for range n {
			syscall.Getppid()
		}
		getppid = min(getppid, float64(time.Since(t))/n)
		t = time.Now()
		for range n {
			syscall.Read(fd, buf)
		}
		read = min(read, float64(time.Since(t))/n)
	}
	return getppid, read
}

// topMappings lists the n mappings of pid with the most resident memory,
// from /proc/PID/smaps.
func topMappings(pid, n int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return err.Error()
	}
	type mapping struct {
		name string
		rss  uint64
	}
	var all []mapping
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			name := "[anon]"
			if len(f) >= 6 {
				name = strings.Join(f[5:], " ")
			}
			all = append(all, mapping{name: name + " " + f[1]})
		case len(f) >= 2 && f[0] == "Rss:" && len(all) > 0:
			all[len(all)-1].rss, _ = strconv.ParseUint(f[1], 10, 64)
		}
	}
	// Same name and permissions: one line.
	sum := map[string]uint64{}
	for _, m := range all {
		sum[m.name] += m.rss
	}
	all = all[:0]
	for k, v := range sum {
		all = append(all, mapping{k, v})
	}
	slices.SortFunc(all, func(a, b mapping) int { return int(b.rss) - int(a.rss) })
	var parts []string
	for i, m := range all {
		if i == n {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d kB", m.name, m.rss))
	}
	return strings.Join(parts, "; ")
}
