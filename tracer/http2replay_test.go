package tracer

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Replaying captures: testdata/{grpc,http2,kafka}-*.txt hold what real
// clients and servers sent each other, one read or write per line, as
// test/fixtures/record writes them (see the fixtures' -record flag). The
// HTTP/2 and Kafka tests replay them seen from either end, cut into other
// segments, and with small capture prefixes.

type capRecord struct {
	conn       int
	fromClient bool
	close      bool
	data       []byte
}

func loadCapture(t testing.TB, name string) []capRecord {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recs []capRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Fields(line)
		conn, err := strconv.Atoi(fields[0])
		if err != nil || len(fields) < 2 {
			t.Fatalf("%s:%d: bad line", name, n)
		}
		r := capRecord{conn: conn}
		switch fields[1] {
		case "close":
			r.close = true
		case "c", "s":
			if len(fields) != 3 {
				t.Fatalf("%s:%d: bad line", name, n)
			}
			r.fromClient = fields[1] == "c"
			if r.data, err = hex.DecodeString(fields[2]); err != nil {
				t.Fatalf("%s:%d: %v", name, n, err)
			}
		default:
			t.Fatalf("%s:%d: bad direction %q", name, n, fields[1])
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return recs
}

// replay feeds the records to h as the client (asClient) or the server
// saw them. chunk > 0 cuts each record into segments of that many bytes;
// records of a connection before index from are left out, as if the agent
// started then.
//
// The first record of each direction of a connection is never cut: real
// peers send their first message (a preface, SETTINGS, a request) whole,
// and from its first bytes alone "PRI" (HTTP/2) and "POS" (HTTP/1) are
// alike.
func replay(h *harness, recs []capRecord, asClient bool, chunk, from int) {
	started := map[[2]int]bool{}
	open := map[int]bool{}
	for i, r := range recs {
		if r.close {
			h.close(uint64(r.conn))
			delete(open, r.conn)
			continue
		}
		if i < from {
			continue
		}
		open[r.conn] = true
		dir := in
		if r.fromClient == asClient {
			dir = out
		}
		data := string(r.data)
		for len(data) > 0 {
			n := len(data)
			if chunk > 0 {
				n = min(chunk, n)
			}
			key := [2]int{r.conn, int(dir)}
			if !started[key] {
				n = len(data)
			}
			started[key] = true
			h.send(uint64(r.conn), dir, data[:n])
			data = data[n:]
		}
	}
	for conn := range open {
		h.close(uint64(conn))
	}
}

// describe is a request in one line, the way the tests compare them.
func describe(r *Request) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Role, r.Protocol)
	switch r.Protocol {
	case ProtoGRPC:
		fmt.Fprintf(&b, " %s/%s grpc=%d", r.RPCService, r.RPCMethod, r.GRPCStatus)
	case ProtoHTTP:
		fmt.Fprintf(&b, "/%s %s %s", r.ProtocolVersion, r.Method, r.Path)
		if r.Query != "" {
			fmt.Fprintf(&b, "?%s", r.Query)
		}
		fmt.Fprintf(&b, " %d", r.StatusCode)
	case ProtoKafka:
		fmt.Fprintf(&b, " %s %q", r.MessagingOperation, r.MessagingDestination)
		if r.Partition >= 0 {
			fmt.Fprintf(&b, " partition=%d", r.Partition)
		}
		fmt.Fprintf(&b, " client=%s", r.ClientID)
		if r.MessageCount > 0 {
			fmt.Fprintf(&b, " messages=%d", r.MessageCount)
		}
	}
	if r.ErrorCode != "" {
		fmt.Fprintf(&b, " error=%s", r.ErrorCode)
	}
	return b.String()
}

func describeAll(rs []*Request) []string {
	var out []string
	for _, r := range rs {
		out = append(out, describe(r))
	}
	return out
}

// coalesce joins the consecutive records of one connection and direction,
// as the peer wrote them, for captures recorded at the other end (a server
// that reads a message's size and its body with two reads).
func coalesce(recs []capRecord) []capRecord {
	var out []capRecord
	for _, r := range recs {
		if n := len(out); n > 0 && !r.close && !out[n-1].close && out[n-1].conn == r.conn && out[n-1].fromClient == r.fromClient {
			out[n-1].data = append(out[n-1].data, r.data...)
			continue
		}
		r.data = append([]byte(nil), r.data...)
		out = append(out, r)
	}
	return out
}
