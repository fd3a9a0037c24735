// Command kernelcheck checks the kernel capture on the kernel it runs on:
// test/kernels boots it in a virtual machine with another kernel than the
// host's. It loads the capture as the agent does (the hooks the kernel
// has, the fast path and the Redis drop asked for), in a pod as deep in
// nested PID namespaces as asked, and checks that one HTTP exchange
// between two of the pod's processes reaches it whole, from both sides.
//
//	kernelcheck check DEPTH   print "kernelcheck PASS ..." or "kernelcheck FAIL ..."
//
// The other modes are its own children: "pod" (the agent, in the
// innermost namespace), "serve" and "client" (its neighbours).
package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podtracer/podtracer/bpf"
)

const (
	request  = "GET /kernelcheck HTTP/1.1\r\nHost: x\r\n\r\n"
	response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kernelcheck check DEPTH")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "check", "pod":
		depth := 0
		if len(os.Args) > 2 {
			depth, _ = strconv.Atoi(os.Args[2])
		}
		err = check(os.Args[1], depth)
	case "serve":
		err = serve()
	case "client":
		err = client(os.Args[2])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Println("kernelcheck FAIL", err)
		os.Exit(1)
	}
}

// check runs the pod at depth: the agent in a PID namespace nested depth
// deep, itself a new namespace's first process at each level.
func check(mode string, depth int) error {
	if mode == "check" {
		defer fmt.Println("kernelcheck done")
	}
	if depth > 0 {
		cmd := exec.Command("/proc/self/exe", "pod", strconv.Itoa(depth-1))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
		return cmd.Run()
	}
	return agent()
}

// agent loads the capture, runs a server and a client beside itself, and
// checks what the capture saw of them.
func agent() error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	start := time.Now()
	c, err := bpf.Load(bpf.Config{Hooks: bpf.HooksAuto, CaptureBytes: 512,
		Fast: bpf.Fast{HTTP: true, Spans: true, Redis: true, RedisSpans: true, SampleRatio: 0.5, Bounds: []float64{0.005, 0.01, 0.1, 1}}}, logger)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer c.Close()
	loaded := time.Since(start)

	server := exec.Command("/proc/self/exe", "serve")
	out, _ := server.StdoutPipe()
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		return err
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	var port string
	if _, err := fmt.Fscan(bufio.NewReader(out), &port); err != nil {
		return fmt.Errorf("server port: %w", err)
	}
	client := exec.Command("/proc/self/exe", "client", port)
	client.Stdout, client.Stderr = os.Stderr, os.Stderr
	if err := client.Run(); err != nil {
		return fmt.Errorf("client: %w", err)
	}

	// The events of the two neighbours, until both sides of the exchange
	// are in or time is up.
	seen := map[string]bool{}
	want := map[string]string{
		fmt.Sprintf("%d in", server.Process.Pid):  request,
		fmt.Sprintf("%d out", server.Process.Pid): response,
		fmt.Sprintf("%d out", client.Process.Pid): request,
		fmt.Sprintf("%d in", client.Process.Pid):  response,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev bpf.Event
		for c.Read(&ev) == nil {
			if ev.Type != bpf.EventData {
				continue
			}
			dir := "in"
			if ev.Dir == bpf.Egress {
				dir = "out"
			}
			key := fmt.Sprintf("%d %s", ev.PID, dir)
			if w, ok := want[key]; ok && string(ev.Payload) == w {
				seen[key] = true
			}
			if len(seen) == len(want) {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.Stop()
		<-done
	}
	var missing []string
	for k := range want {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("hooks=%s: events not captured: %s (server %d, client %d)", c.Hooks(), strings.Join(missing, ", "),
			server.Process.Pid, client.Process.Pid)
	}
	fmt.Printf("kernelcheck PASS pid=%d hooks=%s fast_http=%v redis_drop=%v kernel_spans=%v http2_frames=%v loaded_in=%s\n", os.Getpid(), c.Hooks(),
		c.FastPath(), c.RedisDrop(), c.KernelSpans(), c.HTTP2Frames(), loaded.Round(time.Millisecond))
	return nil
}

// serve answers one HTTP/1.1 request per connection, printing its port
// first.
func serve() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	for {
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		buf := make([]byte, len(request))
		if _, err := io.ReadFull(conn, buf); err == nil {
			io.WriteString(conn, response)
		}
		conn.Close()
	}
}

// client sends one request to port on the loopback and reads the response.
func client(port string) error {
	conn, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, request); err != nil {
		return err
	}
	buf := make([]byte, len(response))
	_, err = io.ReadFull(conn, buf)
	return err
}
