package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// loadResult is what one open-loop run measured.
type loadResult struct {
	Scheduled  uint64  `json:"scheduled"`  // requests due within the run
	Completed  uint64  `json:"completed"`  // responses read in full
	Errors     uint64  `json:"errors"`     // connections that failed
	Failed     uint64  `json:"failed"`     // responses that were not 2xx, or Redis errors
	Backlogged uint64  `json:"backlogged"` // requests that found no idle connection
	Rate       float64 `json:"rate"`       // completed per second of the run
	P50        float64 `json:"p50_us"`
	P90        float64 `json:"p90_us"`
	P99        float64 `json:"p99_us"`
	P999       float64 `json:"p999_us"`
	Max        float64 `json:"max_us"`
}

// loadMain is an open-loop load generator: requests are due at a fixed
// rate whatever the server does, and latency is measured from when a request
// was due, not from when it could be sent (no coordinated omission). A
// request that finds every connection busy waits for the first one free, and
// that wait is part of its latency. Debian's wrk has no fixed-rate mode,
// and redis-benchmark no rate limit, hence this. A request is an HTTP/1.1
// GET of -path, or with -proto resp the Redis command GET redisKey.
//
// It is one thread around epoll, like wrk, so that it costs the two cores
// little: a timerfd wakes it when the next request is due (Go's own timers
// wake up to a millisecond late on an idle machine, which would turn a
// steady rate into bursts), and each response costs one read.
func loadMain(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "server address")
	path := fs.String("path", "/", "request path (http)")
	proto := fs.String("proto", "http", "protocol: http (HTTP/1.1 GET) or resp (Redis GET)")
	rate := fs.Float64("rate", 5000, "requests per second")
	nconns := fs.Int("conns", 32, "keep-alive connections")
	duration := fs.Duration("duration", 5*time.Second, "how long requests are sent")
	fs.DurationVar(&loadTick, "tick", loadTick, "shortest sleep between sends; requests due within it are sent together")
	traceparent := fs.Bool("traceparent", false, "HTTP requests carry a sampled traceparent, a new trace ID and parent span ID each")
	fs.Parse(args)
	var request []byte
	var parse func([]byte) (bool, int, error)
	switch *proto {
	case "http":
		request = fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: podtracer-bench\r\n", *path, *addr)
		if *traceparent {
			traceAt = len(request) + len("traceparent: 00-")
			request = fmt.Appendf(request, "traceparent: %s\r\n", benchTraceparent)
		}
		request = append(request, "\r\n"...)
		parse = parseResponse
	case "resp":
		request, parse = redisCommand("GET", redisKey), parseRedisReply
	default:
		return fmt.Errorf("-proto: unknown %q (http, resp)", *proto)
	}
	res, err := runLoad(*addr, request, parse, *rate, *nconns, *duration)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// loadTick is the shortest sleep of the schedule.
var loadTick time.Duration

// traceAt is where the trace ID starts in the HTTP request, 0 when it has
// no traceparent.
var traceAt int

// benchTraceparent is the traceparent of the bench's traced requests
// (wrk's, all of them; loadgen's first): sampled.
const benchTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// loadConn is one keep-alive connection. It carries at most one request at
// a time (no pipelining).
type loadConn struct {
	fd   int
	busy bool
	due  int64  // monotonic ns the request in flight was due
	buf  []byte // response bytes read so far
}

// runLoad sends request at rate over nconns connections for duration.
// parse finds one whole response at the start of what a connection read,
// and says whether it reports success; its size is 0 while incomplete.
func runLoad(addr string, request []byte, parse func([]byte) (ok bool, size int, err error), rate float64, nconns int, duration time.Duration) (*loadResult, error) {
	if rate <= 0 || nconns <= 0 {
		return nil, errors.New("rate and conns must be positive")
	}
	runtime.LockOSThread()
	unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	ta, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, err
	}
	sa := &unix.SockaddrInet4{Port: ta.Port}
	copy(sa.Addr[:], ta.IP.To4())

	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer unix.Close(epfd)
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer unix.Close(tfd)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, tfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(tfd)}); err != nil {
		return nil, err
	}
	conns := map[int32]*loadConn{}
	idle := make([]*loadConn, 0, nconns)
	for range nconns {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, sa); err != nil {
			return nil, fmt.Errorf("connect %s: %w", addr, err)
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if err := unix.SetNonblock(fd, true); err != nil {
			return nil, err
		}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			return nil, err
		}
		c := &loadConn{fd: fd, buf: make([]byte, 0, 64<<10)}
		conns[int32(fd)] = c
		idle = append(idle, c)
	}

	// Monotonic clock: base is CLOCK_MONOTONIC at t0, so time.Since(t0)
	// (vDSO, no syscall) converts to it.
	var ts unix.Timespec
	t0 := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, err
	}
	base := ts.Nano()
	now := func() int64 { return base + int64(time.Since(t0)) }

	total := uint64(rate * duration.Seconds())
	res := &loadResult{Scheduled: total}
	lat := make([]int64, 0, total)
	var backlog []int64 // due times of requests waiting for a connection
	outstanding := 0
	dead := func(c *loadConn) {
		res.Errors++
		if c.busy {
			outstanding--
		}
		unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
		delete(conns, int32(c.fd))
	}
	var sent uint64
	send := func(c *loadConn, due int64) {
		c.busy, c.due = true, due
		outstanding++
		if traceAt > 0 {
			// A trace of its own: the trace ID's last 16 hex digits and
			// the parent span ID are the request's number.
			sent++
			hex.Encode(request[traceAt+16:traceAt+32], binary.BigEndian.AppendUint64(nil, sent))
			hex.Encode(request[traceAt+33:traceAt+49], binary.BigEndian.AppendUint64(nil, sent))
		}
		if n, err := unix.Write(c.fd, request); err != nil || n != len(request) {
			dead(c)
		}
	}
	start := now() + int64(time.Millisecond)
	interval := float64(time.Second) / rate
	due := func(i uint64) int64 { return start + int64(float64(i)*interval) }
	finish := start + int64(duration) + int64(5*time.Second) // for the last responses
	var next uint64
	armed := ^uint64(0)
	events := make([]unix.EpollEvent, 64)
	var scratch [8]byte
	for {
		t := now()
		for ; next < total && due(next) <= t; next++ {
			if n := len(idle); n > 0 {
				c := idle[n-1]
				idle = idle[:n-1]
				send(c, due(next))
			} else {
				backlog = append(backlog, due(next))
				res.Backlogged++
			}
		}
		if next == total && outstanding == 0 && len(backlog) == 0 || len(conns) == 0 || t > finish {
			break
		}
		timeout := -1
		if next < total && armed != next {
			spec := unix.ItimerSpec{Value: unix.NsecToTimespec(max(due(next), t+int64(loadTick)))}
			if err := unix.TimerfdSettime(tfd, unix.TFD_TIMER_ABSTIME, &spec, nil); err != nil {
				return nil, err
			}
			armed = next
		} else if next == total {
			timeout = int((finish-t)/int64(time.Millisecond)) + 1
		}
		n, err := unix.EpollWait(epfd, events, timeout)
		if err != nil && err != unix.EINTR {
			return nil, err
		}
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == tfd {
				unix.Read(tfd, scratch[:])
				continue
			}
			c := conns[ev.Fd]
			if c == nil {
				continue
			}
			m, err := unix.Read(c.fd, c.buf[len(c.buf):cap(c.buf)])
			if err == unix.EAGAIN {
				continue
			}
			if err != nil || m == 0 {
				dead(c)
				continue
			}
			c.buf = c.buf[:len(c.buf)+m]
			for c.busy {
				ok, size, err := parse(c.buf)
				if err != nil {
					dead(c)
					break
				}
				if size == 0 {
					break // incomplete
				}
				lat = append(lat, now()-c.due)
				res.Completed++
				if !ok {
					res.Failed++
				}
				c.buf = c.buf[:copy(c.buf, c.buf[size:])]
				c.busy = false
				outstanding--
				if len(backlog) > 0 {
					send(c, backlog[0])
					backlog = backlog[1:]
				} else {
					idle = append(idle, c)
				}
			}
		}
	}
	end := start + int64(duration)
	elapsed := float64(max(now(), end)-start) / 1e9
	res.Rate = float64(res.Completed) / elapsed
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(p float64) float64 { return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / 1e3 }
		res.P50, res.P90, res.P99, res.P999 = q(0.50), q(0.90), q(0.99), q(0.999)
		res.Max = float64(lat[len(lat)-1]) / 1e3
	}
	return res, nil
}

// parseResponse looks for one whole HTTP/1.1 response with a Content-Length
// body at the start of b. It returns whether its status is 2xx, and its
// size, or size 0 if b does not hold all of it yet.
func parseResponse(b []byte) (ok bool, size int, err error) {
	head := bytes.Index(b, []byte("\r\n\r\n"))
	if head < 0 {
		if len(b) > 32<<10 {
			return false, 0, errors.New("response head too long")
		}
		return false, 0, nil
	}
	line, rest, _ := bytes.Cut(b[:head+2], []byte("\r\n"))
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return false, 0, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return false, 0, fmt.Errorf("bad status line %q", line)
	}
	ok = status/100 == 2
	length := -1
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if name, value, ok := bytes.Cut(h, []byte(":")); ok && bytes.EqualFold(name, []byte("Content-Length")) {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(value))); err != nil {
				return false, 0, fmt.Errorf("bad content-length %q", value)
			}
		}
	}
	if length < 0 {
		return false, 0, errors.New("response without content-length")
	}
	if len(b) < head+4+length {
		return ok, 0, nil
	}
	return ok, head + 4 + length, nil
}
