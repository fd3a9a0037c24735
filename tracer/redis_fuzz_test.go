package tracer

import "testing"

func FuzzRedis(f *testing.F) {
	dbFuzzSeeds(f, "redis-goredis.bin")
	dbFuzzSeeds(f, "redis-cli.bin")
	dbFuzzSeeds(f, "redis-goredis-pipeline.bin")
	f.Add([]byte("*3\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nEXEC\r\nPING\r\n"), []byte(">2\r\n+a\r\n|1\r\n+k\r\n:1\r\n%1\r\n!3\r\nERR\r\n=5\r\ntxt:x\r\n"), uint8(3), uint16(20), uint8(4))
	open := respCmd("HELLO", "3")
	f.Fuzz(func(t *testing.T, reqs, resps []byte, cut uint8, capture uint16, flags uint8) {
		dbFuzz(t, ProtoRedis, open, true, dbFuzzInput{reqs, resps, cut, capture, flags}, func(t *testing.T, p protocolParser) {
			c, ok := p.(*redisConn)
			if !ok {
				return
			}
			if len(c.pending) > redisMaxPending || len(c.reps.stack) > redisMaxDepth || len(c.cmds.args) > redisMaxArgs ||
				len(c.cmds.lines.line) > redisMaxLine || len(c.reps.lines.line) > redisMaxLine {
				t.Fatalf("unbounded: %d pending, %d deep, %d args", len(c.pending), len(c.reps.stack), len(c.cmds.args))
			}
			for _, a := range c.cmds.args {
				if len(a) > redisMaxArgBytes {
					t.Fatalf("argument of %d bytes kept", len(a))
				}
			}
			if c.tx != nil && len(c.tx.ops) > redisMaxTxOps {
				t.Fatalf("transaction of %d commands kept", len(c.tx.ops))
			}
		})
	})
}
