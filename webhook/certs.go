package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certReloader serves the key pair from two PEM files and loads it again
// when their content changes: cert-manager renews certificates, and the
// kubelet updates Secret volumes in place. Files are read again every
// interval and compared byte for byte, which works for the kubelet's
// symlink swaps and for edits within the same second alike. A pair that
// does not load (for example a certificate read before its new key was
// written) is logged and retried; the previous pair is served meanwhile.
type certReloader struct {
	certFile, keyFile string
	logger            *slog.Logger

	mu       sync.RWMutex
	cert     *tls.Certificate
	certPEM  []byte
	keyPEM   []byte
	lastFail string
	// expiredWarned is when the watch last warned of an expired
	// certificate (its goroutine's alone).
	expiredWarned time.Time
}

// newCertReloader loads the pair once, and fails if it cannot.
func newCertReloader(certFile, keyFile string, logger *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, logger: logger}
	if _, err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// GetCertificate is for tls.Config.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cert, nil
}

// reload reads the files and, if they changed, parses and serves them. It
// reports whether a new pair is now served.
func (r *certReloader) reload() (bool, error) {
	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return false, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return false, fmt.Errorf("read key: %w", err)
	}
	r.mu.RLock()
	same := bytes.Equal(certPEM, r.certPEM) && bytes.Equal(keyPEM, r.keyPEM)
	r.mu.RUnlock()
	if same {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("load key pair %s, %s: %w", r.certFile, r.keyFile, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return false, fmt.Errorf("parse certificate: %w", err)
	}
	cert.Leaf = leaf
	r.mu.Lock()
	r.cert, r.certPEM, r.keyPEM = &cert, certPEM, keyPEM
	r.mu.Unlock()
	r.logger.Info("serving certificate loaded",
		"file", r.certFile, "subject", leaf.Subject.String(), "dns_names", leaf.DNSNames,
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	r.expiredWarned = time.Time{} // a new certificate: warned of at once if it has expired
	r.warnExpired(time.Now())
	return true, nil
}

// watch reloads every interval until ctx is done.
func (r *certReloader) watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, err := r.reload()
		switch {
		case err != nil && err.Error() != r.lastFail:
			// Once per distinct failure: a half-written pair fixes itself.
			r.logger.Warn("serving certificate not reloaded, keeping the previous one", "err", err)
			r.lastFail = err.Error()
		case err == nil:
			r.lastFail = ""
		}
		r.warnExpired(time.Now())
	}
}

// warnExpired warns, once an hour, that the certificate served has
// expired: files that stay the same are not loaded again, so the warning
// at load would not come, and the API server stops calling the webhook.
func (r *certReloader) warnExpired(now time.Time) {
	r.mu.RLock()
	leaf := r.cert.Leaf
	r.mu.RUnlock()
	if leaf == nil || !now.After(leaf.NotAfter) || now.Sub(r.expiredWarned) < time.Hour {
		return
	}
	r.expiredWarned = now
	r.logger.Warn("serving certificate has expired: the API server refuses it, and no Deployment is injected", "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
}
