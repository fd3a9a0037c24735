package exporter

import (
	"runtime/debug"
	"testing"
)

func TestBuildVersion(t *testing.T) {
	info := func(v string) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) { return &debug.BuildInfo{Main: debug.Module{Version: v}}, true }
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	for _, c := range []struct {
		set  string
		read func() (*debug.BuildInfo, bool)
		want string
	}{
		{"v1.2.0", info("v0.0.0-20261207051714-e3cb5e4a1b2c"), "v1.2.0"}, // the release's, set at link time
		{"", info("v0.0.0-20261207051714-e3cb5e4a1b2c+dirty"), "v0.0.0-20261207051714-e3cb5e4a1b2c+dirty"},
		{"", info("(devel)"), ""}, // built without version control
		{"", none, ""},
	} {
		if got := buildVersion(c.set, c.read); got != c.want {
			t.Errorf("buildVersion(%q) = %q, want %q", c.set, got, c.want)
		}
	}
}

// TestScopeVersion: spans and metric points carry podtracer's version as
// their instrumentation scope's.
func TestScopeVersion(t *testing.T) {
	oldVersion, oldBytes := scopeVersion, scopeBytes
	t.Cleanup(func() { scopeVersion, scopeBytes = oldVersion, oldBytes })
	scopeVersion = "v9.8.7"
	scopeBytes = encodeScope(scopeVersion)

	e, rcv, _ := startOTLP(t, Config{})
	e.Export(serverReq())
	s := rcv.WaitSpans(t, waitFor, spansNamed("GET /users/{id}", 1))[0]
	if s.Scope != scopeName || s.ScopeVersion != "v9.8.7" {
		t.Errorf("span scope %q %q, want %q v9.8.7", s.Scope, s.ScopeVersion, scopeName)
	}
	ps := rcv.WaitMetric(t, waitFor, hasPoint("http.server.request.duration", "/users/{id}", 1))
	if p := lastPoint(ps, "http.server.request.duration", "/users/{id}"); p.Scope != scopeName || p.ScopeVersion != "v9.8.7" {
		t.Errorf("metric scope %q %q, want %q v9.8.7", p.Scope, p.ScopeVersion, scopeName)
	}
}
