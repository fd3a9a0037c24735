// Package webhook is the mutating admission webhook that injects the
// podtracer sidecar into annotated Deployments.
package webhook

import (
	"context"
	"errors"
	"log/slog"
)

// Main runs the webhook server until ctx is done.
func Main(ctx context.Context, logger *slog.Logger, args []string) error {
	return errors.New("webhook: not implemented yet")
}
