package pod

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"
)

// Neighbours lists the processes of the agent's PID namespace other than
// the agent itself.
func Neighbours(procRoot string) ([]int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Alone tells whether no neighbour is left that could still talk: none
// but the PID namespace's init (a pod's pause process, which serves
// nothing) and zombies (an init that is not pause may not reap them). A
// process gone between the listing and its stat is gone; a /proc that
// cannot be read is not alone.
func Alone(procRoot string) bool {
	pids, err := Neighbours(procRoot)
	if err != nil {
		return false
	}
	for _, pid := range pids {
		if pid == 1 {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", procRoot, pid))
		if _, f, ok := statFields(b); err == nil && ok && len(f) > 0 && string(f[0]) != "Z" {
			return false
		}
	}
	return true
}

// initPIDNamespace is the inode of the kernel's first PID namespace, the
// node's (PROC_PID_INIT_INO in the kernel's include/linux/proc_ns.h).
const initPIDNamespace = "pid:[4026531836]"

// NodePIDNamespace tells whether the processes under procRoot are in the
// node's own PID namespace: a pod with hostPID: true, where the agent
// would trace every process of the node.
func NodePIDNamespace(procRoot string) bool {
	link, err := os.Readlink(procRoot + "/self/ns/pid")
	return err == nil && link == initPIDNamespace
}

// Watch logs the neighbours as they come and go, every interval, until ctx
// ends. When the agent sees none (the pod lacks shareProcessNamespace, or
// the other containers have not started yet), it says so and keeps
// waiting: the kernel filter covers them from their first syscall anyway.
func Watch(ctx context.Context, procRoot string, interval time.Duration, logger *slog.Logger) {
	known := map[int]bool{}
	warned := false
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		pids, err := Neighbours(procRoot)
		if err != nil {
			logger.Warn("list neighbour processes", "error", err)
		}
		seen := map[int]bool{}
		for _, pid := range pids {
			seen[pid] = true
			if !known[pid] {
				p := ReadProcess(procRoot, pid, "")
				logger.Info("neighbour found", "pid", pid, "executable", p.Exe, "name", p.Name, "container", shortID(p.ContainerID))
			}
		}
		for pid := range known {
			if !seen[pid] {
				logger.Debug("neighbour exited", "pid", pid)
			}
		}
		known = seen
		switch {
		case len(pids) == 0 && !warned:
			logger.Warn("no neighbour processes visible: the agent sees only itself in its PID namespace; " +
				"set shareProcessNamespace: true on the pod (waiting for neighbours)")
			warned = true
		case len(pids) > 0 && warned:
			logger.Info("neighbours visible now", "count", len(pids))
			warned = false
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
