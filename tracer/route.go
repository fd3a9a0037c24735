package tracer

import "strings"

// heuristicRoute turns a request path into a low-cardinality route by
// replacing the segments that look like identifiers (numbers, UUIDs, long
// hex or mixed tokens) with "{id}": "/users/42/orders" becomes
// "/users/{id}/orders". Without it, metrics would get one series per id.
func heuristicRoute(path string) string {
	if path == "" || path[0] != '/' {
		return ""
	}
	// Always built, even when no segment changes: path is part of the
	// request's target, query included, and routes live long (series,
	// caches), so a route must not share its memory.
	var b strings.Builder
	b.Grow(len(path))
	segments := 0
	for rest := path[1:]; ; {
		seg, next, more := strings.Cut(rest, "/")
		b.WriteByte('/')
		if looksLikeID(seg) {
			b.WriteString("{id}")
		} else {
			b.WriteString(seg)
		}
		segments++
		if !more {
			break
		}
		if segments == 8 {
			b.WriteString("/*") // deeper paths add no useful grouping
			break
		}
		rest = next
	}
	return b.String()
}

// lastRoute remembers the route of the last path a connection saw: a
// connection often asks for the same path again.
type lastRoute struct{ path, route string }

func (l *lastRoute) of(path string) string {
	if path != l.path {
		l.path, l.route = path, heuristicRoute(path)
	}
	return l.route
}

func looksLikeID(seg string) bool {
	if seg == "" {
		return false
	}
	digits, hex, other := 0, 0, 0
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case '0' <= c && c <= '9':
			digits++
		case 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
			hex++
		case c == '-' || c == '_' || c == '.' || c == '~' || c == '%' || c == '=':
		default:
			other++
		}
	}
	switch {
	case digits == len(seg):
		return true // 42
	case len(seg) >= 8 && other == 0 && digits > 0:
		return true // hex ids, UUIDs
	case len(seg) >= 16 && digits > 0:
		return true // long tokens that mix letters and digits
	}
	return len(seg) > 40 // anything this long is not a route word
}
