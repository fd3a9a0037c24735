package exporter

import (
	"fmt"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// OptIn says which of the attributes that the semantic conventions make
// Opt-In on HTTP spans and metrics they carry. They are left out by
// default, as the conventions ask; each would add a few dozen bytes to
// every span (and the route, series to a client's metric).
type OptIn struct {
	ClientPort       bool // client.port on server spans
	RequestBodySize  bool // http.request.body.size
	ResponseBodySize bool // http.response.body.size
	// On clients only (spans and http.client.request.duration): a server
	// has them by default.
	ClientScheme    bool // url.scheme
	ClientTemplate  bool // url.template (the route; the span's name has it anyway)
	ClientUserAgent bool // user_agent.original
}

// optInAttr is an attribute ParseOptIn knows, with the field it sets.
type optInAttr struct {
	key   attribute.Key
	field func(*OptIn) *bool
}

// optIns are the attributes ParseOptIn knows, in the order it lists
// them.
var optIns = []optInAttr{
	{semconv.ClientPortKey, func(o *OptIn) *bool { return &o.ClientPort }},
	{semconv.HTTPRequestBodySizeKey, func(o *OptIn) *bool { return &o.RequestBodySize }},
	{semconv.HTTPResponseBodySizeKey, func(o *OptIn) *bool { return &o.ResponseBodySize }},
	{semconv.URLSchemeKey, func(o *OptIn) *bool { return &o.ClientScheme }},
	{semconv.URLTemplateKey, func(o *OptIn) *bool { return &o.ClientTemplate }},
	{semconv.UserAgentOriginalKey, func(o *OptIn) *bool { return &o.ClientUserAgent }},
}

// ParseOptIn reads a comma-separated list of attribute names
// (PODTRACER_OPT_IN_ATTRIBUTES). An unknown name is an error that lists
// the known ones.
func ParseOptIn(list string) (OptIn, error) {
	var o OptIn
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.IndexFunc(optIns, func(a optInAttr) bool { return string(a.key) == name })
		if i < 0 {
			return OptIn{}, fmt.Errorf("unknown attribute %q; known: %s", name, strings.Join(OptInNames(), ", "))
		}
		*optIns[i].field(&o) = true
	}
	return o, nil
}

// OptInNames lists the attributes ParseOptIn knows.
func OptInNames() []string {
	names := make([]string, len(optIns))
	for i, a := range optIns {
		names[i] = string(a.key)
	}
	return names
}
