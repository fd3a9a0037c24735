package main

import (
	"encoding/json"
	"os/exec"
	"strconv"
)

// The agent's own final counters come from its log, but its kernel
// counters are read there after the capture is closed, which can race and
// yield zeros; the harness reads them from the kernel itself, through
// bpftool, before it stops the agent. The agent is the only one with
// programs named sys_enter and sys_exit while a phase runs.

type bpfMap struct {
	ID       int    `json:"id"`
	Name     string `json:"name"`
	Memlock  uint64 `json:"bytes_memlock"`
	MaxEntry uint64 `json:"max_entries"`
}

// agentMaps returns the maps the capture programs use.
func agentMaps() ([]bpfMap, error) {
	out, err := exec.Command("bpftool", "prog", "show", "-j").Output()
	if err != nil {
		return nil, err
	}
	var progs []struct {
		ID     int    `json:"id"`
		Name   string `json:"name"`
		MapIDs []int  `json:"map_ids"`
	}
	if err := json.Unmarshal(out, &progs); err != nil {
		return nil, err
	}
	// The newest pair: a previous agent's programs may linger a moment
	// after it exited.
	newest := map[string]int{}
	for i, p := range progs {
		if (p.Name == "sys_enter" || p.Name == "sys_exit") && (newest[p.Name] == 0 || p.ID > progs[newest[p.Name]-1].ID) {
			newest[p.Name] = i + 1
		}
	}
	ids := map[int]bool{}
	for _, i := range newest {
		for _, id := range progs[i-1].MapIDs {
			ids[id] = true
		}
	}
	if out, err = exec.Command("bpftool", "map", "show", "-j").Output(); err != nil {
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

// kernelCounters reads the capture's "stats" map (events, lost, calls not
// followed) and the kernel memory its maps hold, in bytes. ok is false when
// bpftool could not tell.
func kernelCounters() (events, lost, untracked, memlock uint64, ok bool) {
	maps, err := agentMaps()
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
