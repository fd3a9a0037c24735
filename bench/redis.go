package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// The Redis workload: redis-server, asked GET of one key that holds a
// 13-byte value, by redis-benchmark at saturation and by the load
// generator at a fixed rate. Without -r, redis-benchmark's key is the
// literal "key:__rand_int__", so that is the key both read.
const redisKey = "key:__rand_int__"

// redisCommand encodes a command as RESP, an array of bulk strings.
func redisCommand(args ...string) []byte {
	b := fmt.Appendf(nil, "*%d\r\n", len(args))
	for _, a := range args {
		b = fmt.Appendf(b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b
}

// redisSeed stores the value redisKey holds. It runs before the agent
// starts, so it is not traced.
func redisSeed(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(redisCommand("SET", redisKey, string(hello))); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if ok, size, err := parseRedisReply(buf[:n]); err != nil || !ok || size != n {
		return fmt.Errorf("SET %s: %q", redisKey, buf[:n])
	}
	return nil
}

// parseRedisReply looks for one whole RESP2 reply at the start of b. It
// returns whether it is not an error reply, and its size, or size 0 if b
// does not hold all of it yet.
func parseRedisReply(b []byte) (ok bool, size int, err error) {
	line, _, found := bytes.Cut(b, []byte("\r\n"))
	if !found {
		if len(b) > 4096 {
			return false, 0, errors.New("reply line too long")
		}
		return false, 0, nil
	}
	if len(line) == 0 {
		return false, 0, errors.New("empty reply line")
	}
	size = len(line) + 2
	switch line[0] {
	case '+', ':':
		return true, size, nil
	case '-':
		return false, size, nil
	case '$', '*':
		n, err := strconv.Atoi(string(line[1:]))
		if err != nil {
			return false, 0, fmt.Errorf("bad reply line %q", line)
		}
		if n < 0 { // nil
			return true, size, nil
		}
		if line[0] == '$' {
			if len(b) < size+n+2 {
				return true, 0, nil
			}
			return true, size + n + 2, nil
		}
		for range n {
			_, m, err := parseRedisReply(b[size:])
			if err != nil || m == 0 {
				return true, 0, err
			}
			size += m
		}
		return true, size, nil
	}
	return false, 0, fmt.Errorf("bad reply line %q", line)
}

// redisBenchmark runs redis-benchmark's GET test on addr with conns
// connections and no pipelining, for n requests: it has no duration.
func redisBenchmark(addr string, conns int, n uint64) (*loadRun, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	out, cpu, err := runLoader("redis-benchmark", exec.Command("redis-benchmark", "-h", host, "-p", port, "-t", "get",
		"-c", strconv.Itoa(conns), "-n", strconv.FormatUint(n, 10), "-P", "1", "--csv"))
	if err != nil {
		return nil, err
	}
	// "test","rps","avg_latency_ms",...
	// "GET","71022.73","0.240",...
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 2 || f[0] != `"GET"` {
			continue
		}
		rate, err := strconv.ParseFloat(strings.Trim(f[1], `"`), 64)
		if err != nil || rate <= 0 {
			break
		}
		return &loadRun{served: n, rate: rate, cpu: cpu}, nil
	}
	return nil, fmt.Errorf("redis-benchmark said:\n%s", out)
}
