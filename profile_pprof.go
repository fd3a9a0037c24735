//go:build pprof

package main

// Built with -tags pprof, the agent writes a Go CPU profile of its whole
// life to $PODTRACER_DEV_CPUPROFILE (a developer's tool: perf on virtual
// machines attributes most samples to the kernel's interrupt exits), and
// to $PODTRACER_DEV_HEAPPROFILE a heap profile taken when its heap in use
// was the largest it had been (looked at twice a second, stopping the
// world each time: not for benchmark figures; the profile's figures are
// as of the last collection).

import (
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

func init() {
	if path := os.Getenv("PODTRACER_DEV_HEAPPROFILE"); path != "" {
		go heapPeaks(path)
	}
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

// heapPeaks writes a heap profile to path each time the heap in use is
// larger than it has been.
func heapPeaks(path string) {
	var most uint64
	var m runtime.MemStats
	for range time.Tick(500 * time.Millisecond) {
		runtime.ReadMemStats(&m)
		if m.HeapInuse <= most {
			continue
		}
		most = m.HeapInuse
		if f, err := os.Create(path + ".part"); err == nil {
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
			os.Rename(path+".part", path)
		}
	}
}
