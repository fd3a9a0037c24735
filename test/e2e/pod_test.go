package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podtracer/podtracer/internal/testenv"
)

// testPod is a pod as the kernel sees one: a PID namespace (and a mount
// namespace with its own /proc), held open by a sleeping init process.
// Processes join it with nsenter. The network namespace is the host's, so
// the OTLP receiver of the test is reachable on loopback.
type testPod struct {
	init  *exec.Cmd
	pid   int // the init process, in the host's PID namespace
	above int // a process of the namespace the pod's is nested in
}

func newPod(t *testing.T) *testPod {
	t.Helper()
	return newNestedPod(t, 1)
}

// newNestedPod is newPod with its PID namespace depth levels below the
// test's: 1 is a pod on a node, more is a pod in a pod (kind, nested
// containers).
func newNestedPod(t *testing.T, depth int) *testPod {
	t.Helper()
	var args []string
	for range depth {
		args = append(args, "unshare", "--pid", "--fork", "--mount-proc")
	}
	cmd := exec.Command(args[0], append(args[1:], "sleep", "infinity")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	p := &testPod{init: cmd}
	t.Cleanup(func() {
		// Killing the namespace's init kills every process in it.
		if p.pid > 0 {
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	// Each unshare forks the next level's init: follow the chain down.
	deadline := time.Now().Add(5 * time.Second)
	p.pid = cmd.Process.Pid
	for level := 0; level < depth; {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.pid, p.pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			p.above = p.pid
			p.pid, _ = strconv.Atoi(f[0])
			level++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatal("pod init process did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The innermost init must be sleep itself, not an unshare still
	// about to exec: nsenter joins the namespaces of this process.
	for {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid)); strings.HasSuffix(exe, "/sleep") {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatal("pod init process did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// command returns a command that runs inside the pod.
func (p *testPod) command(name string, args ...string) *exec.Cmd {
	nsargs := append([]string{"--target", strconv.Itoa(p.pid), "--pid", "--mount", "--", name}, args...)
	return exec.Command("nsenter", nsargs...)
}

// process is a background process whose output the test can wait on.
type process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   bytes.Buffer
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

// waitOutput waits until the output contains s, n times.
func (p *process) waitOutput(t *testing.T, s string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Count(p.output(), s) >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no %q (x%d) in output within %v:\n%s", p.cmd.Args, s, n, timeout, p.output())
}

// start runs cmd in the background until the test ends.
func start(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd}
	cmd.Stdout, cmd.Stderr = p, p
	// Own process group, so that the stop signal reaches the children of
	// nsenter and sh too; and a bound on waiting for their output.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("output of %v:\n%s", cmd.Args, p.output())
		}
	})
	return p
}

// run runs cmd to completion and returns its output.
func run(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	return string(out)
}

// freePort returns a TCP port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitListening waits until something accepts connections on port.
func waitListening(t *testing.T, port int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on port %d", port)
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the agent and the Go fixture once per test run.
func binaries(t *testing.T) (agent, httpapp string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "podtracer-e2e-")
		if buildErr != nil {
			return
		}
		for pkg, name := range map[string]string{"../..": "podtracer", "../fixtures/httpapp": "httpapp"} {
			// As the image's agent is built (Dockerfile).
			cmd := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", filepath.Join(binDir, name), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			out, err := cmd.CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "podtracer"), filepath.Join(binDir, "httpapp")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func privileged(t *testing.T) {
	t.Helper()
	testenv.Privileged(t)
	testenv.LookPath(t, "unshare")
	testenv.LookPath(t, "nsenter")
}
