// Package cli is what podtracer's two commands, the agent and the
// webhook, share: their logger, made from the environment, their signal
// handling, and the reading of an OTLP endpoint.
package cli

import (
	"context"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"syscall"
)

// Logger writes to stderr at PODTRACER_LOG_LEVEL (debug, info, warn,
// error; default info), as text or, with PODTRACER_LOG_FORMAT=json, JSON.
// A bad value falls back to the default: the agent checks both strictly
// with the rest of its configuration.
func Logger() *slog.Logger {
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

// Context is done at the first SIGTERM or interrupt, which asks for a
// graceful end (the agent's drain and flush, bounded); a second one ends
// the process at once, as if nothing caught it.
func Context() context.Context {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx
}

// PlaintextWithoutPort returns endpoint parsed when it is an http:// URL
// that names no port: gRPC's default port is 443 whatever the scheme,
// right for a vendor's https:// endpoint, surely not for plaintext (a
// collector's OTLP/gRPC port is 4317). Both commands warn of it.
func PlaintextWithoutPort(endpoint string) (*url.URL, bool) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "http" || u.Host == "" || u.Port() != "" {
		return nil, false
	}
	return u, true
}
