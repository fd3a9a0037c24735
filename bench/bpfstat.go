package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// The agent's own final counters come from its log, but its kernel
// counters are read there after the capture is closed, which can race and
// yield zeros; the harness reads them from the kernel itself, through
// bpftool, before it stops the agent. The maps are the ones the agent
// holds open, as its /proc/PID/fdinfo says: another agent on the machine
// (a test elsewhere) has programs of the same names.

type bpfMap struct {
	ID       int    `json:"id"`
	Name     string `json:"name"`
	Memlock  uint64 `json:"bytes_memlock"`
	MaxEntry uint64 `json:"max_entries"`
}

// agentMaps returns the BPF maps process pid holds.
func agentMaps(pid int) ([]bpfMap, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fdinfo", pid))
	if err != nil {
		return nil, err
	}
	ids := map[int]bool{}
	for _, fd := range fds {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "map_id:"); ok {
				if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					ids[id] = true
				}
			}
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("process %d holds no BPF map", pid)
	}
	out, err := exec.Command("bpftool", "map", "show", "-j").Output()
	if err != nil {
		return nil, err
	}
	var all []bpfMap
	if err := json.Unmarshal(out, &all); err != nil {
		return nil, err
	}
	var maps []bpfMap
	for _, m := range all {
		if ids[m.ID] {
			maps = append(maps, m)
		}
	}
	return maps, nil
}

// kernelCounters reads the "stats" map of the agent pid's capture (events,
// lost, calls not followed) and the kernel memory its maps hold, in bytes.
// ok is false when bpftool could not tell.
func kernelCounters(pid int) (events, lost, untracked, memlock uint64, ok bool) {
	maps, err := agentMaps(pid)
	if err != nil {
		return 0, 0, 0, 0, false
	}
	for _, m := range maps {
		memlock += m.Memlock
		if m.Name != "stats" {
			continue
		}
		out, err := exec.Command("bpftool", "map", "dump", "id", strconv.Itoa(m.ID), "-j").Output()
		if err != nil {
			return 0, 0, 0, 0, false
		}
		var entries []struct {
			Formatted struct {
				Key    int `json:"key"`
				Values []struct {
					Value uint64 `json:"value"`
				} `json:"values"`
			} `json:"formatted"`
		}
		if err := json.Unmarshal(out, &entries); err != nil {
			return 0, 0, 0, 0, false
		}
		sum := map[int]uint64{}
		for _, e := range entries {
			for _, v := range e.Formatted.Values {
				sum[e.Formatted.Key] += v.Value
			}
		}
		events, lost, untracked, ok = sum[0], sum[1], sum[2], true
	}
	return events, lost, untracked, memlock, ok
}
