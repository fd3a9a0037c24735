package exporter

import "runtime/debug"

// version is podtracer's version, which every span and metric point
// carries as its instrumentation scope's. A release build sets it:
// -ldflags "-X github.com/podtracer/podtracer/exporter.version=v1.2.0"
// (the Dockerfile's VERSION argument). Otherwise it is the version Go
// stamps into the binary: the module's tag, or a pseudo-version naming
// the commit (+dirty with local changes); none without version control.
var version string

// scopeVersion is the instrumentation scope's version; "" leaves it out.
var scopeVersion = buildVersion(version, debug.ReadBuildInfo)

func buildVersion(set string, read func() (*debug.BuildInfo, bool)) string {
	if set != "" {
		return set
	}
	if bi, ok := read(); ok && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return ""
}
