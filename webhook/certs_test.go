package webhook

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/internal/testenv"
)

// testCert is a serving certificate signed by its own throw-away CA.
type testCert struct {
	certPEM, keyPEM, caPEM []byte
	serial                 *big.Int
}

var serials = big.NewInt(1000)

func newTestCert(t testing.TB, hosts ...string) testCert {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "podtracer test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serials.Add(serials, big.NewInt(1))
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).Set(serials),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	return testCert{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		serial:  tmpl.SerialNumber,
	}
}

// write puts the pair in dir the way the kubelet does for a Secret volume:
// tls.crt -> ..data/tls.crt, ..data -> a fresh timestamped folder, swapped
// atomically.
func (c testCert) write(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	ts, err := os.MkdirTemp(dir, "..2026_")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tls.crt": c.certPEM, "tls.key": c.keyPEM} {
		if err := os.WriteFile(filepath.Join(ts, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
}

func (c testCert) pool(t testing.TB) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(c.caPEM) {
		t.Fatal("bad CA PEM")
	}
	return p
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func TestCertReloaderFailsAtStart(t *testing.T) {
	dir := t.TempDir()
	if _, err := newCertReloader(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), testLogger(t)); err == nil {
		t.Error("missing files accepted")
	}
	a, b := newTestCert(t, "127.0.0.1"), newTestCert(t, "127.0.0.1")
	os.WriteFile(filepath.Join(dir, "a.crt"), a.certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "b.key"), b.keyPEM, 0o600)
	if _, err := newCertReloader(filepath.Join(dir, "a.crt"), filepath.Join(dir, "b.key"), testLogger(t)); err == nil {
		t.Error("mismatched key accepted")
	}
}

// serveTest runs a Server of c on a port of its own until cancel; served
// gets what Serve returned.
func serveTest(t *testing.T, c Config, logger *slog.Logger) (s *Server, ln net.Listener, served <-chan error, cancel func()) {
	t.Helper()
	s, err := NewServer(c, logger)
	if err != nil {
		t.Fatal(err)
	}
	if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	return s, ln, done, cancel
}

// TestServeReloadsCertificate runs the real HTTPS server, replaces its
// certificate files the way the kubelet does, and sees new connections get
// the new certificate; a broken pair in between is not served.
func TestServeReloadsCertificate(t *testing.T) {
	dir := t.TempDir()
	first := newTestCert(t, "127.0.0.1")
	certFile, keyFile := first.write(t, dir)
	c := Config{TLSCert: certFile, TLSKey: keyFile, CertReloadInterval: 20 * time.Millisecond, Image: "podtracer:test"}
	s, ln, served, cancel := serveTest(t, c, testLogger(t))
	url := "https://" + ln.Addr().String()

	serial := func(ca testCert) (*big.Int, error) {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.pool(t)})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
	}
	get := func(path string, ca testCert) (int, string) {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool(t)}}}
		resp, err := client.Get(url + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz", first); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, _ := get("/readyz", first); code != 200 {
		t.Errorf("/readyz: %d", code)
	}

	// Half an update: the new certificate with the old key. Not served.
	second := newTestCert(t, "127.0.0.1")
	mismatched := testCert{certPEM: second.certPEM, keyPEM: first.keyPEM}
	mismatched.write(t, dir)
	time.Sleep(100 * time.Millisecond)
	if got, err := serial(first); err != nil || got.Cmp(first.serial) != 0 {
		t.Fatalf("after a mismatched pair: serial %v, err %v; want the first certificate still", got, err)
	}

	second.write(t, dir)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := serial(second)
		if err == nil && got.Cmp(second.serial) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new certificate not served: serial %v, err %v", got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if s.ready.Load() {
		t.Error("still ready after shutdown")
	}
}

func TestMainArgs(t *testing.T) {
	if err := Main(context.Background(), testLogger(t), []string{"--port=1"}); err == nil || !strings.Contains(err.Error(), "PODTRACER_WEBHOOK_") {
		t.Errorf("unexpected argument: %v", err)
	}
	var b strings.Builder
	if err := PrintUsage(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PODTRACER_WEBHOOK_ADDR", ":9443", "PODTRACER_WEBHOOK_IMAGE", "(required)", "256Mi"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, b.String())
		}
	}
}

// TestHandshakeFailuresLogged: a client that does not trust the serving
// certificate (the API server after a CA rotation) shows in the log as a
// warning, once per interval however many come.
func TestHandshakeFailuresLogged(t *testing.T) {
	dir := t.TempDir()
	cert := newTestCert(t, "127.0.0.1")
	certFile, keyFile := cert.write(t, dir)
	var logs testenv.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	_, ln, _, cancel := serveTest(t, Config{TLSCert: certFile, TLSKey: keyFile, Image: "podtracer:test"}, logger)
	defer cancel()
	// A load balancer's TCP check: connected, closed, no handshake. Not
	// a client that refused the certificate: no warning.
	for range 3 {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	other := newTestCert(t, "127.0.0.1") // a CA that did not sign the served certificate
	for range 3 {
		if conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: other.pool(t)}); err == nil {
			conn.Close()
			t.Fatal("handshake with an untrusted certificate succeeded")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "TLS handshake failed") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the others, had they been logged
	if n := strings.Count(logs.String(), "TLS handshake failed"); n != 1 || !strings.Contains(logs.String(), "level=WARN") ||
		!strings.Contains(logs.String(), "remote error") {
		t.Errorf("%d handshake warnings, want 1:\n%s", n, logs.String())
	}
}

// TestExpiredCertificateWarned: a certificate that expires while its files
// stay the same is warned of, once an hour.
func TestExpiredCertificateWarned(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := newTestCert(t, "127.0.0.1").write(t, dir)
	var logs testenv.Buffer
	r, err := newCertReloader(certFile, keyFile, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.warnExpired(time.Now())
	if strings.Contains(logs.String(), "expired") {
		t.Fatalf("a valid certificate warned of:\n%s", logs.String())
	}
	later := r.cert.Leaf.NotAfter.Add(time.Minute)
	r.warnExpired(later)
	r.warnExpired(later.Add(time.Minute))
	r.warnExpired(later.Add(2 * time.Hour))
	if n := strings.Count(logs.String(), "serving certificate has expired"); n != 2 {
		t.Errorf("%d warnings, want 2 (at expiry, and an hour on):\n%s", n, logs.String())
	}
}
