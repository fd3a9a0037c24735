package tracer

import (
	"go.opentelemetry.io/otel/trace"
)

// parseTraceparent reads a W3C traceparent header
// ("00-<trace-id>-<parent-id>-<flags>"); invalid input gives an invalid
// span context, so the span starts a new trace. It reads the header where
// it lies (the captured bytes, or an HPACK string) without copying it.
func parseTraceparent[T string | []byte](h T) trace.SpanContext {
	if len(h) < 55 || h[2] != '-' || h[35] != '-' || h[52] != '-' {
		return trace.SpanContext{}
	}
	version, ok := hexByte(h[0], h[1])
	if !ok || version == 0xff || (version == 0 && len(h) != 55) || (len(h) > 55 && h[55] != '-') {
		// A later version may add fields, after a '-'.
		return trace.SpanContext{}
	}
	var tid trace.TraceID
	var sid trace.SpanID
	if !unhexInto(tid[:], h[3:35]) || !unhexInto(sid[:], h[36:52]) || !tid.IsValid() || !sid.IsValid() {
		return trace.SpanContext{}
	}
	f, ok := hexByte(h[53], h[54])
	if !ok {
		return trace.SpanContext{}
	}
	flags := trace.TraceFlags(f) & trace.FlagsSampled
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags, Remote: true})
}

// unhexInto decodes lower-case hex (as W3C Trace Context requires) into dst.
func unhexInto[T string | []byte](dst []byte, h T) bool {
	for i := range dst {
		b, ok := hexByte(h[2*i], h[2*i+1])
		if !ok {
			return false
		}
		dst[i] = b
	}
	return true
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
