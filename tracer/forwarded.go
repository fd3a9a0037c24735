package tracer

import (
	"bytes"
	"net/netip"
	"strings"
)

// forwardedClient is the original client that proxies in front of a
// server name in a request, from the first Forwarded (RFC 7239) and
// X-Forwarded-For lines: the conventions' client.address is "the
// original client behind all proxies, if known (e.g. from Forwarded#for,
// X-Forwarded-For)". The first element of each is the client as the first
// proxy saw it. Forwarded, the standard, wins: when its first element has
// a "for" that is no IP address (an obfuscated "_hidden", "unknown"),
// the client is not known, and X-Forwarded-For, which a client may have
// written itself, is not read. Only an IP address is taken, with its port
// when the proxy gave one (else 0). Invalid when none is said.
//
// Anyone who reaches the server directly can send these headers: they
// are as trustworthy as the proxies in front of it.
func forwardedClient(forwarded, xff string) netip.AddrPort {
	if value, ok := forwardedParam(forwarded, "for"); ok {
		return parseHostAddr(value)
	}
	return parseHostAddr(firstElement(xff))
}

// forwardedOrigin is what the proxies in front of a server say the
// client asked for: the host and port it addressed (the port 0 when they
// gave none), from the first Forwarded element's "host", else the first
// X-Forwarded-Host; and its scheme, "http" or "https", from that
// element's "proto", else the first X-Forwarded-Proto. The conventions
// want them for server.address and server.port ("the original host
// which may be passed by the reverse proxy"). Forwarded, the standard,
// wins each. A host that is no host name or IP address is not taken, nor
// another scheme: the values become span attributes. As trustworthy as
// the proxies, like forwardedClient's.
func forwardedOrigin(forwarded, xfh, xfp string) (host string, port int, scheme string) {
	hp, ok := forwardedParam(forwarded, "host")
	if !ok {
		hp = firstElement(xfh)
	}
	if hp != "" {
		h, p := splitHostPort(hp)
		// A port that is there must be one (not "shop:x"), 1-65535;
		// brackets hold an IPv6 address only.
		bracketed := strings.HasPrefix(hp, "[")
		if valid, ok := validHost(h, bracketed); ok && (p != 0 || hp == h || bracketed && hp == "["+h+"]") {
			host, port = valid, p
		}
	}
	proto, ok := forwardedParam(forwarded, "proto")
	if !ok {
		proto = firstElement(xfp)
	}
	switch {
	case strings.EqualFold(proto, "https"):
		scheme = "https"
	case strings.EqualFold(proto, "http"):
		scheme = "http"
	}
	return host, port, scheme
}

// firstElement is the first of a comma-separated header value's elements:
// the first proxy's.
func firstElement(v string) string {
	first, _, _ := strings.Cut(v, ",")
	return strings.TrimSpace(first)
}

// validHost tells whether h is a host name (letters, digits, '-', '_'
// and dots), or an IP address without a zone (whose text could be
// anything), of at most 253 bytes; an IPv6 one only when bracketed says
// it was in brackets. It returns h, an IPv4-mapped address as IPv4 (as
// client.address has it).
func validHost(h string, bracketed bool) (string, bool) {
	if h == "" || len(h) > 253 {
		return "", false
	}
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" || bracketed && !a.Is6() {
			return "", false
		}
		if a.Is4In6() {
			return a.Unmap().String(), true
		}
		return h, true
	}
	if bracketed {
		return "", false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "", false
		}
	}
	return h, true
}

// forwardedParam is the parameter key of a Forwarded header's first
// element, unquoted: for=192.0.2.60;proto=http, or
// for="[2001:db8::17]:4711". ok is false when there is none.
func forwardedParam(v, key string) (value string, ok bool) {
	first, _, _ := strings.Cut(v, ",")
	for param := range strings.SplitSeq(first, ";") {
		k, value, ok := strings.Cut(param, "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), key) {
			continue
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		return value, true
	}
	return "", false
}

// parseHostAddr reads an IP address that may carry a port ("192.0.2.60",
// "192.0.2.60:4711", "[2001:db8::17]:4711", "2001:db8::17"), IPv4-mapped
// IPv6 as IPv4; invalid for anything else, and for an address with a zone
// (a link of the proxy's own).
func parseHostAddr(s string) netip.AddrPort {
	var ap netip.AddrPort
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
		ap = netip.AddrPortFrom(a, 0)
	} else if ap, err = netip.ParseAddrPort(s); err != nil {
		return netip.AddrPort{}
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// origin is forwardedOrigin's answer.
type origin struct {
	host   string
	port   int
	scheme string
}

// lastOrigin is the origin of the last head of a connection that had
// proxies' headers: behind an ingress, every request of a connection
// repeats them, and they are read, and the host's string made, once.
type lastOrigin struct {
	set                 bool
	forwarded, xfh, xfp []byte
	o                   origin
}

func (l *lastOrigin) of(forwarded, xfh, xfp []byte) origin {
	if l.set && bytes.Equal(forwarded, l.forwarded) && bytes.Equal(xfh, l.xfh) && bytes.Equal(xfp, l.xfp) {
		return l.o
	}
	host, port, scheme := forwardedOrigin(string(forwarded), string(xfh), string(xfp))
	l.set, l.o = true, origin{host: host, port: port, scheme: scheme}
	l.forwarded = append(l.forwarded[:0], forwarded...)
	l.xfh = append(l.xfh[:0], xfh...)
	l.xfp = append(l.xfp[:0], xfp...)
	return l.o
}
