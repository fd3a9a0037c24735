package bpf

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/internal/testenv"
)

// resp is a command as a client sends it: an array of bulk strings.
func resp(args ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.String()
}

// readReply reads one RESP reply from r.
func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if len(line) < 3 {
		return "", fmt.Errorf("short reply line %q", line)
	}
	switch line[0] {
	case '$':
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		if n < 0 {
			return line, nil
		}
		b := make([]byte, n+2)
		_, err := io.ReadFull(r, b)
		return line + string(b), err
	case '*':
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		for range max(n, 0) {
			e, err := readReply(r)
			if err != nil {
				return "", err
			}
			line += e
		}
	}
	return line, nil
}

// redisClient talks RESP to a server, one write per call of send.
type redisClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRedis(t *testing.T, port int) *redisClient {
	t.Helper()
	conn, r := dial(t, port)
	return &redisClient{t: t, conn: conn, r: r}
}

// send writes raw (one or more commands) and reads n replies.
func (c *redisClient) send(raw string, n int) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, raw); err != nil {
		c.t.Fatal(err)
	}
	for range n {
		if _, err := readReply(c.r); err != nil {
			c.t.Fatalf("reply to %q: %v", raw, err)
		}
	}
}

// startRedis runs a redis-server neighbour on a free port of the loopback.
func startRedis(t *testing.T) (pid, port int) {
	t.Helper()
	server := testenv.LookPath(t, "redis-server")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %d: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd.Process.Pid, port
}

// expectPayloads checks the payloads of process pid's events that user
// space got since the last take, whole and in order.
func (f *fastEvents) expectPayloads(t *testing.T, pid int, want ...string) []Event {
	t.Helper()
	evs := f.take(pid)
	var got []string
	for _, ev := range evs {
		got = append(got, string(ev.Payload))
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("user space got %q, want %q", got, want)
	}
	return evs
}

// TestRedisDrop: with spans sampled, the kernel drops the commands a Redis
// server in the pod serves that it does not pick for a span, with their
// replies, and sends user space every command that changes how it reads
// the connection: SELECT, a transaction, pipelined commands. After CLIENT
// REPLY or SUBSCRIBE nothing is dropped on the connection.
func TestRedisDrop(t *testing.T) {
	c := loadFast(t, Fast{Redis: true})
	if !c.RedisDrop() {
		t.Fatal("Redis drop not on")
	}
	events := readEvents(c)
	pid, port := startRedis(t)
	rc := dialRedis(t, port)
	seen := func(want ...string) { t.Helper(); events.expectPayloads(t, pid, want...) }

	rc.send(resp("SELECT", "1"), 1)
	seen(resp("SELECT", "1"), "+OK\r\n")
	for i := range 10 {
		rc.send(resp("SET", "k"+strconv.Itoa(i), "v"), 1)
		rc.send(resp("get", "k"+strconv.Itoa(i)), 1)
	}
	rc.send(resp("INCR", "k1"), 1) // an error reply: dropped too
	seen()
	rc.send(resp("MULTI"), 1)
	rc.send(resp("SET", "t", "1"), 1)
	rc.send(resp("EXEC"), 1)
	seen(resp("MULTI"), "+OK\r\n", resp("SET", "t", "1"), "+QUEUED\r\n", resp("EXEC"), "*1\r\n+OK\r\n")
	rc.send(resp("GET", "t"), 1)
	seen()
	// Two commands in one read: user space's, and their replies (one write).
	rc.send(resp("GET", "t")+resp("GET", "t"), 2)
	seen(resp("GET", "t")+resp("GET", "t"), "$1\r\n1\r\n$1\r\n1\r\n")
	rc.send(resp("GET", "t"), 1)
	seen()
	// A value longer than the kernel reads through: user space's.
	long := strings.Repeat("x", 600)
	rc.send(resp("SET", "big", long), 1)
	seen(resp("SET", "big", long)[:512], "+OK\r\n")
	rc.send(resp("PING"), 1)
	seen()
	// A reply larger than Redis writes in one write() (writev): the
	// command after it goes up with FlagLost, and the drop goes on after
	// its reply, a whole write().
	huge := strings.Repeat("h", 40000)
	rc.send(resp("SET", "huge", huge), 1)
	if evs := events.take(pid); len(evs) < 2 || !strings.HasPrefix(string(evs[0].Payload), "*3\r\n$3\r\nSET") ||
		string(evs[len(evs)-1].Payload) != "+OK\r\n" {
		t.Errorf("SET huge: %d events, want the command in its reads, then +OK", len(evs))
	}
	rc.send(resp("GET", "huge"), 1)
	rc.send(resp("GET", "t"), 1)
	evs := events.expectPayloads(t, pid, resp("GET", "t"), "$1\r\n1\r\n")
	if len(evs) > 0 && evs[0].Flags != FlagLost {
		t.Errorf("flags %d, want FlagLost", evs[0].Flags)
	}
	rc.send(resp("GET", "t"), 1)
	seen()
	// The same with a transaction after the large reply: it still counts.
	rc.send(resp("GET", "huge"), 1)
	rc.send(resp("MULTI"), 1)
	rc.send(resp("SET", "t", "2"), 1)
	rc.send(resp("EXEC"), 1)
	rc.send(resp("GET", "t"), 1)
	seen(resp("MULTI"), "+OK\r\n", resp("SET", "t", "2"), "+QUEUED\r\n", resp("EXEC"), "*1\r\n+OK\r\n")
	if stats, _ := c.Stats(); stats.RedisDropped != 28 {
		t.Errorf("%d commands dropped, want 28", stats.RedisDropped)
	}

	// CLIENT REPLY (here ON, which changes nothing) ends the drop on its
	// connection; another connection is not concerned.
	rc.send(resp("CLIENT", "REPLY", "ON"), 1)
	rc.send(resp("GET", "t"), 1)
	seen(resp("CLIENT", "REPLY", "ON"), "+OK\r\n", resp("GET", "t"), "$1\r\n2\r\n")
	tracking := dialRedis(t, port)
	tracking.send(resp("GET", "t"), 1)
	seen()
	tracking.send(resp("CLIENT", "TRACKING", "ON"), 1)
	tracking.send(resp("GET", "t"), 1) // in database 0: none
	seen(resp("CLIENT", "TRACKING", "ON"), "+OK\r\n", resp("GET", "t"), "$-1\r\n")
	sub := dialRedis(t, port)
	sub.send(resp("GET", "t"), 1)
	seen()
	sub.send(resp("SUBSCRIBE", "ch"), 1)
	sub.send(resp("PING"), 1)
	seen(resp("SUBSCRIBE", "ch"), "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", resp("PING"), "*2\r\n$4\r\npong\r\n$0\r\n\r\n")

	// A transaction pipelined whole in one read ends there; one whose
	// read ends with an argument "exec" goes on, and its next command is
	// still the transaction's.
	txc := dialRedis(t, port)
	tx := resp("MULTI") + resp("SET", "t", "3") + resp("EXEC")
	txc.send(tx, 3)
	txc.send(resp("GET", "t"), 1)
	seen(tx, "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n")
	open := resp("MULTI") + resp("SET", "k", "exec")
	txc.send(open, 2)
	txc.send(resp("SET", "t", "4"), 1)
	txc.send(resp("EXEC"), 1)
	txc.send(resp("GET", "t"), 1)
	seen(open, "+OK\r\n+QUEUED\r\n", resp("SET", "t", "4"), "+QUEUED\r\n", resp("EXEC"), "*2\r\n+OK\r\n+OK\r\n")
	if stats, _ := c.Stats(); stats.RedisDropped != 32 {
		t.Errorf("%d commands dropped, want 32", stats.RedisDropped)
	}
}

// TestRedisDropSampling: the kernel picks a share of the commands for
// spans by drawing their trace IDs; those reach user space with the trace
// ID's low half, which the ratio sampler keeps.
func TestRedisDropSampling(t *testing.T) {
	const ratio = 0.25
	c := loadFast(t, Fast{Redis: true, SampleRatio: ratio})
	events := readEvents(c)
	pid, port := startRedis(t)
	rc := dialRedis(t, port)
	const n = 400
	for range n {
		rc.send(resp("GET", "a"), 1)
	}
	var sampled, replies int
	for _, ev := range events.take(pid) {
		switch string(ev.Payload) {
		case resp("GET", "a"):
			sampled++
			if ev.TraceLow == 0 || ev.TraceLow>>1 >= uint64(ratio*(1<<63)) {
				t.Errorf("trace low %x: not one the ratio sampler keeps", ev.TraceLow)
			}
		case "$-1\r\n":
			replies++
		default:
			t.Errorf("unexpected event %q", ev.Payload)
		}
	}
	stats, _ := c.Stats()
	// 100 expected; 60..140 is more than 4 standard deviations (8.7) wide.
	if sampled < 60 || sampled > 140 || replies != sampled || stats.RedisDropped != uint64(n-sampled) {
		t.Errorf("%d of %d commands sampled with %d replies, %d dropped: want about %d, all the rest dropped", sampled, n, replies,
			stats.RedisDropped, int(ratio*n))
	}
}

// gapServer reads a command, and a second one before it answers the
// first (the client pipelines), then answers both in one write, and each
// command after them with "+more".
const gapServer = pythonListener + `
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.recv(4096)
    c.sendall(b"-ERR first\r\n+second\r\n")
    while c.recv(4096):
        c.sendall(b"+more\r\n")
    c.close()
`

// lostServer answers a read of two commands in one write, then a command
// with a reply in two vectors (a sendmsg, which may leave a reply
// unfinished), then each command with "+more".
const lostServer = pythonListener + `
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"-ERR first\r\n+second\r\n")
    c.recv(4096)
    c.sendmsg([b"$5\r\nthi", b"rd\r\n"])
    while c.recv(4096):
        c.sendall(b"+more\r\n")
    c.close()
`

// bigWriteServer answers a command with one write of a 20 000-byte reply,
// then each command with "+more".
const bigWriteServer = pythonListener + `
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"$20000\r\n" + b"x" * 20000 + b"\r\n")
    while c.recv(4096):
        c.sendall(b"+more\r\n")
    c.close()
`

// TestRedisDropGap: a command read before the reply to one the kernel
// dropped goes up flagged FlagGap (the next reply is the dropped one's),
// and the client pipelines: nothing more is dropped on the connection. A
// command read after a send that may not have ended the dropped one's
// reply (a sendmsg, a write of 16 kB or more) goes up flagged FlagLost;
// after its reply, a whole small write, the drop goes on.
func TestRedisDropGap(t *testing.T) {
	c := loadFast(t, Fast{Redis: true})
	events := readEvents(c)

	pid, port := startPythonServer(t, gapServer)
	rc := dialRedis(t, port)
	io.WriteString(rc.conn, resp("GET", "1"))
	time.Sleep(50 * time.Millisecond) // read on its own
	rc.send(resp("GET", "2"), 2)
	rc.send(resp("GET", "3"), 1)
	evs := events.expectPayloads(t, pid, resp("GET", "2"), "-ERR first\r\n+second\r\n", resp("GET", "3"), "+more\r\n")
	if len(evs) > 2 && (evs[0].Flags != FlagGap || evs[2].Flags != 0) {
		t.Errorf("flags %d, %d: want FlagGap, then none", evs[0].Flags, evs[2].Flags)
	}

	for _, server := range []string{lostServer, bigWriteServer} {
		pid, port = startPythonServer(t, server)
		rc = dialRedis(t, port)
		var want []string
		if server == lostServer {
			rc.send(resp("GET", "1")+resp("GET", "2"), 2) // pipelined: user space's
			want = []string{resp("GET", "1") + resp("GET", "2"), "-ERR first\r\n+second\r\n"}
		}
		rc.send(resp("GET", "3"), 1) // dropped, with its reply
		rc.send(resp("GET", "4"), 1)
		rc.send(resp("GET", "5"), 1)
		evs = events.expectPayloads(t, pid, append(want, resp("GET", "4"), "+more\r\n")...)
		if i := len(want); len(evs) > i && evs[i].Flags != FlagLost {
			t.Errorf("flags %d, want FlagLost", evs[i].Flags)
		}
	}
	if stats, _ := c.Stats(); stats.RedisDropped != 5 {
		t.Errorf("%d commands dropped, want 5", stats.RedisDropped)
	}
}

// clientScript connects to the port in its argument, says so, waits for
// a line on its input, then sends 20 commands, each after the reply to
// the one before (20 bytes each).
const clientScript = `
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", flush=True)
sys.stdin.readline()
for i in range(20):
    c.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
    got = b""
    while len(got) < 20:
        got += c.recv(4096)
print("done", flush=True)
`

// TestRedisDropConnectedBefore: connections made before the agent
// started have no role in the kernel. A server's, accepted from a
// listener, still gets the drop; a client's never does, though its
// replies look like commands (an array of bulk strings).
func TestRedisDropConnectedBefore(t *testing.T) {
	testenv.Privileged(t)
	redisPID, redisPort := startRedis(t)
	rc := dialRedis(t, redisPort)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client := exec.Command(testenv.LookPath(t, "python3"), "-c", clientScript, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	stdin, _ := client.StdinPipe()
	stdout, _ := client.StdoutPipe()
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Process.Kill(); client.Wait() })
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	out := bufio.NewReader(stdout)
	if line, _ := out.ReadString('\n'); line != "connected\n" {
		t.Fatalf("client: %q", line)
	}

	c := loadFast(t, Fast{Redis: true})
	events := readEvents(c)
	rc.send(resp("GET", "a"), 1)
	events.expectPayloads(t, redisPID)

	io.WriteString(stdin, "go\n")
	buf := make([]byte, 20)
	for range 20 {
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, resp("SET", "v"))
	}
	if line, _ := out.ReadString('\n'); line != "done\n" {
		t.Fatalf("client: %q", line)
	}
	var want []string
	for range 20 {
		want = append(want, resp("GET", "k"), resp("SET", "v"))
	}
	events.expectPayloads(t, client.Process.Pid, want...)
	if stats, _ := c.Stats(); stats.RedisDropped != 1 {
		t.Errorf("%d commands dropped, want 1", stats.RedisDropped)
	}
}

// TestKernelRedisSpans: with the kernel's spans of Redis commands on and
// every command picked, a command whose shape (its name as sent and its
// arguments' count) the agent registered is not sent: its reply's send is
// one EventRedis record when it is whole and no error, else an
// EventRedisRequest stands for the command before the reply's bytes. A
// command of another shape goes up whole, with its shape's hash.
func TestKernelRedisSpans(t *testing.T) {
	c, events, pid, rc := redisSpans(t, 1)
	// up sends a command and expects it and its reply whole; it returns
	// the command's hash.
	up := func(args ...string) uint64 {
		t.Helper()
		rc.send(resp(args...), 1)
		evs := events.take(pid)
		if len(evs) != 2 || evs[0].Type != EventData || string(evs[0].Payload) != resp(args...) || evs[1].Type != EventData {
			t.Fatalf("%q: events %+v, want it and its reply whole", args, evs)
		}
		if want := RedisShape([]byte(args[0]), len(args)); evs[0].HeadHash != want || evs[0].TraceLow != 0 {
			t.Errorf("%q: hash %x, draw %x; want RedisShape's %x and no draw", args, evs[0].HeadHash, evs[0].TraceLow, want)
		}
		return evs[0].HeadHash
	}
	get := up("GET", "k1")
	if up("GET", "k2") != get || up("get", "k1") == get || up("GET", "k1", "x") == get || up("SET", "k1", "v") == get {
		t.Error("hashes: GET of another key differs, or a lower-case GET, another count or SET does not")
	}
	up("RPUSH", "list", "a")
	rc.send(resp("SET", "big", strings.Repeat("b", 40000)), 1) // in more than one read
	events.take(pid)
	if err := c.AddHead(get); err != nil {
		t.Fatal(err)
	}

	// Records: a value, and no value (a nil reply is no error).
	for _, key := range []string{"k1", "missing"} {
		before := time.Now()
		rc.send(resp("GET", key), 1)
		evs := events.take(pid)
		if len(evs) != 1 || evs[0].Type != EventRedis || evs[0].HeadHash != get || len(evs[0].Payload) != 0 {
			t.Fatalf("GET %s: events %+v, want one record", key, evs)
		}
		if ev := evs[0]; ev.ExitNS < ev.EnterNS || c.WallTime(ev.EnterNS).Before(before.Add(-time.Second)) || ev.PID != uint32(pid) {
			t.Errorf("record %+v", ev)
		}
	}
	// An error reply (WRONGTYPE), and one of more than Redis writes at
	// once: the command's stand-in, then the reply's bytes.
	for _, key := range []string{"list", "big"} {
		rc.send(resp("GET", key), 1)
		evs := events.take(pid)
		if len(evs) < 2 || evs[0].Type != EventRedisRequest || evs[0].HeadHash != get || evs[0].Dir != Ingress {
			t.Fatalf("GET %s: events %+v, want the command's stand-in first", key, evs)
		}
		var reply string
		for _, ev := range evs[1:] {
			if ev.Type != EventData || ev.Dir != Egress {
				t.Fatalf("GET %s: event %+v after the stand-in, want the reply's bytes", key, ev)
			}
			reply += string(ev.Payload[:1])
		}
		if want := map[string]string{"list": "-", "big": "$"}[key]; reply[:1] != want {
			t.Errorf("GET %s: reply starts %q, want %q", key, reply[:1], want)
		}
	}
	// An array (Redis 6 may write part of one in a whole write) and a
	// reply longer than the capture: stand-ins, the replies after them.
	mget := up("MGET", "k1", "k2")
	if err := c.AddHead(mget); err != nil {
		t.Fatal(err)
	}
	rc.send(resp("MGET", "k1", "k2"), 1)
	if evs := events.take(pid); len(evs) != 2 || evs[0].Type != EventRedisRequest || evs[1].Type != EventData || evs[1].Payload[0] != '*' {
		t.Errorf("MGET: events %+v, want its stand-in and its reply", evs)
	}
	rc.send(resp("SET", "long", strings.Repeat("l", 1000)), 1)
	events.take(pid)
	rc.send(resp("GET", "long"), 1)
	if evs := events.take(pid); len(evs) != 2 || evs[0].Type != EventRedisRequest || evs[1].Len != 1000+9 {
		t.Errorf("GET of 1000 bytes: events %+v, want its stand-in and its reply", evs)
	}
	// Two commands in one read are not the kernel's.
	rc.send(resp("GET", "k1")+resp("GET", "k2"), 2)
	if evs := events.take(pid); len(evs) == 0 || evs[0].Type != EventData || !strings.HasPrefix(string(evs[0].Payload), resp("GET", "k1")+resp("GET", "k2")) {
		t.Errorf("pipelined: events %+v, want the commands whole", evs)
	}
	stats, err := c.Stats()
	if err != nil || stats.RedisSpans != 6 || stats.RedisDropped != 0 {
		t.Errorf("stats %+v %v: want 6 commands stood for, none dropped", stats, err)
	}
}

// TestKernelRedisSpansNoDrop: the kernel's spans of Redis commands with
// spans sampled but the drop off (PODTRACER_KERNEL_METRICS=false): no
// command is dropped, whatever the draw.
func TestKernelRedisSpansNoDrop(t *testing.T) {
	c, events, pid, rc := redisSpans(t, 0.5)
	for range 20 {
		rc.send(resp("GET", "k"), 1)
	}
	if evs := events.take(pid); len(evs) != 40 {
		t.Errorf("%d events for 20 commands, want them and their replies", len(evs))
	}
	if stats, err := c.Stats(); err != nil || stats.RedisDropped != 0 {
		t.Errorf("stats %+v %v: want none dropped", stats, err)
	}
}

// redisSpans loads the capture with the kernel's spans of Redis commands
// at ratio, without the drop, and starts a redis-server and a client of
// it.
func redisSpans(t *testing.T, ratio float64) (*Capture, *fastEvents, int, *redisClient) {
	t.Helper()
	c := loadFast(t, Fast{RedisSpans: true, SampleRatio: ratio})
	if !c.RedisSpans() || c.RedisDrop() {
		t.Fatalf("redis spans %v, drop %v: want spans and no drop", c.RedisSpans(), c.RedisDrop())
	}
	events := readEvents(c)
	pid, port := startRedis(t)
	return c, events, pid, dialRedis(t, port)
}

// respServer answers each command with +OK, one send each; after a
// command with "ahead" in it, it reads once more before it answers (the
// client pipelines), and on one with "close" it closes unanswered.
const respServer = pythonListener + `
while True:
    c, _ = s.accept()
    while True:
        data = c.recv(4096)
        if not data or b"close" in data:
            break
        n = 1
        if b"ahead" in data:
            c.recv(4096)
            n = 2
        for _ in range(n):
            c.sendall(b"+OK\r\n")
    c.close()
`

// TestKernelRedisSpansEnds: a command the kernel owns for a span, and a
// command read before its reply (the client pipelines), or a close before
// it: the owned command's stand-in goes first, then what came, and the
// connection's commands are user space's from then on.
func TestKernelRedisSpansEnds(t *testing.T) {
	c := loadFast(t, Fast{RedisSpans: true, SampleRatio: 1})
	events := readEventsOf(c, true)
	pid, port := startPythonServer(t, respServer)
	if err := c.AddHead(RedisShape([]byte("GET"), 2)); err != nil {
		t.Fatal(err)
	}
	types := func() (got []EventType) {
		for _, ev := range events.take(pid) {
			got = append(got, ev.Type)
		}
		return got
	}
	rc := dialRedis(t, port)
	rc.send(resp("GET", "k"), 1)
	if got := types(); len(got) != 1 || got[0] != EventRedis {
		t.Fatalf("events %v, want a record", got)
	}
	// Read ahead: the owned command's stand-in, the next command's bytes,
	// then both replies; then nothing more is the kernel's.
	io.WriteString(rc.conn, resp("GET", "ahead"))
	time.Sleep(50 * time.Millisecond)
	rc.send(resp("GET", "k"), 2)
	if got := types(); len(got) != 4 || got[0] != EventRedisRequest || got[1] != EventData || got[2] != EventData || got[3] != EventData {
		t.Errorf("read ahead: events %v, want the stand-in, the command, two replies", got)
	}
	rc.send(resp("GET", "k"), 1)
	if got := types(); len(got) != 2 || got[0] != EventData {
		t.Errorf("after the read ahead: events %v, want the command and its reply", got)
	}
	// A close before the reply: the stand-in, then the close. (The
	// server takes one connection at a time.)
	rc.conn.Close()
	time.Sleep(50 * time.Millisecond)
	events.take(pid)
	rc2 := dialRedis(t, port)
	io.WriteString(rc2.conn, resp("GET", "close"))
	if _, err := rc2.r.ReadByte(); err != io.EOF {
		t.Fatalf("read after close: %v, want EOF", err)
	}
	var got []EventType
	for _, ev := range events.takeAfter(pid, 2) {
		got = append(got, ev.Type)
	}
	if len(got) != 2 || got[0] != EventRedisRequest || got[1] != EventClose {
		t.Errorf("close: events %v, want the stand-in, then the close %s", got, lossNote(c))
	}
}
