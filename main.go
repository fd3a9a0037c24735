// Command podtracer is a sidecar that turns what its pod's neighbour
// processes say on the wire into OpenTelemetry spans and metrics. `podtracer
// wait` is its postStart hook; `podtracer webhook` runs the mutating
// admission webhook, the podtracer-webhook binary beside it.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/podtracer/podtracer/internal/cli"
)

func main() {
	// The first signal asks for a drain and a flush (bounded:
	// PODTRACER_SHUTDOWN_WAIT, then 10 s); a second one ends the process.
	ctx := cli.Context()
	logger := cli.Logger()

	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "webhook":
		err = execWebhook(os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "wait":
		err = waitStarted(ctx, os.Args[2:], os.Stdout)
	default:
		err = runAgent(ctx, logger, os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podtracer:", err)
		os.Exit(1)
	}
}

// execWebhook runs the webhook binary that sits beside this one in the
// image, for manifests written when the webhook was `podtracer webhook`.
// The agent does not link the webhook: its Kubernetes API packages would
// be in every traced pod's memory.
func execWebhook(args []string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	bin := filepath.Join(filepath.Dir(self), "podtracer-webhook")
	if err := syscall.Exec(bin, append([]string{bin}, args...), os.Environ()); err != nil {
		return fmt.Errorf("webhook: run %s: %w (the webhook is the podtracer-webhook binary, beside podtracer in the image)", bin, err)
	}
	return nil // not reached: Exec returns only on failure
}
