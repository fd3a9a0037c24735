package tracer

import (
	"net/netip"
	"testing"
)

func TestForwardedClient(t *testing.T) {
	for _, c := range []struct{ forwarded, xff, want string }{
		{"", "", ""},
		{"", "203.0.113.7", "203.0.113.7:0"},
		{"", " 203.0.113.7 , 10.0.0.1, 10.0.0.2", "203.0.113.7:0"}, // the first is the client, the rest proxies
		{"", "203.0.113.7:5555", "203.0.113.7:5555"},
		{"", "[2001:db8::17]:4711, 10.0.0.1", "[2001:db8::17]:4711"},
		{"", "::ffff:203.0.113.7", "203.0.113.7:0"},
		{"", "unknown, 10.0.0.1", ""}, // not an address: the peer stays the client
		{"", "client.example, 10.0.0.1", ""},
		{"", "fe80::1%eth0", ""}, // a zone is the proxy's own link, not a client
		{"", "[fe80::1%eth0]:80", ""},
		{"for=192.0.2.60;proto=http;by=203.0.113.43", "", "192.0.2.60:0"},
		{`For="[2001:db8:cafe::17]:4711", for=10.0.0.1`, "", "[2001:db8:cafe::17]:4711"},
		{"proto=https; for=192.0.2.60", "198.51.100.1", "192.0.2.60:0"}, // Forwarded wins
		// An obfuscated client is not known: X-Forwarded-For, which the
		// client may have written itself, is not read then.
		{"for=_hidden", "198.51.100.1", ""},
		{"for=unknown", "198.51.100.1", ""},
		{"by=203.0.113.43", "198.51.100.1", "198.51.100.1:0"}, // no "for": X-Forwarded-For
		{`for="`, "", ""},
	} {
		got := ""
		if ap := forwardedClient(c.forwarded, c.xff); ap.IsValid() {
			got = ap.String()
		}
		if got != c.want {
			t.Errorf("Forwarded %q, X-Forwarded-For %q: %q, want %q", c.forwarded, c.xff, got, c.want)
		}
	}
}

// A server behind proxies: the request's ForwardedFor is the client they
// name, in HTTP/1 and HTTP/2 alike, from the first line of a header that
// comes in several (they make one list: the first proxy's is first);
// without such headers, none.
func TestForwardedRequests(t *testing.T) {
	client := netip.MustParseAddrPort("203.0.113.7:0")
	h := newHarness(t, 4096)
	h.send(1, in, "GET /a HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.9\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	h.send(1, in, "GET /b HTTP/1.1\r\nHost: shop\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	h.send(1, in, "GET /c HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 3 || h.got[0].ForwardedFor != client || h.got[1].ForwardedFor.IsValid() || h.got[2].ForwardedFor != client {
		t.Errorf("HTTP/1: %d requests, clients %v", len(h.got), forwardedClients(h.got))
	}

	cli, srv := newH2Peer(), newH2Peer()
	h2 := newHarness(t, 4096)
	h2.send(1, in, h2Preface+h2Settings0)
	h2.send(1, out, h2Settings0+h2frame(h2Settings, h2FlagAck, 0, nil))
	h2.send(1, in, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, cli.block(":method", "GET", ":scheme", "http", ":path", "/y", ":authority", "x",
		"forwarded", "for=192.0.2.60;proto=https")))
	h2.send(1, out, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, srv.block(":status", "200")))
	h2.send(1, in, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 3, cli.block(":method", "GET", ":scheme", "http", ":path", "/z", ":authority", "x",
		"x-forwarded-for", "203.0.113.7", "x-forwarded-for", "10.0.0.9")))
	h2.send(1, out, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 3, srv.block(":status", "200")))
	if len(h2.got) != 2 || h2.got[0].ForwardedFor != netip.MustParseAddrPort("192.0.2.60:0") || h2.got[1].ForwardedFor != client {
		t.Errorf("HTTP/2: %d requests, clients %v", len(h2.got), forwardedClients(h2.got))
	}
}

func forwardedClients(rs []*Request) []netip.AddrPort {
	var a []netip.AddrPort
	for _, r := range rs {
		a = append(a, r.ForwardedFor)
	}
	return a
}
