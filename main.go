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
	go func() {
		// The first signal asks for a drain and a flush (bounded:
		// PODTRACER_SHUTDOWN_WAIT, then 10 s); a second one
		// ends the process at once, as if nothing caught it.
		<-ctx.Done()
		stop()
	}()
	logger := loggerFromEnv()

	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "webhook":
		err = webhook.Main(ctx, logger, os.Args[2:])
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

// loggerFromEnv honours PODTRACER_LOG_LEVEL and PODTRACER_LOG_FORMAT in
// both modes; the agent checks them strictly with the rest of its
// configuration, here a bad value falls back to the default.
func loggerFromEnv() *slog.Logger {
	var level slog.Level
	if v := os.Getenv("PODTRACER_LOG_LEVEL"); v != "" {
		_ = level.UnmarshalText([]byte(v))
	}
	opts := &slog.HandlerOptions{Level: level}
	if os.Getenv("PODTRACER_LOG_FORMAT") == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
