package exporter

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An export's error comes with what it usually means: a status, or the
// metric exporter's bare deadline.
func TestExportHint(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.Unauthenticated, "no"), "OTEL_EXPORTER_OTLP_HEADERS"},
		{status.Error(codes.Unavailable, "connection refused"), "cannot be reached"},
		{status.Error(codes.DeadlineExceeded, "late"), "does not speak OTLP/gRPC as configured"},
		{fmt.Errorf("failed to upload metrics: %w", context.DeadlineExceeded), "no answer within OTEL_EXPORTER_OTLP_TIMEOUT"},
		{status.Error(codes.Internal, "unexpected HTTP status code received from server: 404"), "not an OTLP/gRPC server"},
		{fmt.Errorf("something else"), ""},
		{nil, ""},
	} {
		got := exportHint(c.err)
		if c.want == "" && got != "" || !strings.Contains(got, c.want) {
			t.Errorf("%v: hint %q, want one with %q", c.err, got, c.want)
		}
	}
}
