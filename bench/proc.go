package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux architecture that matters here).
const clockTick = 10 * time.Millisecond

// pod is a pod as the kernel sees one: a PID namespace with its own /proc,
// held open by a sleeping init. Killing the init kills everything in it;
// --kill-child makes that happen too when the benchmark dies.
type pod struct {
	unshare *exec.Cmd
	init    int    // host PID of the namespace's init
	ns      string // readlink of /proc/<init>/ns/pid
}

func newPod() (*pod, error) {
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sleep", "infinity")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("create pod: %w", err)
	}
	p := &pod{unshare: cmd}
	child, err := waitChild(cmd.Process.Pid, 5*time.Second)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("pod init: %w", err)
	}
	p.init = child
	if p.ns, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", child)); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// command returns a command that runs inside the pod.
func (p *pod) command(name string, args ...string) *exec.Cmd {
	nsargs := append([]string{"--target", strconv.Itoa(p.init), "--pid", "--mount", "--", name}, args...)
	return exec.Command("nsenter", nsargs...)
}

// members returns the host PIDs of the pod's processes but its init.
func (p *pod) members() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == p.init {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil && ns == p.ns {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (p *pod) close() {
	if p.init > 0 {
		syscall.Kill(p.init, syscall.SIGKILL)
	}
	p.unshare.Process.Kill()
	p.unshare.Wait()
}

// waitChild returns the first child of pid.
func waitChild(pid int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			return strconv.Atoi(f[0])
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, fmt.Errorf("process %d started no child within %v", pid, timeout)
}

// process is a background process and its combined output.
type process struct {
	name string
	cmd  *exec.Cmd
	pid  int // the program itself: for a pod command, nsenter's child
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// start runs cmd in the background; inPod says it is a pod command, whose
// program is nsenter's child.
func start(name string, cmd *exec.Cmd, inPod bool) (*process, error) {
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p, p
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	p.pid = cmd.Process.Pid
	if inPod {
		child, err := waitChild(cmd.Process.Pid, 5*time.Second)
		if err != nil {
			p.kill()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		p.pid = child
	}
	return p, nil
}

// waitOutput waits until the output contains s.
func (p *process) waitOutput(s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), s) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before saying %q:\n%s", p.name, s, p.output())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not say %q within %v:\n%s", p.name, s, timeout, p.output())
}

// stop sends SIGTERM to the program and waits for it to exit, then kills
// what is left of its process group.
func (p *process) stop(timeout time.Duration) {
	syscall.Kill(p.pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.kill()
	}
}

func (p *process) kill() {
	syscall.Kill(p.pid, syscall.SIGKILL)
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// cpuTime is the user plus system time pid has used, all its threads, live
// and dead. In-kernel work on its behalf (syscalls, the BPF programs that
// run inside its syscalls, softirqs it happened to run) is in stime.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which may hold spaces: state is
	// field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(utime+stime) * clockTick, nil
}

// cpuTimes sums cpuTime over pids; processes that are gone count nothing.
func cpuTimes(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		if t, err := cpuTime(pid); err == nil {
			total += t
		}
	}
	return total
}

// procStatus returns the numeric fields of /proc/PID/status that matter
// here (VmRSS, VmHWM, RssAnon, voluntary_ctxt_switches, ...), sizes in kB.
func procStatus(pid int) map[string]uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	m := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		if n, err := strconv.ParseUint(f[0], 10, 64); err == nil {
			m[k] = n
		}
	}
	return m
}

// contextSwitches sums voluntary and involuntary context switches over
// every live thread of pid: each voluntary one is the thread going to
// sleep, so it counts wake-ups.
func contextSwitches(pid int) uint64 {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var n uint64
	for _, t := range tasks {
		st := procStatusFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		n += st["voluntary_ctxt_switches"] + st["nonvoluntary_ctxt_switches"]
	}
	return n
}
