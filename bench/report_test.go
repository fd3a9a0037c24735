package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestReportBaseline: the A/B table pairs podtracer with the baseline of
// the same round: the throughput ratio and the differences per request
// are taken round by round, then their median and range.
func TestReportBaseline(t *testing.T) {
	o := options{rounds: 2, duration: 3 * time.Second, warmup: time.Second, conns: 32,
		workloads: []string{workloadGo}, saturate: true, variants: []string{variantBare, variantPodtracer, variantBaseline}}
	res := func(round int, variant string, rate float64, agentUS float64) *result {
		served := uint64(rate * 3)
		return &result{Workload: workloadGo, Variant: variant, Phase: "saturation", Round: round, Rate: rate, Served: served,
			ServerCPU: time.Duration(10 * float64(served) * float64(time.Microsecond)),
			AgentCPU:  time.Duration(agentUS * float64(served) * float64(time.Microsecond)),
			HWM:       30 << 10}
	}
	results := []*result{
		res(0, variantBare, 1000, 0), res(0, variantPodtracer, 900, 2), res(0, variantBaseline, 800, 3),
		// Round 2 runs faster for all three: pairing by round cancels it.
		res(1, variantBare, 2000, 0), res(1, variantPodtracer, 1800, 2), res(1, variantBaseline, 2000, 2.5),
	}
	var out bytes.Buffer
	report(&out, machine{Baseline: "abc1234"}, o, o.phases(), results)
	var row string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "| go net/http | saturation | ") && strings.Count(l, "|") == 10 {
			row = l
		}
	}
	// Ratios 900/800 and 1800/2000: median 1.01 (0.90-1.13); agent CPU
	// per request -1.0 and -0.5: median -0.8 (-1.0…-0.5).
	want := "| go net/http | saturation | 1.01 (0.90–1.12) |  |  | -0.8 (-1.0…-0.5) | +0.0 | +0.0 | +0.0 |"
	if row != want {
		t.Errorf("A/B row:\n got %s\nwant %s\n%s", row, want, out.String())
	}
	if !strings.Contains(out.String(), "podtracer against the baseline (abc1234)") {
		t.Errorf("no A/B table titled with the baseline:\n%s", out.String())
	}
}

// TestRatio: a shortfall the percentage rounds away is shown as a count.
func TestRatio(t *testing.T) {
	for _, tc := range []struct {
		a, b uint64
		want string
	}{
		{240000, 240000, "240000 / 240000 (100.00%)"},
		{239999, 240000, "239999 / 240000 (100.00%, 1 fewer)"},
		{23864, 240000, "23864 / 240000 (9.94%)"},     // sampled: a tenth is the point
		{240004, 240000, "240004 / 240000 (100.00%)"}, // wrk's requests in flight at its end
		{0, 0, "-"},
	} {
		if got := ratio(tc.a, tc.b); got != tc.want {
			t.Errorf("ratio(%d, %d) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestReportTargets: the run against issue 5's targets, each from the
// medians of the same figures as the tables, and whether they meet them.
func TestReportTargets(t *testing.T) {
	o := options{rounds: 1, duration: 3 * time.Second, warmup: time.Second, conns: 32, rates: []float64{20000},
		workloads: []string{workloadGo}, saturate: true, variants: []string{variantBare, variantPodtracer, variantOTelHTTP}}
	res := func(variant, phase string, rate, serverUS, agentUS float64, hwmMB uint64, spans uint64) *result {
		served := uint64(rate * 3)
		return &result{Workload: workloadGo, Variant: variant, Phase: phase, Rate: rate, Served: served, Warmup: 0,
			ServerCPU: time.Duration(serverUS * float64(served) * float64(time.Microsecond)),
			AgentCPU:  time.Duration(agentUS * float64(served) * float64(time.Microsecond)),
			HWM:       hwmMB << 10, Received: receiverCounts{ServerSpans: spans}, AgentStats: map[string]uint64{}}
	}
	results := []*result{
		res(variantBare, "saturation", 1000, 10, 0, 0, 0),
		res(variantPodtracer, "saturation", 960, 11, 1, 41, 2880),
		res(variantOTelHTTP, "saturation", 400, 30, 0, 0, 1200),
		res(variantBare, "20000/s", 20000, 30, 0, 0, 0),
		res(variantPodtracer, "20000/s", 20000, 31, 1.5, 30, 59999), // one span short
	}
	var out bytes.Buffer
	report(&out, machine{}, o, o.phases(), results)
	for _, want := range []string{
		"| throughput at saturation ≥ 0.95 of bare | go net/http | podtracer | 0.96 | yes |",
		"| added CPU at 20000/s ≤ 3 µs | go net/http | podtracer | +2.5 | yes |",
		"| peak memory ≤ 40 MB | go net/http | podtracer | 41.0 MB | no |",
		"| zero loss at 20000/s | go net/http | podtracer | 0 lost, spans 59999 / 60000 (100.00%, 1 fewer) | no |",
		"| better than otelhttp (ratio, added CPU at saturation) | go net/http | podtracer | 0.96 against 0.40; +2.0 against +20.0 µs | yes |",
	} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("no row %q in:\n%s", want, out.String())
		}
	}
}
