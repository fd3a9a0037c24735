package tracer

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/podtracer/podtracer/bpf"
)

// dbFuzzInput is what the database fuzz targets vary: the client's and the
// server's bytes, how they are cut into segments, the capture prefix, and
// flags for the configuration, the observed side and the opening message.
type dbFuzzInput struct {
	reqs, resps []byte
	cut         uint8
	capture     uint16
	flags       uint8
}

// dbFuzz opens a connection with the message that makes proto detect it
// (unless a flag leaves it out, so that the fuzzed bytes must), then
// feeds the fuzzed bytes both ways. No panic, bounded state (check), and
// well-formed requests only.
func dbFuzz(t *testing.T, proto string, open string, openToServer bool, in dbFuzzInput, check func(t *testing.T, p protocolParser)) {
	cfg := Config{QueryText: []string{QuerySanitized, QueryFull, QueryOff}[in.flags%3], RedisKeys: in.flags&4 != 0}
	h := newDBHarness(t, int(in.capture%4096)+1, cfg)
	h.countEvery = int(in.capture >> 12)       // some pieces counted, not read
	reqDir, respDir := bpf.Egress, bpf.Ingress // the observed process is the client
	if in.flags&8 != 0 {
		reqDir, respDir = respDir, reqDir
	}
	if in.flags&16 == 0 {
		if openToServer {
			h.send(1, reqDir, open)
		} else {
			h.send(1, respDir, open)
		}
	}
	step := int(in.cut%32) + 1
	// Long inputs add little but time: keep each run (and minimizing)
	// fast.
	reqs, resps := in.reqs[:min(len(in.reqs), 4<<10)], in.resps[:min(len(in.resps), 4<<10)]
	h.interleave(1, reqDir, reqs, step, respDir, resps, step+int(in.flags>>5), nil)
	if c := h.tracer.conns[connKey{pid: 7, sock: 1}]; c != nil && c.parser != nil {
		check(t, c.parser)
	}
	h.close(1)
	for _, r := range h.got {
		if r.Protocol != proto || r.GRPCStatus != -1 || r.Partition != -1 || r.End.Before(r.Start) {
			t.Fatalf("bad request %+v", r)
		}
		for _, s := range []string{r.DBOperation, r.DBCollection, r.DBNamespace, r.DBQuery, r.ErrorCode, r.ErrorMessage} {
			if !utf8.ValidString(s) || strings.Contains(s, "\x00") || len(s) > 2*dbMaxQueryText {
				t.Fatalf("bad text %q in %+v", s, r)
			}
		}
		if cfg.QueryText == QueryOff && r.DBQuery != "" {
			t.Fatalf("query text %q with QueryOff", r.DBQuery)
		}
	}
	if s := h.tracer.Stats(); s.ParserFailures != 0 {
		t.Fatalf("a parser failed (panicked) %d times: the tracer recovers, but it is a bug", s.ParserFailures)
	}
	if h.tracer.Stats().Connections != 0 {
		t.Fatal("connection kept after close")
	}
}

// dbFuzzSeeds adds a capture's bytes, each way, as seeds.
func dbFuzzSeeds(f *testing.F, name string) {
	var reqs, resps []byte
	for _, r := range loadDBCapture(f, name)[1:] {
		if r.toServer && len(reqs) < 3000 {
			reqs = append(reqs, r.data[:min(len(r.data), 512)]...)
		} else if !r.toServer && len(resps) < 3000 {
			resps = append(resps, r.data[:min(len(r.data), 512)]...)
		}
	}
	f.Add(reqs, resps, uint8(31), uint16(4095), uint8(0))
	f.Add(reqs, resps, uint8(7), uint16(63), uint8(1|8))
	f.Add(reqs, resps, uint8(0), uint16(100), uint8(2|4|16))
	f.Add(reqs, resps, uint8(5), uint16(3<<12|100), uint8(0))
}

func FuzzPostgres(f *testing.F) {
	dbFuzzSeeds(f, "postgres-pgx.bin")
	dbFuzzSeeds(f, "postgres-psql.bin")
	dbFuzzSeeds(f, "postgres-psql-copy.bin")
	open := pgStartup("user", "app", "database", "shop")
	f.Fuzz(func(t *testing.T, reqs, resps []byte, cut uint8, capture uint16, flags uint8) {
		dbFuzz(t, ProtoPostgreSQL, open, true, dbFuzzInput{reqs, resps, cut, capture, flags}, func(t *testing.T, p protocolParser) {
			c, ok := p.(*pgConn)
			if !ok {
				return // the fuzzed bytes opened another protocol
			}
			if len(c.batches) > pgMaxBatches+1 || len(c.stmts.m) > pgMaxStatements || len(c.portals) > pgMaxPortals ||
				cap(c.fe.body) > 64<<10 || cap(c.be.body) > 64<<10 {
				t.Fatalf("unbounded: %d batches, %d statements, %d portals", len(c.batches), len(c.stmts.m), len(c.portals))
			}
			held := 0
			for _, b := range c.batches {
				if len(b.items) > pgMaxItems || len(b.parses) > pgMaxItems {
					t.Fatalf("batch of %d items, %d parses", len(b.items), len(b.parses))
				}
				held += b.held
			}
			if held != c.held || held > pgMaxHeldText {
				t.Fatalf("batches hold %d bytes of text, the connection counts %d", held, c.held)
			}
		})
	})
}
