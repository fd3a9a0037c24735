// Package kernels boots other kernels than the host's under qemu and runs
// the kernel capture on each (kernelcheck): the agent must work on the
// kernels its users have, not only on the one it was built on.
package kernels

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/internal/testenv"
)

// kernelsDir is where hack/test-kernels.sh leaves the kernel images.
func kernelsDir() string {
	if d := os.Getenv("PODTRACER_TEST_KERNELS"); d != "" {
		return d
	}
	cache := os.Getenv("PODTRACER_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "podtracer")
	}
	return filepath.Join(cache, "kernels")
}

// initScript runs in the virtual machine as its first process: the
// file systems the agent needs, the loopback, then the checks at depth 0
// (the machine's own PID namespace) and 2 (a pod two namespaces down).
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ip link set lo up
echo "kernelcheck kernel $(uname -r)"
/kernelcheck check 0
/kernelcheck check 2
poweroff -f
`

// TestOtherKernels: on each kernel, the capture loads with the hooks
// that kernel has and sees both sides of an HTTP exchange between two
// processes of the pod, at depth 0 and 2.
func TestOtherKernels(t *testing.T) {
	if testing.Short() {
		t.Skip("boots virtual machines")
	}
	qemu := testenv.LookPath(t, "qemu-system-x86_64")
	busybox := testenv.LookPath(t, "busybox")
	testenv.LookPath(t, "cpio")
	images, _ := filepath.Glob(filepath.Join(kernelsDir(), "vmlinuz-*"))
	if len(images) == 0 {
		testenv.Skip(t, "no other kernel in "+kernelsDir()+": hack/test-kernels.sh fetches Debian's 6.1")
	}

	// The initramfs: busybox, the init script and kernelcheck, static.
	root := t.TempDir()
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(root, "kernelcheck"), "./kernelcheck")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kernelcheck: %v\n%s", err, out)
	}
	if out, err := exec.Command("cp", busybox, filepath.Join(root, "bin", "busybox")).CombinedOutput(); err != nil {
		t.Fatalf("copy busybox: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(initScript), 0o755); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	pack := exec.Command("sh", "-c", "find . | cpio -o -H newc > "+initrd)
	pack.Dir = root
	if out, err := pack.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}

	for _, image := range images {
		t.Run(strings.TrimPrefix(filepath.Base(image), "vmlinuz-"), func(t *testing.T) {
			// TCG: no KVM here. A boot and both checks take about 6 s.
			cmd := exec.Command(qemu, "-accel", "tcg", "-cpu", "max", "-m", "1024", "-nographic", "-no-reboot",
				"-kernel", image, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet")
			done := make(chan struct{})
			timer := time.AfterFunc(5*time.Minute, func() {
				cmd.Process.Kill()
				close(done)
			})
			out, err := cmd.CombinedOutput()
			if !timer.Stop() {
				<-done
				t.Fatalf("the virtual machine did not finish in 5 minutes:\n%s", out)
			}
			if err != nil {
				t.Fatalf("qemu: %v\n%s", err, out)
			}
			text := string(out)
			passes := regexp.MustCompile(`kernelcheck PASS .*`).FindAllString(text, -1)
			if len(passes) != 2 || strings.Contains(text, "kernelcheck FAIL") {
				t.Fatalf("want two passes (depth 0 and 2), got:\n%s", text)
			}
			// The hooks the kernel has: the socket tracepoints from 6.3 on,
			// with the fast path, the Redis drop, the kernel's spans and the
			// HTTP/2 frame walk (its verifier takes every program); the
			// syscall ones before.
			m := regexp.MustCompile(`kernelcheck kernel (\d+)\.(\d+)`).FindStringSubmatch(text)
			if m == nil {
				t.Fatalf("no kernel version in:\n%s", text)
			}
			major, _ := strconv.Atoi(m[1])
			minor, _ := strconv.Atoi(m[2])
			want := "hooks=syscall fast_http=false redis_drop=false kernel_spans=false http2_frames=false"
			if major > 6 || major == 6 && minor >= 3 {
				want = "hooks=socket fast_http=true redis_drop=true kernel_spans=true http2_frames=true"
			}
			for _, p := range passes {
				t.Log(strings.TrimSpace(p))
				if !strings.Contains(p, want) {
					t.Errorf("kernel %s.%s: want %s", m[1], m[2], want)
				}
			}
		})
	}
}
