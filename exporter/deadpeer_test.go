package exporter

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/internal/testenv"
)

// TestDeadCollector: a collector that stops answering without a reset
// (its node died; here its link goes down) costs the exports at most
// deadPeer.Timeout before the connection is dropped and made again, not
// TCP's quarter hour of retransmissions: when the collector is reachable
// again, the spans go through a new connection. (On the old one, whose
// retransmissions would resume, the test would see no new connection.)
func TestDeadCollector(t *testing.T) {
	testenv.Privileged(t)
	saved := deadPeer
	deadPeer.Timeout = 2 * time.Second
	t.Cleanup(func() { deadPeer = saved })
	ns, link, addr := linkedNetns(t)
	rcv := otlptest.StartOn(t, listenIn(t, ns, addr+":0"))
	otlpEnv(t, rcv.URL())
	logger, logs := testLogger(t)
	e, err := New(context.Background(), Config{TracesOTLP: true, Printer: "off", Metadata: meta}, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, e) })
	e.Export(serverReq())
	rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) == 1 })
	before := rcv.Peers()

	ip(t, "-n", ns, "link", "set", link, "down")
	for start := time.Now(); time.Since(start) < 3*deadPeer.Timeout; time.Sleep(200 * time.Millisecond) {
		e.Export(serverReq())
	}
	ip(t, "-n", ns, "link", "set", link, "up")
	spans := len(rcv.Spans())
	for back := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		if len(rcv.Spans()) > spans && len(rcv.Peers()) > len(before) {
			break
		}
		if time.Since(back) > 15*time.Second {
			t.Fatalf("no span through a new connection 15 s after the collector's return: peers %v, before %v\n%s", rcv.Peers(), before, logs.String())
		}
		e.Export(serverReq())
	}
	if now := rcv.Peers(); !slices.ContainsFunc(now, func(p netip.AddrPort) bool { return !slices.Contains(before, p) }) {
		t.Errorf("peers %v, before %v: want a new connection", now, before)
	}
}

// linkedNetns makes a network namespace joined to this one by a veth
// pair, and returns its name, its end's name and its address.
func linkedNetns(t *testing.T) (ns, link, addr string) {
	t.Helper()
	testenv.LookPath(t, "ip")
	// What a killed run left (its cleanups never ran) would take the
	// route: it goes first, but not what a run beside it has made. The
	// names carry the pid of the run that made them.
	out, _ := exec.Command("ip", "-o", "link", "show").Output()
	for _, f := range strings.Fields(string(out)) {
		if name, _, _ := strings.Cut(strings.TrimSuffix(f, ":"), "@"); leftover(name, "ptdh") {
			exec.Command("ip", "link", "del", name).Run()
		}
	}
	out, _ = exec.Command("ip", "netns", "list").Output()
	for _, f := range strings.Fields(string(out)) {
		if leftover(f, "ptdead") {
			exec.Command("ip", "netns", "del", f).Run()
		}
	}
	id := os.Getpid()
	ns, host, link := fmt.Sprintf("ptdead%d", id), fmt.Sprintf("ptdh%d", id), fmt.Sprintf("ptdn%d", id)
	// A /30 of 198.18.0.0/15, the range set aside for tests of networks
	// (RFC 2544), by pid.
	base := id % (1 << 15) * 4
	at := func(i int) string { return fmt.Sprintf("198.%d.%d.%d", 18+base>>16, base>>8&255, base&255+i) }
	subnet, hostAddr := at(0)+"/30", at(1)
	addr = at(2)
	ip(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip(t, "link", "add", host, "type", "veth", "peer", "name", link, "netns", ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	ip(t, "addr", "add", hostAddr+"/30", "dev", host)
	ip(t, "link", "set", host, "up")
	ip(t, "-n", ns, "addr", "add", addr+"/30", "dev", link)
	ip(t, "-n", ns, "link", "set", link, "up")
	ip(t, "-n", ns, "link", "set", "lo", "up")
	if route, err := exec.Command("ip", "route", "get", addr).Output(); err != nil || !slices.Contains(strings.Fields(string(route)), host) {
		t.Fatalf("the route to %s (%s) is not through %s: %s %v", addr, subnet, host, route, err)
	}
	return ns, link, addr
}

// leftover tells whether name is one of prefix's, made by a run whose
// process is gone.
func leftover(name, prefix string) bool {
	pid, err := strconv.Atoi(strings.TrimPrefix(name, prefix))
	if !strings.HasPrefix(name, prefix) || err != nil || pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
	}
}

// listenIn listens on addr in network namespace ns: the socket belongs to
// the namespace its thread was in when it was made.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	type result struct {
		lis net.Listener
		err error
	}
	done := make(chan result)
	go func() {
		// The thread goes back to this namespace, or dies with the
		// goroutine (it stays locked).
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: err}
			return
		}
		lis, err := net.Listen("tcp", addr)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{lis, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("listen in %s: %v", ns, r.err)
	}
	return r.lis
}
