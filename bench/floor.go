package main

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// floorSource is the floor variant's kernel program (bpf/floor.c).
//
//go:embed bpf/floor.c
var floorSource []byte

// buildFloor compiles floor.c with the agent's BPF headers into dir.
func buildFloor(repo, dir string) (string, error) {
	src := filepath.Join(dir, "floor.c")
	if err := os.WriteFile(src, floorSource, 0o644); err != nil {
		return "", err
	}
	obj := filepath.Join(dir, "floor.o")
	cmd := exec.Command("clang", "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror",
		"-I", filepath.Join(repo, "bpf", "headers"), "-c", src, "-o", obj)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the floor program: %v\n%s", err, out)
	}
	return obj, nil
}

// floorMain is `bench floor OBJECT`, the floor variant's stand-in for the
// agent, run in the pod: it attaches floor.c's programs for its own PID
// namespace and holds them until it is stopped. It prints the two lines
// the harness waits for from an agent, the second with the count of calls
// the programs followed (floor_calls), which the harness checks.
func floorMain(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: bench floor OBJECT")
	}
	spec, err := ebpf.LoadCollectionSpec(args[0])
	if err != nil {
		return err
	}
	var ns syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &ns); err != nil {
		return err
	}
	v := spec.Variables["pidns_ino"]
	if v == nil {
		return fmt.Errorf("%s: no variable pidns_ino", args[0])
	}
	if err := v.Set(uint32(ns.Ino)); err != nil {
		return fmt.Errorf("set pidns_ino: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return err
	}
	defer coll.Close()
	for name, prog := range coll.Programs {
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			return fmt.Errorf("attach %s: %w", name, err)
		}
		defer l.Close()
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	fmt.Println(`msg="podtracer agent running" (the floor program)`)
	<-stop
	var perCPU []uint64
	if err := coll.Maps["calls"].Lookup(uint32(0), &perCPU); err != nil {
		return fmt.Errorf("read the count of calls: %w", err)
	}
	var calls uint64
	for _, n := range perCPU {
		calls += n
	}
	fmt.Printf("msg=\"final stats\" kernel_events=0 kernel_lost=0 calls_untracked=0 floor_calls=%d\n", calls)
	return nil
}
