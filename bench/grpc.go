package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The gRPC workload: a grpc-go server of one unary method, demo.Echo/Say,
// driven by ghz. Its messages are google.protobuf.StringValue, so the
// server needs no generated code; ghz reads the same service from echoProto,
// whose Text message has StringValue's wire format.

var echoService = grpc.ServiceDesc{
	ServiceName: "demo.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Say",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return wrapperspb.String("hello, " + in.Value), nil
		},
	}},
}

const echoProto = `syntax = "proto3";
package demo;
message Text { string value = 1; }
service Echo { rpc Say(Text) returns (Text); }
`

// serveEcho serves demo.Echo/Say on ln until ctx is done; overTLS, over
// TLS with a self-signed certificate.
func serveEcho(ctx context.Context, ln net.Listener, overTLS bool) error {
	var opts []grpc.ServerOption
	if overTLS {
		cert, err := selfSigned()
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	}
	srv := grpc.NewServer(opts...)
	srv.RegisterService(&echoService, struct{}{})
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	return srv.Serve(ln)
}

// selfSigned makes a certificate for localhost and 127.0.0.1, signed by
// its own key.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// ghzVersion is the ghz the harness builds when -ghz is not given and none
// is on PATH.
const ghzVersion = "v0.93.0"

// findGhz returns ghz from PATH, or builds it with go install into the
// user's cache folder once.
func findGhz() (string, error) {
	if path, err := exec.LookPath("ghz"); err == nil {
		return path, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("ghz not on PATH, and no cache folder to build it in: %w", err)
	}
	dir := filepath.Join(cache, "podtracer-bench", "ghz-"+ghzVersion)
	bin := filepath.Join(dir, "ghz")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	logf("building ghz %s into %s", ghzVersion, dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command("go", "install", "github.com/bojand/ghz/cmd/ghz@"+ghzVersion)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build ghz: %v\n%s", err, out)
	}
	return bin, nil
}

// ghzReport is the part of ghz's JSON report that matters here.
type ghzReport struct {
	Count       uint64  `json:"count"`
	Rps         float64 `json:"rps"`
	Percentiles []struct {
		Percentage int           `json:"percentage"`
		Latency    time.Duration `json:"latency"`
	} `json:"latencyDistribution"`
	Statuses map[string]uint64 `json:"statusCodeDistribution"`
}

// runGhz calls demo.Echo/Say on addr for d over conns connections, one
// call in flight on each: as fast as the server answers when rate is 0,
// else at rate calls per second. Calls still in flight at the end are
// waited for and counted.
func (h *harness) runGhz(addr string, rate float64, conns int, d time.Duration, overTLS bool) (*loadRun, error) {
	security := "--insecure" // plaintext
	if overTLS {
		security = "--skipTLS" // TLS, the server's self-signed certificate taken
	}
	args := []string{security, "--proto", filepath.Join(h.dir, "echo.proto"), "--call", "demo.Echo.Say",
		"-d", `{"value":"world"}`, "-c", strconv.Itoa(conns), "--connections", strconv.Itoa(conns),
		"-z", d.String(), "--duration-stop", "wait", "-O", "json"}
	if rate > 0 {
		args = append(args, "--rps", fmt.Sprint(rate))
	}
	out, cpu, err := runLoader("ghz", exec.Command(h.ghz, append(args, addr)...))
	if err != nil {
		return nil, err
	}
	var rep ghzReport
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("ghz said %q: %w", out, err)
	}
	ok := rep.Statuses["OK"]
	if ok == 0 {
		return nil, fmt.Errorf("ghz: no call succeeded:\n%s", out)
	}
	r := &loadRun{served: ok, errors: rep.Count - ok, rate: rep.Rps, cpu: cpu}
	for _, p := range rep.Percentiles {
		switch p.Percentage {
		case 50:
			r.p50 = us(p.Latency)
		case 99:
			r.p99 = us(p.Latency)
		}
	}
	if rate == 0 {
		r.p50, r.p99 = 0, 0 // latency under saturation is queueing: not reported, as for wrk
	}
	return r, nil
}
