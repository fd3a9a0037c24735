package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"
)

// The agent tells `podtracer wait` that it has started, so that a pod can
// start its application only then (the sidecar's postStart hook, which
// the kubelet lets finish before it starts the next container): the
// connections the application makes first (a database pool, a gRPC
// channel) are then followed from their first bytes, their HTTP/2 header
// tables and prepared statements included, rather than joined midway.
//
// The signal is an abstract Unix socket, which needs no writable file
// (the sidecar's root file system is read-only) and belongs to the pod's
// network namespace; its name carries the pod's UID (POD_UID), so that
// the agents of pods on the host's network do not answer for each other.

// startedAddress is the socket the agent of the pod with uid listens on
// once it has started.
func startedAddress(uid string) string {
	return "@podtracer/started/" + uid
}

// announceStarted answers every connection to the started socket with
// how the agent started ("tracing", or "not tracing: what failed"),
// until ctx ends. Without its pod's UID (outside Kubernetes) there is
// nobody to tell, and the agents of one host would share a name. The
// agent goes on without it if the socket cannot be made.
func announceStarted(ctx context.Context, logger *slog.Logger, uid, how string) {
	if uid == "" {
		return
	}
	lis, err := net.Listen("unix", startedAddress(uid))
	if err != nil {
		logger.Warn("podtracer wait will not learn that the agent started", "error", err)
		return
	}
	go func() {
		<-ctx.Done()
		lis.Close()
	}()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.SetWriteDeadline(time.Now().Add(time.Second))
			io.WriteString(c, how+"\n")
			c.Close()
		}
	}()
}

// waitStarted is `podtracer wait`: it returns when the pod's agent has
// answered, when the timeout is over, or at SIGTERM (ctx), and never with
// an error, whatever its arguments: a postStart hook that failed would
// have the kubelet restart the sidecar and hold the application back.
func waitStarted(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("podtracer wait", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	timeout := fs.Duration("timeout", defaultWait, "how long to wait at most")
	if err := fs.Parse(args); err != nil {
		*timeout = defaultWait
		fmt.Fprintf(out, "podtracer wait: %v: waiting %v at most\n", err, defaultWait)
	}
	uid := os.Getenv("POD_UID")
	if uid == "" {
		// The agent announces itself only by its pod's UID: the
		// downward API's metadata.uid, which every shipped manifest sets.
		fmt.Fprintln(out, "podtracer wait: no POD_UID: not waiting")
		return nil
	}
	addr := startedAddress(uid)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	for {
		how, err := askStarted(ctx, addr)
		if err == nil {
			fmt.Fprintln(out, "podtracer wait: the agent answered:", how)
			return nil
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(out, "podtracer wait: no answer from the agent after %v: going on without it\n", *timeout)
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// defaultWait is how long podtracer wait waits at most by default: the
// agent starts in about a second.
const defaultWait = 10 * time.Second

// askStarted reads the started socket's answer, by ctx's deadline.
func askStarted(ctx context.Context, addr string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if deadline, ok := ctx.Deadline(); ok {
		c.SetReadDeadline(deadline)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if line = strings.TrimSpace(line); line == "" {
		// Closed unanswered (the agent stopping), or not the agent's.
		return "", fmt.Errorf("no answer: %v", err)
	}
	return line, nil
}
