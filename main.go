// Command podtracer is a sidecar that turns what its pod's neighbour
// processes say on the wire into OpenTelemetry spans and metrics. Run with
// the argument "webhook" it is instead the mutating admission webhook that
// injects the sidecar.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/podtracer/podtracer/webhook"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "webhook":
		err = webhook.Main(ctx, logger, os.Args[2:])
	default:
		err = runAgent(ctx, logger, os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podtracer:", err)
		os.Exit(1)
	}
}
