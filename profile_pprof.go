//go:build pprof

package main

// Built with -tags pprof, the agent writes a Go CPU profile of its whole
// life to $PODTRACER_DEV_CPUPROFILE (a developer's tool: perf on virtual
// machines attributes most samples to the kernel's interrupt exits).

import (
	"os"
	"runtime/pprof"
)

func init() {
	path := os.Getenv("PODTRACER_DEV_CPUPROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		panic(err)
	}
	stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
}
