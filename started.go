package main

import (
	"bufio"
	"context"
	"errors"
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
// how the agent started ("tracing", or "not tracing: why"), until ctx
// ends. The agent goes on without it if the socket cannot be made.
func announceStarted(ctx context.Context, logger *slog.Logger, uid, how string) {
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
// started, or when the timeout is over, and always without an error, so
// that a hook that runs it never holds the application back longer, nor
// fails its container.
func waitStarted(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("podtracer wait", flag.ContinueOnError)
	fs.SetOutput(out)
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait at most")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr := startedAddress(os.Getenv("POD_UID"))
	deadline := time.Now().Add(*timeout)
	for {
		how, err := askStarted(addr)
		if err == nil {
			fmt.Fprintln(out, "podtracer: the agent has started:", how)
			return nil
		}
		if !time.Now().Before(deadline) {
			fmt.Fprintf(out, "podtracer: the agent has not started after %v: going on without it\n", *timeout)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// askStarted reads the started socket's answer.
func askStarted(addr string) (string, error) {
	c, err := net.DialTimeout("unix", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimSpace(line), nil
}
