package exporter

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http/httpguts"

	"github.com/podtracer/podtracer/tracer"
)

// maxSeries bounds a process's cache of series. Routes and (for clients)
// server addresses are meant to be few; if a parser bug or a crawler makes
// them many, the cache is reset rather than grown, and the SDK's
// cardinality limit caps the series.
const maxSeries = 1024

// Attributes that never change.
var (
	schemeHTTP       = semconv.URLSchemeKey.String("http")
	schemeHTTPS      = semconv.URLSchemeKey.String("https")
	protocolNameHTTP = semconv.NetworkProtocolNameKey.String("http")
	methodOtherName  = semconv.HTTPRequestMethodOther.Value.AsString() // "_OTHER"
)

// statusText holds "100".."599" so that error.type costs no allocation.
var statusText = func() (t [600]string) {
	for i := 100; i < len(t); i++ {
		t[i] = strconv.Itoa(i)
	}
	return t
}()

func statusString(code int) string {
	if code >= 0 && code < len(statusText) && statusText[code] != "" {
		return statusText[code]
	}
	return strconv.Itoa(code)
}

// knownMethod reports whether spans and metrics name m: one of the
// methods the HTTP semantic conventions name, or of the user's list that
// replaces theirs (KnownMethods). Others are reported as _OTHER so that a
// scanner sending random verbs cannot explode metric cardinality.
func (c *Config) knownMethod(m string) bool {
	if c.KnownMethods != nil {
		return c.KnownMethods[m]
	}
	switch m {
	case "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "QUERY":
		return true
	}
	return false
}

// ParseKnownMethods reads OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS: a
// comma-separated list of case-sensitive methods that replaces the
// conventions' (http-spans.md: "a full override of the default known
// methods, not a list of known methods in addition to the defaults").
// Unset or blank is nil: theirs.
func ParseKnownMethods(list string) (map[string]bool, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	known := map[string]bool{}
	for m := range strings.SplitSeq(list, ",") {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		if !httpguts.ValidHeaderFieldName(m) { // a method is a token, as a field name is
			return nil, fmt.Errorf("%q is not an HTTP method (a token: letters, digits and !#$%%&'*+-.^_`|~)", m)
		}
		known[m] = true
	}
	if len(known) == 0 {
		return nil, errors.New("names no method; unset it for the conventions' list")
	}
	return known, nil
}

// isError applies the HTTP semantic conventions: a server failed when it
// answered 5xx (4xx is the client's mistake); a client failed on any 4xx
// or 5xx it received. No status (0) is neither.
func isError(role tracer.Role, code int) bool {
	if role == tracer.RoleClient {
		return code >= 400
	}
	return code >= 500
}

// httpErrorType is error.type for an HTTP request, "" when it did not fail:
// the status code's text for failing codes, else what ended the exchange
// without a response (an HTTP/2 stream reset: "CANCEL", ...), or, for a
// client, before the end of one (a 200 whose body was cut short failed it;
// a server whose client stops reading a response, as browsers do with
// media and prefetches, did not fail).
func httpErrorType(role tracer.Role, code int, errorCode string) string {
	switch {
	case isError(role, code):
		return statusString(code)
	case errorCode != "" && (code == 0 || role == tracer.RoleClient):
		return errorCode
	}
	return ""
}

// maxRoutes bounds the routes a process remembers as real.
const maxRoutes = 1000

// routeOf is the route to report for a request answered with status. A
// route is a guess from the path (tracer.heuristicRoute), and a 4xx may
// mean that no route matched, or that the request was refused before
// routing (401 and 403 from an authentication layer, 400, 405): every
// path a scanner tries would then be a route and a series. So a 4xx keeps
// its route only if the process has answered that route with success or
// a redirect before (a 404 for a missing user of /users/{id}); otherwise
// it has none.
// A process's own routes (server) and its peers' (client) are apart.
func (s *process) routeOf(client bool, route string, status int) string {
	if route == "" {
		return ""
	}
	k := routeKey{client: client, route: route}
	if k == s.lastRoute {
		return route // known real: most requests repeat the last one's route
	}
	if status >= 400 && status < 500 {
		if _, ok := s.routes[k]; !ok {
			return ""
		}
		s.lastRoute = k
	} else if status >= 200 && status < 400 && len(s.routes) < maxRoutes {
		s.routes[k] = struct{}{}
		s.lastRoute = k
	}
	return route
}

type routeKey struct {
	client bool
	route  string
}

// originalHTTPS tells whether url.scheme is https. For a server it is
// the scheme of the original client request where proxies in front say it
// (X-Forwarded-Proto, Forwarded's proto: a TLS-terminating ingress's
// https), as the conventions want, else the connection's; a client's
// request is the one it sent.
func originalHTTPS(r *tracer.Request) bool {
	if r.Role != tracer.RoleClient && r.OriginalScheme != "" {
		return r.OriginalScheme == "https"
	}
	return r.TLS
}

// serverEndpoint is server.address and server.port: for a server behind
// proxies, the host the client addressed as they say (X-Forwarded-Host,
// Forwarded's host), which the conventions put first, without a port the
// one of the scheme the client used, as they say (X-Forwarded-Proto: a
// TLS-terminating ingress's https); else the Host header as the client
// wrote it when present (a missing port means the connection's scheme's:
// a proxy that names no host may have written its own, its backend's);
// else the server end of the connection.
func (s *process) serverEndpoint(r *tracer.Request) (string, int) {
	if r.Role != tracer.RoleClient && r.OriginalHost != "" {
		if r.OriginalPort != 0 {
			return r.OriginalHost, r.OriginalPort
		}
		return r.OriginalHost, defaultPort(originalHTTPS(r))
	}
	if r.Host != "" {
		host := strings.TrimSuffix(strings.TrimPrefix(r.Host, "["), "]")
		if r.HostPort != 0 {
			return host, r.HostPort
		}
		return host, defaultPort(r.TLS)
	}
	if r.Role == tracer.RoleClient {
		return addrString(r.Remote, &s.lastRemote, &s.lastRemoteStr), int(r.Remote.Port())
	}
	return addrString(r.Local, &s.lastLocal, &s.lastLocalStr), int(r.Local.Port())
}

// record turns one request into a metric point and, when traces go
// somewhere and the sampler keeps it, a span.
func (s *process) record(r *tracer.Request) {
	if r.Protocol != "" && r.Protocol != tracer.ProtoHTTP {
		s.recordOther(r)
		return
	}
	r.Route = s.routeOf(r.Role == tracer.RoleClient, r.Route, r.StatusCode)
	host, port := s.serverEndpoint(r)
	ser := s.series(r, host, port)
	kind := trace.SpanKindServer
	if r.Role == tracer.RoleClient {
		kind = trace.SpanKindClient
	}
	ctx, rec := s.begin(r, kind, ser.name)
	if rec != nil {
		s.httpAttributes(rec, r, host, port)
		s.finish(rec)
	}
	if s.mp != nil {
		d := r.End.Sub(r.Start).Seconds()
		if d < 0 {
			d = 0 // clocks of two CPUs; a negative duration is meaningless
		}
		h := s.server
		if r.Role == tracer.RoleClient {
			h = s.client
		}
		// The exemplar's time is the request's end, not a clock read.
		h.recordCached(ser.point, ser.attrs, d, trace.SpanContextFromContext(ctx), r.End)
	}
}

// begin gives r its span identity and asks the sampler about it. The
// returned context carries the span context, so that the metric point
// recorded in it can become an exemplar linked to the span (the SDK's
// default trace_based filter keeps sampled ones). The record is nil when
// spans go nowhere or the sampler dropped this one, so unsampled requests
// cost no attribute work; the samplers don't look at attributes.
func (s *process) begin(r *tracer.Request, kind trace.SpanKind, name string) (context.Context, *spanRecord) {
	ctx := context.Background()
	if s.spans == nil {
		return ctx, nil
	}
	tid, sid := spanIDs(r.Parent, r.TraceIDLow)
	sampled := s.sampler.sample(r.Parent, tid)
	flags := r.Parent.TraceFlags().WithSampled(sampled)
	if s.mp != nil {
		ctx = s.spanContext(trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: tid, SpanID: sid, TraceFlags: flags, TraceState: r.Parent.TraceState(),
		}))
	}
	if !sampled {
		return ctx, nil
	}
	rec := newRecord(len(s.sinks))
	rec.res = s.spans
	rec.traceID, rec.spanID, rec.flags = tid, sid, flags
	if r.Parent.IsValid() {
		rec.parentID = r.Parent.SpanID()
		if ts := r.Parent.TraceState(); ts.Len() > 0 {
			rec.traceState = ts.String()
		}
	}
	rec.kind, rec.name, rec.start, rec.end = kind, name, r.Start, r.End
	return ctx, rec
}

// finish hands a filled record to every sink, which release it. The
// sinks get it when the worker offers what it made from a batch. The span
// is encoded for OTLP here, on the worker, while what it was made of is
// still in the cache: encoding it at export, a batch later, cost twice as
// much (a pass to size every span, then one to write it, both on cold
// memory).
func (s *process) finish(rec *spanRecord) {
	switch {
	case rec.attrsEncoded:
		rec.wire = appendSpanTail(rec.wire, rec)
	case s.encode:
		rec.wire = appendSpan(rec.wire[:0], rec)
	}
	for _, k := range s.sinks {
		k.hold(rec)
	}
}

// httpAttributes puts an HTTP span's attributes and status on rec. Those
// most requests of a process repeat come first (httpStable): when only
// OTLP wants the span and they are the last request's, their encoding is
// copied from it, not written again (a fifth of the worker's time with
// every span exported).
func (s *process) httpAttributes(rec *spanRecord, r *tracer.Request, host string, port int) {
	cfg := s.cfg
	a := s.spanAttrs(rec)
	key := httpStable{role: r.Role, method: r.Method, path: r.Path, route: r.Route, status: r.StatusCode, host: host, port: port,
		version: r.ProtocolVersion, userAgent: r.UserAgent, tls: originalHTTPS(r)}
	if cfg.CaptureQuery {
		key.query = redactQuery(r.Query)
	}
	if r.Remote.IsValid() {
		key.peer = addrString(r.Remote, &s.lastRemote, &s.lastRemoteStr)
	}
	if r.Role != tracer.RoleClient {
		key.client = s.forwardedFor(r)
	}
	switch {
	case a.wire && !a.kvs && s.lastHTTPWire != nil && key == s.lastHTTP:
		rec.wire = append(rec.wire, s.lastHTTPWire...)
	case a.wire && !a.kvs:
		start := len(rec.wire)
		key.write(a, cfg)
		s.lastHTTP, s.lastHTTPWire = key, append(s.lastHTTPWire[:0], rec.wire[start:]...)
	default:
		key.write(a, cfg)
	}

	if r.Remote.IsValid() {
		a.int(semconv.NetworkPeerPortKey, int64(r.Remote.Port()))
	}
	if cfg.OptIn.ClientPort && r.Role != tracer.RoleClient {
		// Behind proxies the peer's port is the last proxy's: the
		// client's is the one they name, if they named one.
		switch port := r.ForwardedFor.Port(); {
		case r.ForwardedFor.IsValid() && port != 0:
			a.int(semconv.ClientPortKey, int64(port))
		case !r.ForwardedFor.IsValid() && r.Remote.IsValid():
			a.int(semconv.ClientPortKey, int64(r.Remote.Port()))
		}
	}
	if cfg.OptIn.RequestBodySize && r.RequestSize > 0 {
		a.int(semconv.HTTPRequestBodySizeKey, r.RequestSize)
	}
	if cfg.OptIn.ResponseBodySize && r.ResponseSize > 0 {
		a.int(semconv.HTTPResponseBodySizeKey, r.ResponseSize)
	}
	if errType := httpErrorType(r.Role, r.StatusCode, r.ErrorCode); errType != "" {
		a.str(semconv.ErrorTypeKey, errType)
		// The semantic conventions want no description when the status
		// code already says what went wrong.
		rec.status = codes.Error
	}
}

// httpStable is what an HTTP span's first attributes are made of: all a
// keep-alive connection's requests of one path repeat it (the peer's port
// and the sizes, which vary more, come after). The tracer hands repeated
// strings over as the same string, so comparing two is cheap.
type httpStable struct {
	role                tracer.Role
	method, path, query string // query: only when captured
	route               string
	status              int
	host                string
	port                int
	peer                string // the peer's address, "" when unknown
	client              string // a server's client behind proxies (forwardedFor), "" when none said
	version, userAgent  string
	tls                 bool // url.scheme https
}

// write puts the attributes on a span. The conventions make a client
// span's scheme, route and user agent opt-in.
func (k *httpStable) write(a spanAttrs, cfg *Config) {
	opt := &cfg.OptIn
	client := k.role == tracer.RoleClient
	if cfg.knownMethod(k.method) {
		a.str(semconv.HTTPRequestMethodKey, k.method)
	} else {
		a.str(semconv.HTTPRequestMethodKey, methodOtherName)
		a.str(semconv.HTTPRequestMethodOriginalKey, k.method)
	}
	if !client || opt.ClientScheme {
		a.str(semconv.URLSchemeKey, scheme(k.tls))
	}
	if !client {
		// A client's path and query are in its url.full: the conventions
		// give url.path and url.query to servers only.
		a.str(semconv.URLPathKey, k.path)
		if k.query != "" {
			a.str(semconv.URLQueryKey, k.query)
		}
	}
	if k.route != "" && (!client || opt.ClientTemplate) {
		a.str(routeAttr(client), k.route)
	}
	if k.status != 0 {
		a.int(semconv.HTTPResponseStatusCodeKey, int64(k.status))
	}
	if k.host != "" {
		a.str(semconv.ServerAddressKey, k.host)
	}
	if k.port != 0 {
		a.int(semconv.ServerPortKey, int64(k.port))
	}
	if k.peer != "" {
		a.str(semconv.NetworkPeerAddressKey, k.peer)
	}
	switch {
	case client:
	case k.client != "":
		// The original client, as the proxies in front said: the
		// conventions' "behind all proxies, if known".
		a.str(semconv.ClientAddressKey, k.client)
	case k.peer != "":
		// Without proxy headers the client is the peer.
		a.str(semconv.ClientAddressKey, k.peer)
	}
	if client {
		a.str(semconv.URLFullKey, fullURL(k.tls, k.host, k.port, k.path, k.query, k.query != ""))
	}
	if k.version != "" {
		a.str(semconv.NetworkProtocolVersionKey, k.version)
	}
	if k.userAgent != "" && (!client || opt.ClientUserAgent) {
		a.str(semconv.UserAgentOriginalKey, k.userAgent)
	}
}

// spanAttrs writes a span's attributes in the forms its sinks want: as
// attribute.KeyValues in rec.attrs (the printer), and straight into the
// span's encoded message (OTLP), which then needs no KeyValue at all.
// Building KeyValues only to encode them, and clearing them for reuse,
// was a fifth of the worker's time.
type spanAttrs struct {
	rec       *spanRecord
	kvs, wire bool
	limit     int // cut string values to this many characters; -1: no limit
}

// spanAttrs starts writing rec's attributes; rec's other fields are set.
// finish completes the encoded span.
func (s *process) spanAttrs(rec *spanRecord) spanAttrs {
	a := spanAttrs{rec: rec, kvs: s.keepAttrs, wire: s.encode, limit: s.cfg.valueLimit()}
	if a.wire {
		rec.wire = appendSpanHead(rec.wire[:0], rec)
		rec.attrsEncoded = true
	}
	return a
}

func (a spanAttrs) str(key attribute.Key, v string) {
	v = truncateValue(v, a.limit)
	if a.kvs {
		a.rec.attrs = append(a.rec.attrs, key.String(v))
	}
	if a.wire {
		a.rec.wire = appendStringAttr(a.rec.wire, key, v)
	}
}

func (a spanAttrs) int(key attribute.Key, v int64) {
	if a.kvs {
		a.rec.attrs = append(a.rec.attrs, key.Int64(v))
	}
	if a.wire {
		a.rec.wire = appendIntAttr(a.rec.wire, key, v)
	}
}

// forwardedFor is the client.address of a server's request behind proxies
// (tracer.Request.ForwardedFor), "" when they named none.
func (s *process) forwardedFor(r *tracer.Request) string {
	return addrString(netip.AddrPortFrom(r.ForwardedFor.Addr(), 0), &s.lastForwarded, &s.lastForwardedStr)
}

// valueLimit is how many characters a span attribute's string value may
// have (OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT); -1: no limit.
func (c *Config) valueLimit() int {
	if c == nil || !c.attrLimited {
		return -1
	}
	return c.attrLimit
}

// truncateValue cuts v to limit characters (a negative limit: none), as
// the specification's attribute limits want: counting each character as
// one, whatever its bytes. A value within the limit costs no allocation.
func truncateValue(v string, limit int) string {
	if limit < 0 || len(v) <= limit {
		return v
	}
	n := 0
	for i := range v {
		if n == limit {
			return v[:i]
		}
		n++
	}
	return v
}

// sensitiveQueryKeys are the query parameters whose values the
// conventions want redacted by default, in url.query and url.full alike
// (v1.43, url.query): signed URLs' signatures and credentials. Matched
// case-sensitively, as they say.
var sensitiveQueryKeys = []string{"X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "X-Goog-Signature"}

// redactQuery replaces the values of q's sensitive parameters with
// "REDACTED", keeping their keys ("q=otel&sig=REDACTED"). A query without
// them is returned as it is, without an allocation.
func redactQuery(q string) string {
	sensitive := func(param string) bool {
		key, _, hasValue := strings.Cut(param, "=")
		return hasValue && slices.Contains(sensitiveQueryKeys, key)
	}
	if !strings.Contains(q, "sig=") && !strings.Contains(q, "X-Amz-") && !strings.Contains(q, "X-Goog-Signature") {
		return q
	}
	params := strings.Split(q, "&")
	changed := false
	for i, p := range params {
		if sensitive(p) {
			key, _, _ := strings.Cut(p, "=")
			params[i], changed = key+"=REDACTED", true
		}
	}
	if !changed {
		return q
	}
	return strings.Join(params, "&")
}

// scheme is url.scheme: https on a TLS connection.
func scheme(tls bool) string {
	if tls {
		return "https"
	}
	return "http"
}

// defaultPort is the port a URL of the scheme leaves out.
func defaultPort(tls bool) int {
	if tls {
		return 443
	}
	return 80
}

// fullURL builds url.full for a client span. The port is left out when it
// is the scheme's default, as a browser would write the URL.
func fullURL(tls bool, host string, port int, path, query string, withQuery bool) string {
	var b strings.Builder
	b.Grow(len("https://[]:65535") + len(host) + len(path) + len(query) + 1)
	b.WriteString(scheme(tls))
	b.WriteString("://")
	if strings.IndexByte(host, ':') >= 0 {
		b.WriteByte('[')
		b.WriteString(host)
		b.WriteByte(']')
	} else {
		b.WriteString(host)
	}
	if port != defaultPort(tls) && port != 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(port))
	}
	if path == "" {
		path = "/"
	}
	b.WriteString(path)
	if withQuery && query != "" {
		b.WriteByte('?')
		b.WriteString(query)
	}
	return b.String()
}

// seriesKey is what distinguishes one metric series from another within a
// process, and all the span name depends on. url.path is deliberately
// absent: it is unbounded.
type seriesKey struct {
	client  bool
	method  string // "_OTHER" for methods the conventions don't name
	status  int
	route   string
	version string
	host    string // client metrics only
	port    int    // client metrics only
	errType string // error.type, "" when the request did not fail
	tls     bool   // url.scheme https
}

// series is what is computed once per distinct seriesKey.
type series struct {
	name  string        // span name
	attrs attribute.Set // the metric attribute set, empty without metrics
	point **histPoint   // its point in the histogram, once looked up
}

// series returns the cached span name and metric attributes for r: most
// requests repeat a few combinations, and building either costs
// allocations.
func (s *process) series(r *tracer.Request, host string, port int) series {
	k := seriesKey{
		client:  r.Role == tracer.RoleClient,
		method:  r.Method,
		status:  r.StatusCode,
		route:   r.Route,
		version: r.ProtocolVersion,
		errType: httpErrorType(r.Role, r.StatusCode, r.ErrorCode),
		tls:     originalHTTPS(r),
	}
	if !s.cfg.knownMethod(k.method) {
		k.method = methodOtherName
	}
	if k.client {
		k.host, k.port = host, port
	}
	if s.lastSeries.name != "" && k == s.lastSeriesKey {
		return s.lastSeries // most requests repeat the last one's series
	}
	v, ok := s.seriesCache[k]
	if !ok {
		v = s.newSeries(k)
	}
	s.lastSeriesKey, s.lastSeries = k, v
	return v
}

// newSeries computes and caches k's series.
func (s *process) newSeries(k seriesKey) series {
	if len(s.seriesCache) >= maxSeries {
		clear(s.seriesCache)
	}
	// Span name per the HTTP conventions: "METHOD route", "METHOD" without a
	// route, with "HTTP" for the method when it is unknown (_OTHER).
	v := series{name: k.method}
	if k.method == methodOtherName {
		v.name = "HTTP"
	}
	if k.route != "" {
		v.name += " " + k.route
	}
	if s.mp != nil {
		v.attrs, v.point = metricAttrs(k, &s.cfg.OptIn), new(*histPoint)
	}
	s.seriesCache[k] = v
	return v
}

// routeAttr is the attribute of an HTTP route: http.route on a server,
// url.template on a client (the conventions give http.route to servers
// only).
func routeAttr(client bool) attribute.Key {
	if client {
		return semconv.URLTemplateKey
	}
	return semconv.HTTPRouteKey
}

// metricAttrs is the attribute set of k's metric points. On the client's
// metric the conventions make the scheme and the route (url.template)
// opt-in, as on its spans: the span's name keeps the route either way.
func metricAttrs(k seriesKey, opt *OptIn) attribute.Set {
	a := make([]attribute.KeyValue, 0, 9)
	a = append(a, semconv.HTTPRequestMethodKey.String(k.method), protocolNameHTTP)
	if !k.client || opt.ClientScheme {
		if k.tls {
			a = append(a, schemeHTTPS)
		} else {
			a = append(a, schemeHTTP)
		}
	}
	if k.status != 0 {
		a = append(a, semconv.HTTPResponseStatusCode(k.status))
	}
	if k.route != "" && (!k.client || opt.ClientTemplate) {
		a = append(a, routeAttr(k.client).String(k.route))
	}
	if k.version != "" {
		a = append(a, semconv.NetworkProtocolVersion(k.version))
	}
	if k.errType != "" {
		a = append(a, semconv.ErrorTypeKey.String(k.errType))
	}
	if k.client && k.host != "" {
		a = append(a, semconv.ServerAddress(k.host))
	}
	if k.client && k.port != 0 {
		a = append(a, semconv.ServerPort(k.port))
	}
	return attribute.NewSet(a...)
}
