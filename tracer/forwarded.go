package tracer

import (
	"bytes"
	"net/netip"
	"strings"
)

// forwardedClient is the original client's address that proxies in front
// of a server put in a request: the first element of Forwarded (RFC 7239)
// if it names an address, else the first of X-Forwarded-For. The
// conventions' client.address is "the original client behind all proxies,
// if known (e.g. from Forwarded#for, X-Forwarded-For)". Only an IP address
// is taken (its port dropped): an obfuscated identifier ("_hidden"),
// "unknown" or anything else is no address, and the connection's peer
// stays the client. "" when there is none.
func forwardedClient(forwarded, xff []byte) string {
	if a, ok := forwardedFor(forwarded); ok {
		return a.String()
	}
	first, _, _ := bytes.Cut(xff, []byte(","))
	if a, ok := parseHostAddr(string(bytes.TrimSpace(first))); ok {
		return a.String()
	}
	return ""
}

// forwardedFor reads the "for" parameter of a Forwarded header's first
// element: for=192.0.2.60;proto=http, or for="[2001:db8::17]:4711".
func forwardedFor(v []byte) (netip.Addr, bool) {
	first, _, _ := bytes.Cut(v, []byte(","))
	for param := range bytes.SplitSeq(first, []byte(";")) {
		key, value, ok := bytes.Cut(param, []byte("="))
		if !ok || !strings.EqualFold(string(bytes.TrimSpace(key)), "for") {
			continue
		}
		value = bytes.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		return parseHostAddr(string(value))
	}
	return netip.Addr{}, false
}

// parseHostAddr reads an IP address that may carry a port ("192.0.2.60",
// "192.0.2.60:4711", "[2001:db8::17]:4711", "2001:db8::17"), IPv4-mapped
// IPv6 as IPv4.
func parseHostAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		a, err = ap.Addr(), perr
	}
	if err != nil || a.Zone() != "" { // a zone is a link of the proxy's own
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
