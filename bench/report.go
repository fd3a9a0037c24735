package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// machine describes where the figures were measured.
type machine struct {
	CPU, Kernel, Memory, Virt string
	Cores                     int
	Go, Nginx, Wrk, Commit    string
	Redis, Ghz                string `json:",omitempty"`
	Baseline                  string `json:",omitempty"` // what the baseline variant ran
	Date                      string
}

func describeMachine(o options) (machine, error) {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Date: time.Now().Format("2006-01-02")}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		if strings.Contains(string(b), " hypervisor") {
			m.Virt = "virtual machine"
		}
	}
	if out, err := exec.Command("systemd-detect-virt").Output(); err == nil {
		m.Virt = "virtual machine (" + strings.TrimSpace(string(out)) + ")"
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if st := procStatusFile("/proc/meminfo"); st["MemTotal"] > 0 {
		m.Memory = fmt.Sprintf("%.1f GiB", float64(st["MemTotal"])/(1<<20))
	}
	if out, err := exec.Command("nginx", "-v").CombinedOutput(); err == nil {
		m.Nginx = strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: ")
	}
	if out, err := exec.Command("wrk", "-v").CombinedOutput(); len(out) > 0 {
		_ = err // wrk -v exits 1
		m.Wrk = strings.Fields(string(out))[1]
	}
	if slices.Contains(o.workloads, workloadRedis) {
		// Redis server v=7.0.15 sha=...
		if out, err := exec.Command("redis-server", "--version").Output(); err == nil {
			if f := strings.Fields(string(out)); len(f) > 2 {
				m.Redis = strings.TrimPrefix(f[2], "v=")
			}
		}
	}
	if slices.ContainsFunc(o.workloads, usesGhz) {
		// go install leaves ghz's version "dev": name the one built here
		// by the version asked for, any other by its path.
		m.Ghz = o.ghz
		if filepath.Base(filepath.Dir(o.ghz)) == "ghz-"+ghzVersion {
			m.Ghz = ghzVersion
		}
	}
	switch {
	case o.agent != "":
		m.Commit = o.agent
	case o.rev != "":
		if out, err := exec.Command("git", "-C", o.repo, "rev-parse", "--short", o.rev).Output(); err == nil {
			m.Commit = strings.TrimSpace(string(out))
		}
	default:
		if out, err := exec.Command("git", "-C", o.repo, "rev-parse", "--short", "HEAD").Output(); err == nil {
			m.Commit = strings.TrimSpace(string(out))
			if out, err := exec.Command("git", "-C", o.repo, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(out) > 0 {
				m.Commit += " + working tree changes"
			}
		}
	}
	if slices.Contains(o.variants, variantBaseline) {
		switch {
		case o.baselineAgent != "":
			m.Baseline = o.baselineAgent
		case o.baselineRev != "":
			m.Baseline = o.baselineRev
			if out, err := exec.Command("git", "-C", o.repo, "rev-parse", "--short", o.baselineRev).Output(); err == nil {
				m.Baseline = strings.TrimSpace(string(out))
			}
		default:
			m.Baseline = "the same agent"
		}
		if len(o.baselineEnv) > 0 {
			m.Baseline += " with " + strings.Join(o.baselineEnv, ",")
		}
	}
	return m, nil
}

func procStatusFile(path string) map[string]uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	m := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var n uint64
		if _, err := fmt.Sscan(v, &n); err == nil {
			m[k] = n
		}
	}
	return m
}

func httpGet(url string) ([]byte, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// spread is a median and the range around it.
type spread struct{ med, lo, hi float64 }

func summarize(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{med, s[0], s[len(s)-1]}
}

// format prints "median (min–max)" with prec decimals.
func (s spread) format(prec int) string {
	if s.lo == s.hi {
		return fmt.Sprintf("%.*f", prec, s.med)
	}
	return fmt.Sprintf("%.*f (%.*f–%.*f)", prec, s.med, prec, s.lo, prec, s.hi)
}

// signed is format with explicit signs, for differences.
func (s spread) signed(prec int) string {
	if s.lo == s.hi {
		return fmt.Sprintf("%+.*f", prec, s.med)
	}
	return fmt.Sprintf("%+.*f (%+.*f…%+.*f)", prec, s.med, prec, s.lo, prec, s.hi)
}

// table groups results by workload, phase and variant, and pairs each
// result with the bare one of the same round.
type table struct {
	by map[string][]*result
}

func key(w, ph, v string) string { return w + "|" + ph + "|" + v }

func newTable(results []*result) *table {
	t := &table{by: map[string][]*result{}}
	for _, r := range results {
		k := key(r.Workload, r.Phase, r.Variant)
		t.by[k] = append(t.by[k], r)
	}
	return t
}

// values returns f over the results of one cell.
func (t *table) values(w, ph, v string, f func(*result) float64) []float64 {
	var xs []float64
	for _, r := range t.by[key(w, ph, v)] {
		xs = append(xs, f(r))
	}
	return xs
}

// paired returns g(result, bare result of the same round) for one cell.
func (t *table) paired(w, ph, v string, g func(r, bare *result) float64) []float64 {
	return t.pairedWith(w, ph, v, variantBare, g)
}

// pairedWith returns g(result, the other variant's result of the same
// round) for one cell.
func (t *table) pairedWith(w, ph, v, other string, g func(r, o *result) float64) []float64 {
	others := map[int]*result{}
	for _, r := range t.by[key(w, ph, other)] {
		others[r.Round] = r
	}
	var xs []float64
	for _, r := range t.by[key(w, ph, v)] {
		if o := others[r.Round]; o != nil {
			xs = append(xs, g(r, o))
		}
	}
	return xs
}

func (t *table) has(w, ph, v string) bool { return len(t.by[key(w, ph, v)]) > 0 }

func perReq(d time.Duration, r *result) float64 {
	if r.Served == 0 {
		return 0
	}
	return us(d) / float64(r.Served)
}

// report prints the markdown that goes into BENCHMARKS.md.
func report(out io.Writer, m machine, o options, phases []phase, results []*result) {
	t := newTable(results)
	marked := false
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }

	tools := fmt.Sprintf("%s, %s, wrk %s", m.Go, m.Nginx, m.Wrk)
	if m.Redis != "" {
		tools += ", redis " + m.Redis
	}
	if m.Ghz != "" {
		tools += ", ghz " + m.Ghz
	}
	p("Measured %s on %s, %d cores, %s RAM, %s; Linux %s; %s; podtracer %s.\n",
		m.Date, m.CPU, m.Cores, m.Memory, m.Virt, m.Kernel, tools, m.Commit)
	if m.Baseline != "" {
		p("Baseline (A/B): %s.\n", m.Baseline)
	}
	traced := ""
	if o.traceparent {
		traced = "; every HTTP request with a sampled traceparent (-traceparent)"
	}
	p("%d rounds; each phase: %v warm-up, then %v measured; %d keep-alive connections%s; medians, with (min–max) over the rounds.\n\n",
		o.rounds, o.warmup, o.duration, o.conns, traced)

	var saturators, fixed []string
	for _, w := range o.workloads {
		wl := workloadNamed(w)
		if s := fmt.Sprintf(wl.saturator, o.conns); wl.saturator != "" && !slices.Contains(saturators, s) {
			saturators = append(saturators, s)
		}
		if wl.fixed != "" && !slices.Contains(fixed, wl.fixed) {
			fixed = append(fixed, wl.fixed)
		}
	}
	p("### Throughput at saturation (%s)\n\n", strings.Join(saturators, "; "))
	p("| workload | variant | requests/s | ratio to bare |\n|---|---|---|---|\n")
	for _, w := range o.workloads {
		for _, v := range workloadNamed(w).variants {
			if !t.has(w, "saturation", v) {
				continue
			}
			rate := summarize(t.values(w, "saturation", v, func(r *result) float64 { return r.Rate }))
			ratio := "1"
			if v != variantBare {
				ratio = summarize(t.paired(w, "saturation", v, func(r, b *result) float64 { return r.Rate / b.Rate })).format(2)
			}
			p("| %s | %s | %s | %s |\n", w, v, rate.format(0), ratio)
		}
	}

	if len(fixed) == 1 && fixed[0] == "loadgen" {
		p("\n### Latency at a fixed rate (open loop, µs from when each request was due)\n\n")
	} else {
		p("\n### Latency at a fixed rate (%s; open loop, µs from when each request was due)\n\n", strings.Join(fixed, "; "))
	}
	p("| workload | rate | variant | achieved req/s | p50 | p50 added | p99 | p99 added |\n|---|---|---|---|---|---|---|---|\n")
	for _, w := range o.workloads {
		for _, ph := range phases {
			if ph.rate == 0 {
				continue
			}
			for _, v := range workloadNamed(w).variants {
				if !t.has(w, ph.name, v) {
					continue
				}
				p50 := summarize(t.values(w, ph.name, v, func(r *result) float64 { return r.P50 }))
				p99 := summarize(t.values(w, ph.name, v, func(r *result) float64 { return r.P99 }))
				a50, a99 := "", ""
				if v != variantBare {
					a50 = summarize(t.paired(w, ph.name, v, func(r, b *result) float64 { return r.P50 - b.P50 })).signed(0)
					a99 = summarize(t.paired(w, ph.name, v, func(r, b *result) float64 { return r.P99 - b.P99 })).signed(0)
				}
				rate := summarize(t.values(w, ph.name, v, func(r *result) float64 { return r.Rate }))
				p("| %s | %s | %s | %s%s | %s | %s | %s | %s |\n", w, ph.name, v, rate.format(0), held(t, w, ph, v), p50.format(0), a50, p99.format(0), a99)
			}
		}
	}

	for _, w := range o.workloads {
		for _, ph := range phases {
			for _, v := range workloadNamed(w).variants {
				if held(t, w, ph, v) != "" && !marked {
					p("\n† the rate was not held in some rounds (achieved < 97%% of it): the machine was overloaded, and the figures describe overload, not that rate.\n")
					marked = true
				}
			}
		}
	}
	if slices.ContainsFunc(o.workloads, usesGhz) && slices.ContainsFunc(phases, func(ph phase) bool { return ph.rate > 0 }) {
		p("\ngRPC: ghz measures a call from when it starts, not from when it was due: when all its connections are busy, the wait for one is not in its latency (coordinated omission), so a stall of the server shows less than with loadgen.\n")
	}
	p("\n### CPU time per request (µs; server includes the BPF programs that run in its syscalls)\n\n")
	p("| workload | load | variant | server | agent | server + agent | added to bare | OTLP receiver | other load on the machine (cores) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, w := range o.workloads {
		for _, ph := range phases {
			for _, v := range workloadNamed(w).variants {
				if !t.has(w, ph.name, v) {
					continue
				}
				srv := summarize(t.values(w, ph.name, v, func(r *result) float64 { return perReq(r.ServerCPU, r) }))
				total := summarize(t.values(w, ph.name, v, func(r *result) float64 { return perReq(r.ServerCPU+r.AgentCPU, r) }))
				agent, added := "", ""
				if agentVariant(v) {
					agent = summarize(t.values(w, ph.name, v, func(r *result) float64 { return perReq(r.AgentCPU, r) })).format(1)
				}
				if v != variantBare {
					added = summarize(t.paired(w, ph.name, v, func(r, b *result) float64 {
						return perReq(r.ServerCPU+r.AgentCPU, r) - perReq(b.ServerCPU, b)
					})).signed(1)
				}
				receiver := ""
				if v != variantBare {
					receiver = summarize(t.values(w, ph.name, v, func(r *result) float64 { return perReq(r.ReceiverCPU, r) })).format(1)
				}
				noise := summarize(t.values(w, ph.name, v, func(r *result) float64 { return r.Background + r.Steal }))
				p("| %s | %s%s | %s | %s | %s | %s | %s | %s | %s |\n", w, ph.name, held(t, w, ph, v), v, srv.format(1), agent, total.format(1), added, receiver, noise.format(2))
			}
		}
	}

	p("\n### podtracer agent: memory, events, loss\n\n")
	p("| workload | load | variant | RSS at start (MB) | RSS at end (MB) | peak RSS, VmHWM (MB) | BPF maps (MB, kernel) | kernel events / request | agent wake-ups / request | kernel lost | requests dropped | spans dropped | server spans received / requests |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	mb := func(kb uint64) float64 { return float64(kb) / 1024 }
	for _, w := range o.workloads {
		for _, ph := range phases {
			for _, variant := range []string{variantPodtracer, variantBaseline, variantSampled} {
				rs := t.by[key(w, ph.name, variant)]
				if len(rs) == 0 {
					continue
				}
				var lost, reqDropped, spansDropped, received, requests uint64
				for _, r := range rs {
					lost += r.AgentStats["kernel_lost"] + r.AgentStats["calls_untracked"]
					reqDropped += r.AgentStats["requests_dropped"]
					spansDropped += r.AgentStats["spans_dropped"] + r.AgentStats["spans_failed"]
					received += r.Received.ServerSpans
					requests += r.Served + r.Warmup
				}
				v := func(f func(*result) float64) []float64 { return t.values(w, ph.name, variant, f) }
				p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %s |\n", w, ph.name, variant,
					summarize(v(func(r *result) float64 { return mb(r.RSSIdle) })).format(1),
					summarize(v(func(r *result) float64 { return mb(r.RSSEnd) })).format(1),
					summarize(v(func(r *result) float64 { return mb(r.HWM) })).format(1),
					summarize(v(func(r *result) float64 { return float64(r.KernelMemory) / (1 << 20) })).format(1),
					summarize(v(func(r *result) float64 {
						return float64(r.AgentStats["kernel_events"]) / float64(r.Served+r.Warmup)
					})).format(2),
					summarize(v(func(r *result) float64 { return float64(r.AgentCtxSwitches) / float64(r.Served) })).format(2),
					lost, reqDropped, spansDropped, ratio(received, requests))
			}
		}
	}
	p("\nLoss columns are totals over the rounds; kernel lost includes syscalls not followed because the in-flight map was full.\n")
	reportBaseline(p, t, o, phases, m.Baseline)
	reportTargets(p, t, o, phases)

	if slices.ContainsFunc(phases, func(ph phase) bool { return t.has(workloadGo, ph.name, variantOTelHTTP) }) {
		p("\n### otelhttp: spans delivered\n\n| load | server spans received / requests |\n|---|---|\n")
		for _, ph := range phases {
			var received, requests uint64
			for _, r := range t.by[key(workloadGo, ph.name, variantOTelHTTP)] {
				received += r.Received.ServerSpans
				requests += r.Served + r.Warmup
			}
			p("| %s | %s |\n", ph.name, ratio(received, requests))
		}
	}

	// Anything that went wrong on the wire makes every figure suspect.
	var errs []string
	for _, r := range results {
		if r.Errors > 0 {
			errs = append(errs, fmt.Sprintf("round %d %s %s %s: %d", r.Round+1, r.Workload, r.Variant, r.Phase, r.Errors))
		}
	}
	if len(errs) > 0 {
		p("\nRequests that failed or were not answered in time (non-2xx, socket errors, unanswered): %s\n", strings.Join(errs, "; "))
	}
}

// reportBaseline prints podtracer against the baseline, each round's
// pair taken together: a change's effect, with the drift of the machine
// between rounds left out.
func reportBaseline(p func(string, ...any), t *table, o options, phases []phase, baseline string) {
	var rows []string
	for _, w := range o.workloads {
		for _, ph := range phases {
			if !t.has(w, ph.name, variantPodtracer) || !t.has(w, ph.name, variantBaseline) {
				continue
			}
			diff := func(f func(*result) float64) string {
				return summarize(t.pairedWith(w, ph.name, variantPodtracer, variantBaseline, func(r, b *result) float64 { return f(r) - f(b) })).signed(1)
			}
			// Throughput at saturation, latency at a fixed rate.
			rate, p50, p99 := "", "", ""
			if ph.rate == 0 {
				rate = summarize(t.pairedWith(w, ph.name, variantPodtracer, variantBaseline, func(r, b *result) float64 { return r.Rate / b.Rate })).format(2)
			} else {
				p50 = diff(func(r *result) float64 { return r.P50 })
				p99 = diff(func(r *result) float64 { return r.P99 })
			}
			mark := held(t, w, ph, variantPodtracer)
			if mark == "" {
				mark = held(t, w, ph, variantBaseline)
			}
			rows = append(rows, fmt.Sprintf("| %s | %s%s | %s | %s | %s | %s | %s | %s | %s |", w, ph.name, mark, rate, p50, p99,
				diff(func(r *result) float64 { return perReq(r.AgentCPU, r) }),
				diff(func(r *result) float64 { return perReq(r.ServerCPU, r) }),
				diff(func(r *result) float64 { return perReq(r.ReceiverCPU, r) }),
				diff(func(r *result) float64 { return float64(r.HWM) / 1024 })))
		}
	}
	if len(rows) == 0 {
		return
	}
	p("\n### podtracer against the baseline (%s), round by round\n\n", baseline)
	p("Each figure is podtracer's minus the baseline's (throughput: over) in the same round; medians, with (min–max) over the rounds.\n\n")
	p("| workload | load | throughput, ratio | p50 (µs) | p99 (µs) | agent CPU per request (µs) | server CPU per request (µs) | OTLP receiver per request (µs) | peak RSS (MB) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		p("%s\n", r)
	}
}

// held returns a mark when a fixed-rate phase did not get its rate in some
// round.
func held(t *table, w string, ph phase, v string) string {
	if ph.rate == 0 {
		return ""
	}
	for _, r := range t.by[key(w, ph.name, v)] {
		if r.Rate < 0.97*ph.rate {
			return " †"
		}
	}
	return ""
}

// ratio shows a of b, and how many fewer when a is short of b by a
// hundredth or less: there the percentage rounds to 100.00%, and a
// handful of requests lost among 240 000 went unseen that way.
func ratio(a, b uint64) string {
	if b == 0 {
		return "-"
	}
	s := fmt.Sprintf("%d / %d (%.2f%%", a, b, 100*float64(a)/float64(b))
	if a < b && b-a <= b/100 {
		s += fmt.Sprintf(", %d fewer", b-a)
	}
	return s + ")"
}
