package main

import (
	"fmt"
	"math"
	"runtime"
	"syscall"
	"time"
)

// The pingpong role times a small HTTP/1.1 exchange over a loopback TCP
// connection within one thread: the client writes a request, the server
// reads it and writes a response, the client reads it. Blocking sockets
// and raw syscalls, so that each round trip is exactly two sends and two
// receives: with the agent loaded, the difference is what the kernel
// programs cost per socket call, inside the pod (traced) or outside it
// (filtered out).
func pingpongMain(args []string) error {
	ns, err := socketRoundTrip(100000)
	if err != nil {
		return err
	}
	fmt.Printf("%.0f\n", ns)
	return nil
}

var (
	pingRequest  = []byte("GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	pingResponse = []byte("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
)

// socketRoundTrip returns the best of 5 runs of n round trips, in ns per
// round trip.
func socketRoundTrip(n int) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	client, server, err := loopbackPair()
	if err != nil {
		return 0, err
	}
	defer syscall.Close(client)
	defer syscall.Close(server)
	buf := make([]byte, 4096)
	best := math.Inf(1)
	for range 5 {
		t := time.Now()
		for range n {
			if err := exchange(client, server, pingRequest, buf); err != nil {
				return 0, err
			}
			if err := exchange(server, client, pingResponse, buf); err != nil {
				return 0, err
			}
		}
		best = min(best, float64(time.Since(t))/float64(n))
	}
	return best, nil
}

// exchange writes msg on from and reads all of it on to.
func exchange(from, to int, msg, buf []byte) error {
	if _, err := syscall.Write(from, msg); err != nil {
		return err
	}
	for got := 0; got < len(msg); {
		n, err := syscall.Read(to, buf)
		if err != nil || n <= 0 {
			return fmt.Errorf("read: %v", err)
		}
		got += n
	}
	return nil
}

// loopbackPair returns the two ends of a TCP connection on 127.0.0.1, with
// Nagle off so that each write is sent at once.
func loopbackPair() (client, server int, err error) {
	l, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, 0, err
	}
	defer syscall.Close(l)
	if err := syscall.Bind(l, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return 0, 0, err
	}
	if err := syscall.Listen(l, 1); err != nil {
		return 0, 0, err
	}
	sa, err := syscall.Getsockname(l)
	if err != nil {
		return 0, 0, err
	}
	if client, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0); err != nil {
		return 0, 0, err
	}
	if err := syscall.Connect(client, sa); err != nil {
		syscall.Close(client)
		return 0, 0, err
	}
	if server, _, err = syscall.Accept(l); err != nil {
		syscall.Close(client)
		return 0, 0, err
	}
	for _, fd := range []int{client, server} {
		syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	}
	return client, server, nil
}
