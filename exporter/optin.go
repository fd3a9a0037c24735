package exporter

import (
	"fmt"
	"slices"
	"strings"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// OptIn says which of the attributes that the semantic conventions make
// Opt-In on HTTP spans a span carries. They are left out by default, as
// the conventions ask; each would add a few dozen bytes to every span.
type OptIn struct {
	ClientPort       bool // client.port on server spans
	RequestBodySize  bool // http.request.body.size
	ResponseBodySize bool // http.response.body.size
	// On client spans only: a server span has them by default.
	ClientScheme    bool // url.scheme
	ClientTemplate  bool // url.template (the route; the span's name has it anyway)
	ClientUserAgent bool // user_agent.original
}

// optInNames are the attributes ParseOptIn knows, in the order it lists them.
var optInNames = []string{
	string(semconv.ClientPortKey),
	string(semconv.HTTPRequestBodySizeKey),
	string(semconv.HTTPResponseBodySizeKey),
	string(semconv.URLSchemeKey),
	string(semconv.URLTemplateKey),
	string(semconv.UserAgentOriginalKey),
}

// ParseOptIn reads a comma-separated list of attribute names
// (PODTRACER_OPT_IN_ATTRIBUTES). An unknown name is an error that lists
// the known ones.
func ParseOptIn(list string) (OptIn, error) {
	var o OptIn
	for _, name := range strings.Split(list, ",") {
		switch name = strings.TrimSpace(name); name {
		case "":
		case string(semconv.ClientPortKey):
			o.ClientPort = true
		case string(semconv.HTTPRequestBodySizeKey):
			o.RequestBodySize = true
		case string(semconv.HTTPResponseBodySizeKey):
			o.ResponseBodySize = true
		case string(semconv.URLSchemeKey):
			o.ClientScheme = true
		case string(semconv.URLTemplateKey):
			o.ClientTemplate = true
		case string(semconv.UserAgentOriginalKey):
			o.ClientUserAgent = true
		default:
			return OptIn{}, fmt.Errorf("unknown attribute %q; known: %s", name, strings.Join(optInNames, ", "))
		}
	}
	return o, nil
}

// OptInNames lists the attributes ParseOptIn knows.
func OptInNames() []string { return slices.Clone(optInNames) }
