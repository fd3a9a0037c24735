package tracer

import "testing"

func TestForwardedClient(t *testing.T) {
	for _, c := range []struct{ forwarded, xff, want string }{
		{"", "", ""},
		{"", "203.0.113.7", "203.0.113.7"},
		{"", " 203.0.113.7 , 10.0.0.1, 10.0.0.2", "203.0.113.7"}, // the first is the client, the rest proxies
		{"", "203.0.113.7:5555", "203.0.113.7"},
		{"", "[2001:db8::17]:4711, 10.0.0.1", "2001:db8::17"},
		{"", "::ffff:203.0.113.7", "203.0.113.7"},
		{"", "unknown, 10.0.0.1", ""}, // not an address: the peer stays the client
		{"", "client.example, 10.0.0.1", ""},
		{"for=192.0.2.60;proto=http;by=203.0.113.43", "", "192.0.2.60"},
		{`For="[2001:db8:cafe::17]:4711", for=10.0.0.1`, "", "2001:db8:cafe::17"},
		{"proto=https; for=192.0.2.60", "198.51.100.1", "192.0.2.60"}, // Forwarded first
		{"for=_hidden", "198.51.100.1", "198.51.100.1"},               // obfuscated: X-Forwarded-For then
		{"by=203.0.113.43", "198.51.100.1", "198.51.100.1"},
		{"for=\"", "", ""},
		{"", "fe80::1%eth0", ""}, // a zone is the proxy's own link, not a client
		{"", "[fe80::1%eth0]:80", ""},
	} {
		if got := forwardedClient([]byte(c.forwarded), []byte(c.xff)); got != c.want {
			t.Errorf("Forwarded %q, X-Forwarded-For %q: %q, want %q", c.forwarded, c.xff, got, c.want)
		}
	}
}

// A server behind a proxy: the request's ClientAddress is the client the
// proxy names, in HTTP/1 and HTTP/2 alike; without such headers, none.
func TestForwardedRequests(t *testing.T) {
	h := newHarness(t, 4096)
	h.send(1, in, "GET /a HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.9\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	h.send(1, in, "GET /b HTTP/1.1\r\nHost: shop\r\n\r\n")
	h.send(1, out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	if len(h.got) != 2 || h.got[0].ClientAddress != "203.0.113.7" || h.got[1].ClientAddress != "" {
		t.Errorf("HTTP/1: %d requests, client addresses %q", len(h.got), clientAddresses(h.got))
	}

	cli, srv := newH2Peer(), newH2Peer()
	h2 := newHarness(t, 4096)
	h2.send(1, in, h2Preface+h2Settings0)
	h2.send(1, out, h2Settings0+h2frame(h2Settings, h2FlagAck, 0, nil))
	h2.send(1, in, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, cli.block(":method", "GET", ":scheme", "http", ":path", "/y", ":authority", "x",
		"forwarded", "for=192.0.2.60;proto=https")))
	h2.send(1, out, h2frame(h2Headers, h2FlagEndHeaders|h2FlagEndStream, 1, srv.block(":status", "200")))
	if len(h2.got) != 1 || h2.got[0].ClientAddress != "192.0.2.60" {
		t.Errorf("HTTP/2: %d requests, client addresses %q", len(h2.got), clientAddresses(h2.got))
	}
}

func clientAddresses(rs []*Request) []string {
	var a []string
	for _, r := range rs {
		a = append(a, r.ClientAddress)
	}
	return a
}
