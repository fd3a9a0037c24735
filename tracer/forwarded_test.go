package tracer

import (
	"net/netip"
	"strings"
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

func TestForwardedOrigin(t *testing.T) {
	for _, c := range []struct {
		forwarded, xfh, xfp string
		host                string
		port                int
		scheme              string
	}{
		{"", "", "", "", 0, ""},
		{"", "shop.example.com", "https", "shop.example.com", 0, "https"},
		{"", "shop.example.com:8443, proxy.internal", "HTTPS, http", "shop.example.com", 8443, "https"}, // the first proxy's
		{"", "[2001:db8::17]:4711", "", "2001:db8::17", 4711, ""},
		{"", "2001:db8::17", "http", "2001:db8::17", 0, "http"},
		{`for=192.0.2.60;host="shop.example.com:8080";proto=https`, "other.example", "http", "shop.example.com", 8080, "https"}, // Forwarded wins
		{"for=192.0.2.60", "shop.example.com", "https", "shop.example.com", 0, "https"},                                         // no host or proto in it
		// Not a host, a port, or a scheme of the conventions': left out.
		{"", "shop.example.com:x", "ftp", "", 0, ""},
		{"", "shop.example.com:99999", "", "", 0, ""},
		{"", "<script>", "", "", 0, ""},
		{"", "fe80::1%<script>", "", "", 0, ""}, // a zone's text is anything
		{"", "[fe80::1%eth0]:443", "", "", 0, ""},
		{"", "[shop.example.com]", "", "", 0, ""}, // brackets hold IPv6 only
		{"", "[10.0.0.1]:80", "", "", 0, ""},
		{"", "::ffff:10.0.0.1", "", "10.0.0.1", 0, ""},
		{"", "[::ffff:10.0.0.1]:8080", "", "10.0.0.1", 8080, ""},
		{"", "a b", "", "", 0, ""},
		{"", "[2001:db8::17]x", "", "", 0, ""},
		{"", strings.Repeat("a", 254), "", "", 0, ""},
	} {
		host, port, scheme := forwardedOrigin(c.forwarded, c.xfh, c.xfp)
		if host != c.host || port != c.port || scheme != c.scheme {
			t.Errorf("Forwarded %q, X-Forwarded-Host %q, X-Forwarded-Proto %q: %q %d %q, want %q %d %q",
				c.forwarded, c.xfh, c.xfp, host, port, scheme, c.host, c.port, c.scheme)
		}
	}
}

// A server behind an ingress: its requests carry the host and scheme the
// client used, in HTTP/1 (read once for a connection that repeats them)
// and HTTP/2 alike.
func TestOriginRequests(t *testing.T) {
	h := newHarness(t, 4096)
	for range 2 {
		h.send(1, in, "GET /a HTTP/1.1\r\nHost: shop-svc:8080\r\nX-Forwarded-Host: shop.example.com\r\nX-Forwarded-Proto: https\r\n\r\n")
		h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	}
	h.send(1, in, "GET /b HTTP/1.1\r\nHost: shop-svc:8080\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 3 {
		t.Fatalf("HTTP/1: %d requests, want 3", len(h.got))
	}
	for i, r := range h.got[:2] {
		if r.OriginalHost != "shop.example.com" || r.OriginalPort != 0 || r.OriginalScheme != "https" {
			t.Errorf("HTTP/1 request %d: %q %d %q", i, r.OriginalHost, r.OriginalPort, r.OriginalScheme)
		}
	}
	if r := h.got[2]; r.OriginalHost != "" || r.OriginalScheme != "" {
		t.Errorf("HTTP/1 request without proxies' headers: %q %q", r.OriginalHost, r.OriginalScheme)
	}

	// A head longer than the capture: its last line may be cut, and an
	// address cut short is another one. Not read from it.
	const head = "GET /c HTTP/1.1\r\nHost: shop-svc:8080\r\nX-Forwarded-Host: shop.example.com:8443\r\n"
	short := newHarness(t, len(head)-5) // "...:84"
	short.send(1, in, head+"\r\n")
	short.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(short.got) != 1 || short.got[0].OriginalHost != "" || short.got[0].OriginalPort != 0 || short.got[0].Host != "shop-svc" {
		t.Errorf("a cut head: %d requests, %+v", len(short.got), short.got[0])
	}

	cli, srv := newH2Peer(), newH2Peer()
	h2 := newHarness(t, 4096)
	h2.send(1, in, h2Preface+h2Settings0)
	h2.send(1, out, h2Settings0+h2frame(h2Settings, h2FlagAck, 0, nil))
	h2.send(1, in, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, cli.block(":method", "GET", ":scheme", "http", ":path", "/y", ":authority", "shop-svc",
		"forwarded", `host=shop.example.com:8443;proto=https`)))
	h2.send(1, out, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, srv.block(":status", "200")))
	if len(h2.got) != 1 || h2.got[0].OriginalHost != "shop.example.com" || h2.got[0].OriginalPort != 8443 || h2.got[0].OriginalScheme != "https" {
		t.Errorf("HTTP/2: %d requests, %+v", len(h2.got), h2.got)
	}
}

func forwardedClients(rs []*Request) []netip.AddrPort {
	var a []netip.AddrPort
	for _, r := range rs {
		a = append(a, r.ForwardedFor)
	}
	return a
}
