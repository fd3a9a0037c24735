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
