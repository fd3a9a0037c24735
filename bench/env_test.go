package main

import (
	"slices"
	"testing"
)

// TestSplitEnv: -agent-env and -baseline-env keep a value's commas.
func TestSplitEnv(t *testing.T) {
	for _, c := range []struct {
		list string
		want []string
	}{
		{"", nil},
		{"GOGC=100", []string{"GOGC=100"}},
		{"GOGC=100,PODTRACER_CAPTURE_BYTES=256", []string{"GOGC=100", "PODTRACER_CAPTURE_BYTES=256"}},
		{"PODTRACER_OPT_IN_ATTRIBUTES=url.scheme,url.template,GOGC=50",
			[]string{"PODTRACER_OPT_IN_ATTRIBUTES=url.scheme,url.template", "GOGC=50"}},
		{"OTEL_RESOURCE_ATTRIBUTES=a=1,b=2", []string{"OTEL_RESOURCE_ATTRIBUTES=a=1,b=2"}},
	} {
		got, err := splitEnv(c.list)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("splitEnv(%q) = %q, %v; want %q", c.list, got, err, c.want)
		}
	}
	for _, bad := range []string{"url.scheme", "=1", "lower=1"} {
		if env, err := splitEnv(bad); err == nil {
			t.Errorf("splitEnv(%q) = %q, want an error", bad, env)
		}
	}
}
