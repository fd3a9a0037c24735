package tracer

import (
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
	if value, ok := forwardedFor(forwarded); ok {
		return parseHostAddr(value)
	}
	first, _, _ := strings.Cut(xff, ",")
	return parseHostAddr(strings.TrimSpace(first))
}

// forwardedFor is the "for" parameter of a Forwarded header's first
// element, unquoted: for=192.0.2.60;proto=http, or
// for="[2001:db8::17]:4711". ok is false when there is none.
func forwardedFor(v string) (value string, ok bool) {
	first, _, _ := strings.Cut(v, ",")
	for param := range strings.SplitSeq(first, ";") {
		key, value, ok := strings.Cut(param, "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(key), "for") {
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
