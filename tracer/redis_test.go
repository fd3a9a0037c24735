package tracer

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/bpf"
)

func TestRedisGoRedis(t *testing.T) {
	want := []string{
		"redis HELLO @0 | HELLO ?",
		"redis CLIENT MAINT_NOTIFICATIONS @0 | CLIENT MAINT_NOTIFICATIONS ? ? ? ! ERR ERR unknown subcommand ?. Try CLIENT HELP.",
		"redis CLIENT SETINFO @0 | CLIENT SETINFO ? ? ! ERR ERR unknown subcommand ?. Try CLIENT HELP.",
		"redis CLIENT SETINFO @0 | CLIENT SETINFO ? ? ! ERR ERR unknown subcommand ?. Try CLIENT HELP.",
		"redis SET @0 | SET ? ?",
		"redis GET @0 | GET ?",
		"redis HSET @0 | HSET ? ? ? ? ?",
		"redis HGETALL @0 | HGETALL ?",
		"redis SET @0 | SET ? ?",
		"redis LPUSH @0 | LPUSH ? ? ! WRONGTYPE WRONGTYPE Operation against a key holding the wrong kind of value",
		"redis NOSUCHCMD @0 | NOSUCHCMD ? ! ERR ERR unknown command ?, with args beginning with: ?",
		"redis SET @0 | SET ? ?",
		"redis GET @0 | GET ?",
		"redis DEL @0 | DEL ?",
	}
	checkDBCapture(t, Config{}, "redis-goredis.bin", want, func(capture int, got, want []string) bool {
		// The second of two pipelined CLIENT SETINFO is beyond 64 bytes.
		return capture == 64 && dbSubsequence(got, want, len(want)-1)
	})
}

func TestRedisPipelineAndMulti(t *testing.T) {
	want := []string{
		"redis HELLO @0 | HELLO ?",
		"redis CLIENT SETINFO @0 | CLIENT SETINFO ? ? ! ERR ERR unknown subcommand ?. Try CLIENT HELP.",
		"redis CLIENT SETINFO @0 | CLIENT SETINFO ? ? ! ERR ERR unknown subcommand ?. Try CLIENT HELP.",
		"redis SET @0 | SET ? ?",
		"redis GET @0 | GET ?",
		"redis INCR @0 | INCR ?",
		"redis MULTI INCR @0 | INCR ?; INCR ?",
	}
	checkDBCapture(t, Config{}, "redis-goredis-pipeline.bin", want, func(capture int, got, want []string) bool {
		// Pipelined commands beyond 64 bytes are lost; so is a command
		// of the transaction, which is then only "MULTI".
		return capture == 64 && dbSubsequence(got, append(want[:len(want)-1:len(want)-1], "redis MULTI"), 5)
	})
}

func TestRedisCLI(t *testing.T) {
	want := []string{
		"redis COMMAND DOCS | COMMAND DOCS",
		"redis SET | SET ? ?",
		"redis GET | GET ?",
		"redis MULTI | INCR ?; SET ? ?",
		"redis LPUSH | LPUSH ? ? ! WRONGTYPE WRONGTYPE Operation against a key holding the wrong kind of value",
		"redis HGETALL | HGETALL ?",
		"redis NOSUCH | NOSUCH ? ? ! ERR ERR unknown command ?, with args beginning with: ? ?",
		"redis HELLO | HELLO ?",
		"redis HGETALL | HGETALL ?",
		"redis CLIENT SETINFO | CLIENT SETINFO ? ? ! ERR ERR unknown subcommand ?. Try CLIENT HELP.",
		"redis MGET | MGET ? ?",
		"redis PING | PING",
	}
	checkDBCapture(t, Config{}, "redis-cli.bin", want, nil)
}

func TestRedisInlineSubscribeBenchmark(t *testing.T) {
	checkDBCapture(t, Config{}, "redis-inline.bin", []string{"redis PING | PING", "redis SET | SET ? ?", "redis GET | GET ?"}, nil)
	checkDBCapture(t, Config{}, "redis-subscribe.bin", []string{"redis SUBSCRIBE | SUBSCRIBE ? ?"}, func(capture int, got, want []string) bool {
		return capture == 64 && len(got) == 0 // the second confirmation is cut
	})
	var sets []string
	for range 20 {
		sets = append(sets, "redis SET | SET ? ?")
	}
	checkDBCapture(t, Config{}, "redis-benchmark.bin", sets, func(capture int, got, want []string) bool {
		// Five SETs of 45 bytes a write: those beyond the prefix are lost.
		return capture < 256 && dbSubsequence(got, want, 4*(capture/45))
	})
}

// respCmd builds a command as clients send it.
func respCmd(args ...string) string {
	s := fmt.Sprintf("*%d\r\n", len(args))
	for _, a := range args {
		s += fmt.Sprintf("$%d\r\n%s\r\n", len(a), a)
	}
	return s
}

func redisRun(t *testing.T, cfg Config, steps ...string) []string {
	h := newDBHarness(t, 4096, cfg)
	for i, s := range steps {
		dir := out
		if i%2 == 1 {
			dir = in
		}
		if s != "" {
			h.send(1, dir, s)
		}
	}
	got := dbSummaries(h.got)
	return got
}

func TestRedisQueryTextAndKeys(t *testing.T) {
	steps := []string{
		respCmd("HELLO", "3", "AUTH", "default", "s3cret"), "%1\r\n+proto\r\n:3\r\n",
		respCmd("SET", "user:1", "alice smith"), "+OK\r\n",
		respCmd("auth", "s3cret"), "+OK\r\n",
		respCmd("CONFIG", "SET", "requirepass", "s3cret"), "+OK\r\n",
		respCmd("SELECT", "2"), "+OK\r\n",
		respCmd("GET", "\xff\x00bin"), "_\r\n",
	}
	dbDiff(t, "sanitized", redisRun(t, Config{}, steps...), []string{
		"redis HELLO @0 | HELLO ? ? ? ?",
		"redis SET @0 | SET ? ?",
		"redis AUTH @0 | AUTH ?",
		"redis CONFIG SET @0 | CONFIG SET ? ?",
		"redis SELECT @0 | SELECT ?",
		"redis GET @2 | GET ?",
	})
	dbDiff(t, "keys", redisRun(t, Config{RedisKeys: true}, steps...), []string{
		"redis HELLO @0 | HELLO ? ? ? ?",
		"redis SET @0 | SET user:1 ?",
		"redis AUTH @0 | AUTH ?",
		"redis CONFIG SET @0 | CONFIG SET ? ?",
		"redis SELECT @0 | SELECT ?",
		"redis GET @2 | GET \"\\xff\\x00bin\"",
	})
	dbDiff(t, "full", redisRun(t, Config{QueryText: QueryFull}, steps...), []string{
		"redis HELLO @0 | HELLO 3 AUTH ? ?",
		"redis SET @0 | SET user:1 \"alice smith\"",
		"redis AUTH @0 | AUTH ?",
		"redis CONFIG SET @0 | CONFIG SET requirepass ?",
		"redis SELECT @0 | SELECT 2",
		"redis GET @2 | GET \"\\xff\\x00bin\"",
	})
	dbDiff(t, "off", redisRun(t, Config{QueryText: QueryOff, RedisKeys: true}, steps[2:4]...), []string{"redis SET"})
}

func TestRedisRESP3PushesAttributesAndReplyOff(t *testing.T) {
	got := redisRun(t, Config{},
		respCmd("GET", "a"), ">3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nb\r\n\r\n|1\r\n+ttl\r\n:3\r\n$1\r\nx\r\n",
		respCmd("CLIENT", "REPLY", "OFF")+respCmd("SET", "a", "1"), "",
		respCmd("CLIENT", "REPLY", "ON"), "+OK\r\n",
		respCmd("SUBSCRIBE", "a", "b"), ">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n>3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n",
		"", ">3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
		respCmd("PING"), "+PONG\r\n",
	)
	dbDiff(t, "resp3", got, []string{
		"redis GET | GET ?",
		"redis CLIENT REPLY | CLIENT REPLY ?",
		"redis SUBSCRIBE | SUBSCRIBE ? ?",
		"redis PING | PING",
	})
}

// TestRedisPubsubEnds: after its last UNSUBSCRIBE a RESP2 connection is
// out of pubsub mode, and a reply whose first element is "message" (an
// HKEYS of such a field) answers its command instead of being taken for
// a pubsub message, which left every later reply one command behind.
func TestRedisPubsubEnds(t *testing.T) {
	for _, c := range []struct {
		name  string
		steps []string
		want  []string
	}{{
		"pubsub ended",
		[]string{
			respCmd("SUBSCRIBE", "ch"), "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
			respCmd("UNSUBSCRIBE", "ch"), "*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n",
			respCmd("HKEYS", "notif"), "*2\r\n$7\r\nmessage\r\n$4\r\nuser\r\n",
			respCmd("GET", "k"), "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
			respCmd("PING"), "+PONG\r\n",
		},
		[]string{
			"redis SUBSCRIBE | SUBSCRIBE ?",
			"redis UNSUBSCRIBE | UNSUBSCRIBE ?",
			"redis HKEYS | HKEYS ?",
			"redis GET | GET ? ! WRONGTYPE WRONGTYPE Operation against a key holding the wrong kind of value",
			"redis PING | PING",
		},
	}, {
		// Still subscribed to one channel: a message stays a message.
		"still subscribed",
		[]string{
			respCmd("SUBSCRIBE", "a", "b"), "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
			respCmd("UNSUBSCRIBE", "a"), "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$2\r\nhi\r\n",
			respCmd("PING"), "*2\r\n$4\r\npong\r\n$0\r\n\r\n",
		},
		[]string{"redis SUBSCRIBE | SUBSCRIBE ? ?", "redis UNSUBSCRIBE | UNSUBSCRIBE ?", "redis PING | PING"},
	}, {
		// Redis counts shard channels apart: the last UNSUBSCRIBE's 0 leaves
		// the SSUBSCRIBE's channel, and the connection still subscribed.
		"shard channel left",
		[]string{
			respCmd("SSUBSCRIBE", "s"), "*3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n",
			respCmd("SUBSCRIBE", "a"), "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
			respCmd("UNSUBSCRIBE", "a"), "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n*3\r\n$8\r\nsmessage\r\n$1\r\ns\r\n$2\r\nhi\r\n",
			respCmd("PING"), "*2\r\n$4\r\npong\r\n$0\r\n\r\n",
		},
		[]string{"redis SSUBSCRIBE | SSUBSCRIBE ?", "redis SUBSCRIBE | SUBSCRIBE ?", "redis UNSUBSCRIBE | UNSUBSCRIBE ?", "redis PING | PING"},
	}} {
		dbDiff(t, c.name, redisRun(t, Config{}, c.steps...), c.want)
	}
}

func TestRedisTransactionErrors(t *testing.T) {
	got := redisRun(t, Config{},
		respCmd("MULTI")+respCmd("SET", "a", "1")+respCmd("LPUSH", "a", "x")+respCmd("EXEC"),
		"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
		respCmd("MULTI")+respCmd("SET", "a"), "+OK\r\n-ERR wrong number of arguments for 'set' command\r\n",
		respCmd("EXEC"), "-EXECABORT Transaction discarded because of previous errors.\r\n",
		respCmd("WATCH", "k")+respCmd("MULTI")+respCmd("INCR", "k")+respCmd("INCR", "k"), "+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n",
		respCmd("EXEC"), "*-1\r\n",
	)
	dbDiff(t, "transactions", got, []string{
		"redis MULTI | SET ? ?; LPUSH ? ? ! WRONGTYPE WRONGTYPE Operation against a key holding the wrong kind of value",
		"redis MULTI SET | SET ? ! ERR ERR wrong number of arguments for ? command",
		"redis WATCH | WATCH ?",
		"redis MULTI INCR | INCR ?; INCR ?",
	})
}

func TestRedisBounded(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	for range 3000 {
		h.send(1, out, respCmd("GET", "k"))
	}
	h.send(1, out, respCmd("MULTI"))
	for range 3000 {
		h.send(1, out, respCmd("INCR", "k"))
	}
	c := h.tracer.conns[connKey{pid: 7, sock: 1}].parser.(*redisConn)
	if len(c.pending) > redisMaxPending+1 || len(c.tx.ops) > redisMaxTxOps {
		t.Errorf("%d pending, %d transaction commands", len(c.pending), len(c.tx.ops))
	}
	// A reply nested deeper than the bound loses the stream, it does not
	// grow it.
	h.send(1, in, strings.Repeat("*1\r\n", 100000))
	if len(c.reps.stack) > redisMaxDepth {
		t.Errorf("reply stack %d deep", len(c.reps.stack))
	}
}

// More commands in flight than the tracer remembers: those it forgets
// still take their replies, so later pairs stay right.
func TestRedisOverflowKeepsPairing(t *testing.T) {
	var cmds, reps []string
	for i := range 2 * redisMaxPending {
		cmds = append(cmds, respCmd("GET", fmt.Sprint("k", i)))
		reps = append(reps, fmt.Sprintf("$%d\r\nv%d\r\n", len(fmt.Sprint(i))+1, i))
	}
	// Written and read in segments the capture sees whole.
	var steps []string
	for i := 0; i < len(cmds); i += 100 {
		steps = append(steps, strings.Join(cmds[i:min(i+100, len(cmds))], ""), "")
	}
	for i := 0; i < len(reps); i += 100 {
		steps = append(steps, "", strings.Join(reps[i:min(i+100, len(reps))], ""))
	}
	got := redisRun(t, Config{RedisKeys: true}, append(steps, respCmd("PING"), "+PONG\r\n")...)
	if len(got) != redisMaxPending+1 || got[0] != "redis GET | GET k0" || got[len(got)-1] != "redis PING | PING" {
		t.Errorf("%d requests, first %q, last %q", len(got), got[0], got[len(got)-1])
	}
}

// TestRedisKernelDrop: a server's commands the kernel dropped leave no
// trace but the flags on what follows. FlagGap: the first reply answers
// the dropped command, not the one carrying the flag. FlagLost: the rest
// of a dropped command's reply comes first and is not parsed; the command
// is answered when the client sends the next. A command the kernel picked
// keeps the kernel's draw for its trace ID.
func TestRedisKernelDrop(t *testing.T) {
	h := newDBHarness(t, 4096, Config{RedisKeys: true})
	h.sendKernel(1, in, respCmd("GET", "picked"), 0xabc, 0)
	h.send(1, out, "$1\r\nv\r\n")
	// GET a was dropped; GET b was read before its reply.
	h.sendKernel(1, in, respCmd("GET", "b"), 0, bpf.FlagGap)
	h.send(1, out, "-ERR dropped\r\n$1\r\nb\r\n")
	// GET c was dropped and its reply cut short; GET d was read after.
	h.sendKernel(1, in, respCmd("GET", "d"), 0, bpf.FlagLost)
	h.send(1, out, ":1\r\n:2\r\n") // the rest of c's reply: parses as replies
	h.send(1, out, "$-1\r\n")      // d's
	dEnd := h.now
	h.send(1, in, respCmd("GET", "e"))
	h.send(1, out, "-ERR e\r\n")
	got := dbSummaries(h.got)
	want := []string{"redis GET | GET picked", "redis GET | GET b", "redis GET | GET d", "redis GET | GET e ! ERR ERR e"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if h.got[0].TraceIDLow != 0xabc || h.got[1].TraceIDLow != 0 {
		t.Errorf("trace ID low halves %x, %x: want the kernel's draw, then none", h.got[0].TraceIDLow, h.got[1].TraceIDLow)
	}
	if end := uint64(h.got[2].End.UnixNano()); end != dEnd {
		t.Errorf("GET d ends at %d, want %d: its reply's end", end, dEnd)
	}
	// A command after a lost reply, and the connection closes before the
	// client sends another: it ends with the reply that came after it.
	h.sendKernel(1, in, respCmd("GET", "f"), 0, bpf.FlagLost)
	h.send(1, out, "$-1\r\n")
	fEnd := h.now
	h.close(1)
	if len(h.got) != 5 || dbSummary(h.got[4]) != "redis GET | GET f" || uint64(h.got[4].End.UnixNano()) != fEnd {
		t.Errorf("after a lost reply and a close: %d requests, want GET f ending at %d", len(h.got), fEnd)
	}
}

// TestRedisIdleKeepsDatabase: a server connection that selected a
// database is not forgotten after the usual idle time, since the kernel
// may be dropping its commands; its spans keep db.namespace.
func TestRedisIdleKeepsDatabase(t *testing.T) {
	h := newDBHarness(t, 4096, Config{})
	h.send(1, in, respCmd("SELECT", "2"))
	h.send(1, out, "+OK\r\n")
	h.send(2, in, respCmd("PING")) // another connection, whose events drive the sweep
	h.send(2, out, "+PONG\r\n")
	h.idleFor(5*time.Minute, 2, in, respCmd("PING"), "+PONG\r\n")
	h.send(1, in, respCmd("GET", "k"))
	h.send(1, out, "$-1\r\n")
	last := h.got[len(h.got)-1]
	if last.DBOperation != "GET" || last.DBNamespace != "2" {
		t.Errorf("after 5 idle minutes: %s, want GET in database 2", dbSummary(last))
	}
}

// exitedProcesses are processes that have all exited (Alive false).
type exitedProcesses struct{ allProcesses }

func (exitedProcesses) Alive(uint32) bool { return false }

// TestIdleOfExitedProcessForgotten: the stateful connection of a process
// that exited (its close unseen: the syscall hooks miss the closes of an
// exit) is forgotten at the usual idle timeout, not kept 30 minutes.
func TestIdleOfExitedProcessForgotten(t *testing.T) {
	for _, exited := range []bool{true, false} {
		h := newDBHarness(t, 4096, Config{})
		var procs Processes = allProcesses{} // no Alive: the control, kept
		if exited {
			procs = exitedProcesses{}
		}
		h.tracer = New(Config{}, procs, h.tracer.wall, h.tracer.emit)
		h.send(1, in, respCmd("SELECT", "2"))
		h.send(1, out, "+OK\r\n")
		h.idleFor(5*time.Minute, 2, in, respCmd("PING"), "+PONG\r\n")
		if _, ok := h.tracer.conns[connKey{pid: 7, sock: 1}]; ok == exited {
			t.Errorf("exited %v: the idle stateful connection followed: %v", exited, ok)
		}
		if _, ok := h.tracer.conns[connKey{pid: 7, sock: 2}]; !ok {
			t.Error("the active connection was forgotten")
		}
	}
}

// A connection older than the agent may show a reply first: an array of
// bulk strings (a pubsub message, SMEMBERS' members) or a subscription's
// confirmation. It is not taken for a command, which would make the
// client the server for the connection's life, and the replies' values
// the spans' operations.
func TestRedisJoinedAtReply(t *testing.T) {
	for name, first := range map[string]string{
		"message":      "*3\r\n$7\r\nmessage\r\n$6\r\norders\r\n$5\r\nhello\r\n",
		"members":      "*2\r\n$5\r\nalice\r\n$3\r\nbob\r\n",
		"confirmation": "*3\r\n$9\r\nsubscribe\r\n$6\r\norders\r\n:1\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			h := newDBHarness(t, 1024, Config{})
			h.send(1, in, first)
			for range 2 {
				h.send(1, out, respCmd("GET", "k"))
				h.send(1, in, "$5\r\nhello\r\n")
				h.send(1, out, respCmd("set", "k", "v"))
				h.send(1, in, "+OK\r\n")
			}
			var got []string
			for _, r := range h.got {
				got = append(got, r.Role.String()+" "+dbSummary(r))
			}
			want := []string{"client redis GET | GET ?", "client redis SET | SET ? ?", "client redis GET | GET ?", "client redis SET | SET ? ?"}
			if !slices.Equal(got, want) {
				t.Errorf("spans:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// An UNSUBSCRIBE of every channel is confirmed once per channel: after the
// last, the connection is out of pubsub mode, and an array reply whose
// first element is "message" answers its command.
func TestRedisUnsubscribeAll(t *testing.T) {
	h := newDBHarness(t, 1024, Config{})
	h.send(1, out, respCmd("SUBSCRIBE", "a", "b"))
	h.send(1, in, "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n")
	h.send(1, out, respCmd("UNSUBSCRIBE"))
	h.send(1, in, "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n")
	h.send(1, out, respCmd("LRANGE", "l", "0", "-1"))
	h.send(1, in, "*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$1\r\ny\r\n")
	h.send(1, out, respCmd("GET", "k"))
	h.send(1, in, "$1\r\nv\r\n")
	got := dbSummaries(h.got)
	want := []string{"redis SUBSCRIBE | SUBSCRIBE ? ?", "redis UNSUBSCRIBE | UNSUBSCRIBE", "redis LRANGE | LRANGE ? ? ?", "redis GET | GET ?"}
	if !slices.Equal(got, want) {
		t.Errorf("spans:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestRedisCommandStart(t *testing.T) {
	for in, want := range map[string]bool{
		respCmd("GET", "k"):                          true,
		respCmd("get", "k"):                          true,
		respCmd("SENTINEL", "masters"):               true,
		respCmd("FT.SEARCH", "idx", "*"):             true,
		"*2\r\n$3\r\nGET\r\n":                        true, // the key in a later segment
		"*1\r\n":                                     false,
		"*2\r\n":                                     false,
		respCmd("alice", "bob"):                      false,
		"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n": false,
		"PING\r\n":                                   true,
	} {
		if got := redisCommandStart([]byte(in)); got != want {
			t.Errorf("redisCommandStart(%q) = %v, want %v", in, got, want)
		}
	}
}
