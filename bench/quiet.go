package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// The machine may be shared (builds and tests of others, a noisy host):
// each phase waits for the machine to be quiet first, and measures what
// else ran meanwhile, so that a noisy figure can be told from a slow one.

// cpuStat is the machine-wide busy and steal time from /proc/stat.
type cpuStat struct{ busy, steal, total time.Duration }

func readCPUStat() cpuStat {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	var v [10]uint64
	for i := 1; i < len(f) && i <= 10; i++ {
		v[i-1], _ = strconv.ParseUint(f[i], 10, 64)
	}
	busy := v[0] + v[1] + v[2] + v[5] + v[6]
	return cpuStat{
		busy:  time.Duration(busy) * clockTick,
		steal: time.Duration(v[7]) * clockTick,
		total: time.Duration(busy+v[3]+v[4]+v[7]) * clockTick,
	}
}

// tracingPrograms counts BPF programs that hook syscalls or kernel
// functions (someone else's tracer would tax the bare server too). It
// returns -1 when bpftool is not there to ask.
func tracingPrograms() int {
	out, err := exec.Command("bpftool", "prog", "show", "-j").Output()
	if err != nil {
		return -1
	}
	var progs []struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(out, &progs) != nil {
		return -1
	}
	n := 0
	for _, p := range progs {
		switch p.Type {
		case "raw_tracepoint", "raw_tracepoint_writable", "tracepoint", "kprobe", "tracing", "perf_event":
			n++
		}
	}
	return n
}

// waitQuiet waits, at most maxWait, until the machine used less than
// h.o.quietCores of CPU over 300 ms and no tracing BPF program is loaded.
// It returns what it saw last: busy cores and tracing programs.
func (h *harness) waitQuiet() (float64, int) {
	deadline := time.Now().Add(h.o.quietWait)
	var busy float64
	var progs int
	for {
		a := readCPUStat()
		time.Sleep(300 * time.Millisecond)
		b := readCPUStat()
		busy = float64(b.busy-a.busy+b.steal-a.steal) / float64(300*time.Millisecond)
		progs = tracingPrograms()
		if (busy < h.o.quietCores && progs <= 0) || time.Now().After(deadline) {
			return busy, progs
		}
	}
}
