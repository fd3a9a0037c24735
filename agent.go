package main

import (
	"context"
	"errors"
	"log/slog"
)

func runAgent(ctx context.Context, logger *slog.Logger, args []string) error {
	return errors.New("agent: not implemented yet")
}
