// Package webhook is the mutating admission webhook that injects the
// podtracer sidecar into annotated Deployments: a pure mutation function
// over a Deployment (Mutate), a thin HTTPS server around it (Server), and
// serving certificates that are reloaded when their files change.
package webhook

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/podtracer/podtracer/internal/cli"
)

// Main runs the webhook server until ctx is done. Its configuration comes
// from PODTRACER_WEBHOOK_* environment variables (see PrintUsage); args
// only take -h.
func Main(ctx context.Context, logger *slog.Logger, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			return PrintUsage(os.Stdout)
		}
		return fmt.Errorf("webhook: unexpected argument %q: configure it with PODTRACER_WEBHOOK_* environment variables (podtracer-webhook -h)", args[0])
	}
	// First: a misspelt variable may be why the configuration is refused.
	for _, w := range UnknownVariables(os.Environ()) {
		logger.Warn(w)
	}
	c, err := LoadConfig(os.Environ())
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	if u, ok := cli.PlaintextWithoutPort(c.OTLPEndpoint); ok {
		logger.Warn("PODTRACER_WEBHOOK_OTLP_ENDPOINT names no port, so every sidecar's gRPC dials port 443 in plaintext; an OpenTelemetry Collector's OTLP/gRPC port is 4317",
			"endpoint", u.Redacted())
	}
	s, err := NewServer(c, logger)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	if err := s.Serve(ctx, ln); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	return nil
}
