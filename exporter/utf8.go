package exporter

import (
	"strings"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"

	"github.com/podtracer/podtracer/tracer"
)

// validString returns s with each invalid UTF-8 sequence replaced by
// U+FFFD. Strings from captured bytes or from /proc need not be UTF-8, and
// OTLP's must be: protobuf refuses the whole message for one bad string,
// which would lose the batch of spans around it, or every metric export of
// its process from then on (the series stays).
func validString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// validRequest makes every string of r that came from captured bytes valid
// UTF-8.
func validRequest(r *tracer.Request) {
	for _, s := range [...]*string{
		&r.Method, &r.Path, &r.Query, &r.Route, &r.Host, &r.OriginalHost, &r.ProtocolVersion, &r.UserAgent,
		&r.DBOperation, &r.DBCollection, &r.DBSummary, &r.DBNamespace, &r.DBQuery,
		&r.RPCService, &r.RPCMethod,
		&r.MessagingOperation, &r.MessagingDestination, &r.ClientID,
		&r.ErrorCode, &r.ErrorMessage,
	} {
		if !utf8.ValidString(*s) { // a store only when needed: a write barrier while the GC runs
			*s = strings.ToValidUTF8(*s, "\uFFFD")
		}
	}
}

// validAttrs makes the strings of attrs valid UTF-8, in place. It runs
// once per process, on its resource.
func validAttrs(attrs []attribute.KeyValue) {
	for i, kv := range attrs {
		switch kv.Value.Type() {
		case attribute.STRING:
			attrs[i] = kv.Key.String(validString(kv.Value.AsString()))
		case attribute.STRINGSLICE:
			ss := kv.Value.AsStringSlice() // a copy
			for j := range ss {
				ss[j] = validString(ss[j])
			}
			attrs[i] = kv.Key.StringSlice(ss)
		}
	}
}
