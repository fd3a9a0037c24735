package tracer

import (
	"go.opentelemetry.io/otel/trace"
)

// parseTraceparent reads a W3C traceparent header
// ("00-<trace-id>-<parent-id>-<flags>"); invalid input gives an invalid
// span context, so the span starts a new trace.
func parseTraceparent(h string) trace.SpanContext {
	if len(h) < 55 || h[2] != '-' || h[35] != '-' || h[52] != '-' {
		return trace.SpanContext{}
	}
	if h[:2] == "ff" || (h[:2] == "00" && len(h) != 55) {
		return trace.SpanContext{}
	}
	tid, err := trace.TraceIDFromHex(h[3:35])
	if err != nil {
		return trace.SpanContext{}
	}
	sid, err := trace.SpanIDFromHex(h[36:52])
	if err != nil {
		return trace.SpanContext{}
	}
	var flags trace.TraceFlags
	switch h[53:55] {
	case "00":
	case "01":
		flags = trace.FlagsSampled
	default:
		f, ok := hexByte(h[53], h[54])
		if !ok {
			return trace.SpanContext{}
		}
		flags = trace.TraceFlags(f) & trace.FlagsSampled
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags, Remote: true})
}

func hexByte(a, b byte) (byte, bool) {
	hi, ok1 := unhex(a)
	lo, ok2 := unhex(b)
	return hi<<4 | lo, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
