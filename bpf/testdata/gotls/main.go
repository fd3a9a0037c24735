// Command gotls is a TLS server and client in one Go process, on
// crypto/tls: the neighbour of the Go TLS kernel test. It prints its port,
// waits for a line on stdin (the uprobes are in), then makes two
// connections: on each the client sends a request and the server answers
// it, twice; the server reads the second request in two calls, the second
// of which finds its bytes decrypted already and makes no receive. Then
// it prints "done". It builds with Go 1.18 and later: the test builds it
// with older toolchains too.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		panic(err)
	}
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	bufio.NewReader(os.Stdin).ReadString('\n')
	if len(os.Args) > 1 && os.Args[1] == "big" {
		bigWrites(l)
		fmt.Println("done")
		return
	}

	served := serveTwo(l, func(c net.Conn) error {
		for i := 0; i < 2; i++ {
			// One record, one read; then one read of 9 bytes and
			// one of the rest, which finds it decrypted already.
			req := make([]byte, 64)
			size := len(req)
			if i == 1 {
				size = 9
			}
			n, err := c.Read(req[:size])
			if i == 1 && err == nil {
				var m int
				m, err = c.Read(req[n:])
				n += m
			}
			if err != nil {
				return err
			}
			// The second answer is longer than the capture's
			// 256 bytes: a TLS call's plaintext comes whole.
			c.Write([]byte("PONG-GO " + string(req[8:n]) + strings.Repeat(" z", 150*i)))
		}
		return nil
	})
	for n := 0; n < 2; n++ {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			panic(err)
		}
		for i := 0; i < 2; i++ {
			req := fmt.Sprintf("PING-GO conn%d-req%d", n, i)
			c.Write([]byte(req))
			want := "PONG-GO " + req[8:] + strings.Repeat(" z", 150*i)
			resp := make([]byte, 1024)
			m, err := io.ReadAtLeast(c, resp, len(want))
			if err != nil || string(resp[:m]) != want {
				panic(fmt.Sprintf("response %q %v", resp[:m], err))
			}
		}
		c.Close()
	}
	if err := <-served; err != nil {
		panic(err)
	}
	fmt.Println("done")
}

// bigWrites makes two connections whose clients each write 40000 bytes in one
// call (byte i is i%251), the first after HTTP/2's client preface, the
// second without; the server reads all.
func bigWrites(l net.Listener) {
	served := serveTwo(l, func(c net.Conn) error {
		_, err := io.Copy(io.Discard, c)
		return err
	})
	data := make([]byte, 40000)
	for i := range data {
		data[i] = byte(i % 251)
	}
	for n := 0; n < 2; n++ {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			panic(err)
		}
		if n == 0 {
			c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		}
		c.Write(data)
		c.Close()
	}
	if err := <-served; err != nil {
		panic(err)
	}
}

// serveTwo accepts two connections on l, one after the other, and serves
// each with serve; the channel says how it went.
func serveTwo(l net.Listener, serve func(net.Conn) error) <-chan error {
	served := make(chan error)
	go func() {
		for k := 0; k < 2; k++ {
			c, err := l.Accept()
			if err != nil {
				served <- err
				return
			}
			err = serve(c)
			c.Close()
			if err != nil {
				served <- err
				return
			}
		}
		served <- nil
	}()
	return served
}
