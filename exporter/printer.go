package exporter

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// printer is a span destination that writes each span as one line, text or
// JSON. Being a destination puts it behind the same sampler, batching and
// drop accounting as OTLP, so what it prints is what would be sent, and
// a blocked stdout cannot stall the worker either.
type printer struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
	buf  bytes.Buffer
}

func newPrinter(w io.Writer, asJSON bool) *printer {
	return &printer{w: w, json: asJSON}
}

// printed is what a line shows, gathered from a span and its process.
type printed struct {
	Time     string         `json:"time"`
	Kind     string         `json:"kind"`
	Service  string         `json:"service"`
	Process  string         `json:"process"`
	PID      int64          `json:"pid"`
	Name     string         `json:"name"`
	Method   string         `json:"method,omitempty"`
	Target   string         `json:"target"`
	Status   int64          `json:"status,omitempty"`
	Code     string         `json:"code,omitempty"` // rpc or database status
	Duration float64        `json:"duration_ms"`
	Error    bool           `json:"error,omitempty"`
	TraceID  string         `json:"trace_id"`
	SpanID   string         `json:"span_id"`
	ParentID string         `json:"parent_span_id,omitempty"`
	Client   string         `json:"client,omitempty"`
	Peer     string         `json:"peer,omitempty"`
	Attrs    map[string]any `json:"attributes,omitempty"`
}

// timeFormat is RFC 3339 with milliseconds, always in UTC: lines from
// several pods sort and compare as text.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

func (p *printer) exportSpans(_ context.Context, spans []*spanRecord) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf.Reset()
	enc := json.NewEncoder(&p.buf)
	enc.SetEscapeHTML(false)
	for _, s := range spans {
		l := describe(s, p.json)
		if p.json {
			if err := enc.Encode(l); err != nil {
				return err
			}
		} else {
			p.buf.Write(l.text())
		}
	}
	// One write per batch: fewer syscalls, and lines are never interleaved
	// with another writer's partial line.
	_, err := p.w.Write(p.buf.Bytes())
	return err
}

// shutdown does nothing: the printer does not own its writer (stdout).
func (p *printer) shutdown(context.Context) error { return nil }

func describe(s *spanRecord, withAttrs bool) printed {
	l := printed{
		Time:     s.start.UTC().Format(timeFormat),
		Kind:     kindName(s.kind),
		Service:  s.res.service,
		Process:  s.res.exe,
		PID:      s.res.pid,
		Name:     s.name,
		Duration: float64(s.end.Sub(s.start)) / float64(time.Millisecond),
		TraceID:  s.traceID.String(),
		SpanID:   s.spanID.String(),
		Error:    s.status == codes.Error,
	}
	if s.parentID.IsValid() {
		l.ParentID = s.parentID.String()
	}
	var path, route, full, original, rpcOriginal, clientAddr, peerAddr string
	var clientPort, peerPort int64
	if withAttrs {
		l.Attrs = make(map[string]any, len(s.attrs))
	}
	for _, kv := range s.attrs {
		if withAttrs {
			l.Attrs[string(kv.Key)] = kv.Value.AsInterface()
		}
		switch kv.Key {
		case semconv.HTTPRequestMethodKey:
			l.Method = kv.Value.AsString()
		case semconv.HTTPRequestMethodOriginalKey:
			original = kv.Value.AsString()
		case semconv.RPCMethodOriginalKey:
			rpcOriginal = kv.Value.AsString()
		case semconv.HTTPResponseStatusCodeKey:
			l.Status = kv.Value.AsInt64()
		case semconv.URLPathKey:
			path = kv.Value.AsString()
		case semconv.HTTPRouteKey, semconv.URLTemplateKey:
			route = kv.Value.AsString()
		case semconv.URLFullKey:
			full = kv.Value.AsString()
		case semconv.ClientAddressKey:
			clientAddr = kv.Value.AsString()
		case semconv.ClientPortKey:
			clientPort = kv.Value.AsInt64()
		case semconv.NetworkPeerAddressKey:
			peerAddr = kv.Value.AsString()
		case semconv.NetworkPeerPortKey:
			peerPort = kv.Value.AsInt64()
		case semconv.RPCResponseStatusCodeKey, semconv.DBResponseStatusCodeKey:
			l.Code = kv.Value.AsString()
		}
	}
	if l.Method == "" && path == "" && full == "" {
		// Not HTTP: the span name says it all ("SELECT users",
		// "helloworld.Greeter/SayHello", "send orders"), but for a gRPC
		// method the server does not have ("grpc"): the path called.
		l.Target = l.Name
		if rpcOriginal != "" {
			l.Target = rpcOriginal
		}
	}
	if original != "" {
		l.Method = original // a human wants the verb that was sent
	}
	switch {
	case l.Target != "":
	case full != "":
		l.Target = full
	case route != "":
		l.Target = route
	default:
		l.Target = path
	}
	if clientAddr != "" {
		if clientPort == 0 && clientAddr == peerAddr {
			clientPort = peerPort // client.port is opt-in; the connection's is the same
		}
		l.Client = hostPort(clientAddr, clientPort)
	}
	if (s.kind == trace.SpanKindClient || s.kind == trace.SpanKindProducer) && peerAddr != "" {
		l.Peer = hostPort(peerAddr, peerPort)
	}
	return l
}

// text renders the line, for example:
//
//	2026-11-22T05:00:00.123Z SERVER python3[412] GET /users/{id} 200 1.234ms trace=… span=… parent=… client=10.0.0.1:5555
//
// parent= is left out for root spans, the status is "-" when no response
// was seen. What came from the wire or from a process (its name, the
// method, the target) has its control characters escaped: a request or a
// table name with a newline would otherwise print lines of its own, a
// forged span among them, and an escape sequence would drive the
// terminal.
func (l printed) text() []byte {
	b := make([]byte, 0, 256)
	b = append(b, l.Time...)
	b = append(b, ' ')
	b = append(b, l.Kind...)
	b = append(b, ' ')
	b = appendPrintable(b, l.Process)
	b = append(b, '[')
	b = strconv.AppendInt(b, l.PID, 10)
	b = append(b, "] "...)
	if l.Method != "" {
		b = appendPrintable(b, l.Method)
		b = append(b, ' ')
	}
	b = appendPrintable(b, l.Target)
	b = append(b, ' ')
	switch {
	case l.Status != 0:
		b = strconv.AppendInt(b, l.Status, 10)
	case l.Code != "":
		b = appendPrintable(b, l.Code)
	default:
		b = append(b, '-')
	}
	b = append(b, ' ')
	b = appendDuration(b, l.Duration)
	b = append(b, " trace="...)
	b = append(b, l.TraceID...)
	b = append(b, " span="...)
	b = append(b, l.SpanID...)
	if l.ParentID != "" {
		b = append(b, " parent="...)
		b = append(b, l.ParentID...)
	}
	if l.Client != "" {
		b = append(b, " client="...)
		b = appendPrintable(b, l.Client)
	}
	if l.Peer != "" {
		b = append(b, " peer="...)
		b = appendPrintable(b, l.Peer)
	}
	if l.Error {
		b = append(b, " error"...)
	}
	return append(b, '\n')
}

// appendPrintable appends s with its control characters (C0, DEL, C1
// and the Unicode line and paragraph separators) escaped as Go writes
// them in a quoted string: \n, \x1b, \u2028.
func appendPrintable(b []byte, s string) []byte {
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		if r >= 0x20 && r != 0x7f && (r < 0x80 || r >= 0xa0) && r != 0x2028 && r != 0x2029 {
			b = append(b, s[:n]...) // an invalid byte as it is: valid UTF-8 is made before
		} else {
			q := strconv.QuoteRune(r) // '\n', '\x1b', '\u2028'
			b = append(b, q[1:len(q)-1]...)
		}
		s = s[n:]
	}
	return b
}

// appendDuration writes ms with three decimals below a second (1.234ms),
// seconds with three decimals above (2.500s): readable, and sortable by eye.
func appendDuration(b []byte, ms float64) []byte {
	if ms >= 1000 {
		b = strconv.AppendFloat(b, ms/1000, 'f', 3, 64)
		return append(b, 's')
	}
	b = strconv.AppendFloat(b, ms, 'f', 3, 64)
	return append(b, "ms"...)
}

func hostPort(host string, port int64) string {
	if port == 0 {
		return host
	}
	return net.JoinHostPort(host, strconv.FormatInt(port, 10))
}

func kindName(k trace.SpanKind) string {
	switch k {
	case trace.SpanKindServer:
		return "SERVER"
	case trace.SpanKindClient:
		return "CLIENT"
	}
	return k.String()
}
