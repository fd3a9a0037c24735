package tracer

import "testing"

func FuzzMySQL(f *testing.F) {
	dbFuzzSeeds(f, "mysql-gosql.bin")
	dbFuzzSeeds(f, "mysql-mariadb.bin")
	open := loadDBCapture(f, "mysql-gosql.bin")[0].data // the server's greeting
	f.Fuzz(func(t *testing.T, reqs, resps []byte, cut uint8, capture uint16, flags uint8) {
		dbFuzz(t, ProtoMySQL, open, false, dbFuzzInput{reqs, resps, cut, capture, flags}, func(t *testing.T, p protocolParser) {
			c, ok := p.(*myConn)
			if !ok {
				return
			}
			if len(c.pending) > myMaxPending || len(c.stmts.m) > myMaxStatements || len(c.sqlStmts.m) > 16 ||
				cap(c.cli.body) > 64<<10 || cap(c.srv.body) > 64<<10 {
				t.Fatalf("unbounded: %d pending, %d statements", len(c.pending), len(c.stmts.m))
			}
		})
	})
}
