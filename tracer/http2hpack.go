package tracer

import (
	"errors"

	"golang.org/x/net/http2/hpack"
)

// This file decodes HPACK header blocks whose dynamic table is only partly
// known: on a connection that was open before the agent started, or after
// a header block that was not fully captured. The dynamic table is a FIFO:
// every insertion goes to index 62 and pushes the others down, and the
// oldest entries are evicted first. So even without the entries inserted
// before we looked, the ones inserted since are known, and a reference
// to them (index 62 .. 61+n, the n newest) decodes exactly; a reference past
// them is to an entry we never saw, and the field is marked unknown rather
// than guessed. Evicting later than the encoder does is harmless (it never
// refers to an entry it evicted), so sizes of entries with an unknown name
// count as their least possible size.
//
// While the whole table is known (the connection was seen from its
// preface), golang.org/x/net/http2/hpack does the decoding; this decoder
// takes over for a direction once that is no longer so.

// hfield is one decoded header field; unknown fields refer to dynamic table
// entries that were inserted where we could not see them.
type hfield struct {
	name, value string
	unknown     bool
}

type hpackEntry struct {
	name, value string
	unknownName bool
}

func (e *hpackEntry) size() int { return len(e.name) + len(e.value) + 32 }

// hpackPartial is a dynamic table that knows its newest entries.
type hpackPartial struct {
	entries []hpackEntry // entries[head:] are the table, oldest first
	head    int          // evicted entries still at the front of entries
	size    int
	max     int // the table size bound we assume: the largest the encoder may use
}

var (
	errHpack          = errors.New("hpack: malformed header block")
	errHpackTruncated = errors.New("hpack: header block cut short")
)

// forget marks every entry as never seen: insertions of unknown number
// happened where we could not see them.
func (t *hpackPartial) forget() {
	clear(t.entries) // do not pin the strings
	t.entries, t.head = t.entries[:0], 0
	t.size = 0
}

func (t *hpackPartial) setMax(n int) {
	t.max = min(n, h2MaxTableSize)
	t.evict()
}

// evict drops the oldest entries while the table is over its size. They
// are dropped by moving head; the live entries are moved to the front only
// once as many were dropped as are left, so that a header block full of
// insertions into a full table (each one evicting) costs time linear in
// its length, not in its length times the table's.
func (t *hpackPartial) evict() {
	for t.size > t.max && t.head < len(t.entries) {
		t.size -= t.entries[t.head].size()
		t.entries[t.head] = hpackEntry{}
		t.head++
	}
	if t.head > 0 && t.head >= len(t.entries)-t.head {
		n := copy(t.entries, t.entries[t.head:])
		clear(t.entries[n:])
		t.entries, t.head = t.entries[:n], 0
	}
}

func (t *hpackPartial) add(e hpackEntry) {
	t.entries = append(t.entries, e)
	t.size += e.size()
	t.evict()
}

// at returns the entry at HPACK index i (1-based; 1..61 static).
func (t *hpackPartial) at(i uint64) (hpackEntry, bool) {
	if i == 0 {
		return hpackEntry{}, false
	}
	if i <= uint64(len(hpackStatic)) {
		return hpackStatic[i-1], true
	}
	live := t.entries[t.head:]
	j := i - uint64(len(hpackStatic)) // 1: the newest
	if j > uint64(len(live)) {
		return hpackEntry{unknownName: true}, true
	}
	return live[uint64(len(live))-j], true
}

// decode decodes one header block. With cut set the block was not fully
// captured: decoding stops at its end, the fields before are valid, and
// the table forgets everything (the rest of the block may have inserted
// entries). It returns the fields, and an error for a malformed block, after
// which the table is forgotten too.
func (t *hpackPartial) decode(b []byte, cut bool, fields []hfield) ([]hfield, error) {
	for len(b) > 0 {
		c := b[0]
		switch {
		case c&0x80 != 0: // indexed field
			i, rest, err := hpackInt(b, 7)
			if err != nil {
				return t.fail(fields, err, cut)
			}
			b = rest
			e, ok := t.at(i)
			if !ok {
				return t.fail(fields, errHpack, cut)
			}
			fields = append(fields, hfield{name: e.name, value: e.value, unknown: e.unknownName})
		case c&0xe0 == 0x20: // dynamic table size update
			n, rest, err := hpackInt(b, 5)
			if err != nil {
				return t.fail(fields, err, cut)
			}
			b = rest
			t.setMax(int(min(n, 1<<30)))
		default: // literal: with incremental indexing (01), without (0000), never indexed (0001)
			prefix := uint8(4)
			indexing := c&0xc0 == 0x40
			if indexing {
				prefix = 6
			}
			i, rest, err := hpackInt(b, prefix)
			if err != nil {
				return t.fail(fields, err, cut)
			}
			b = rest
			var e hpackEntry
			if i == 0 {
				if e.name, b, err = hpackString(b); err != nil {
					return t.fail(fields, err, cut)
				}
			} else {
				ne, ok := t.at(i)
				if !ok {
					return t.fail(fields, errHpack, cut)
				}
				e.name, e.unknownName = ne.name, ne.unknownName
			}
			if e.value, b, err = hpackString(b); err != nil {
				return t.fail(fields, err, cut)
			}
			fields = append(fields, hfield{name: e.name, value: e.value, unknown: e.unknownName})
			if indexing {
				t.add(e)
			}
		}
	}
	if cut {
		t.forget()
	}
	return fields, nil
}

func (t *hpackPartial) fail(fields []hfield, err error, cut bool) ([]hfield, error) {
	t.forget()
	if cut && err == errHpackTruncated {
		return fields, nil
	}
	return fields, err
}

// hpackInt reads an HPACK integer with an n-bit prefix (RFC 7541 5.1).
func hpackInt(b []byte, n uint8) (uint64, []byte, error) {
	if len(b) == 0 {
		return 0, b, errHpackTruncated
	}
	mask := uint64(1)<<n - 1
	v := uint64(b[0]) & mask
	b = b[1:]
	if v < mask {
		return v, b, nil
	}
	var shift uint
	for len(b) > 0 {
		c := b[0]
		b = b[1:]
		v += uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, b, nil
		}
		shift += 7
		if shift >= 63 {
			return 0, b, errHpack
		}
	}
	return 0, b, errHpackTruncated
}

// hpackString reads an HPACK string literal, Huffman-coded or not.
func hpackString(b []byte) (string, []byte, error) {
	if len(b) == 0 {
		return "", b, errHpackTruncated
	}
	huff := b[0]&0x80 != 0
	n, rest, err := hpackInt(b, 7)
	if err != nil {
		return "", b, err
	}
	if n > uint64(len(rest)) {
		return "", b, errHpackTruncated
	}
	raw := rest[:n]
	rest = rest[n:]
	if !huff {
		return string(raw), rest, nil
	}
	s, err := hpack.HuffmanDecodeToString(raw)
	if err != nil {
		return "", rest, errHpack
	}
	return s, rest, nil
}

// hpackStatic is the static table of RFC 7541 Appendix A.
var hpackStatic = [...]hpackEntry{
	{name: ":authority"},
	{name: ":method", value: "GET"},
	{name: ":method", value: "POST"},
	{name: ":path", value: "/"},
	{name: ":path", value: "/index.html"},
	{name: ":scheme", value: "http"},
	{name: ":scheme", value: "https"},
	{name: ":status", value: "200"},
	{name: ":status", value: "204"},
	{name: ":status", value: "206"},
	{name: ":status", value: "304"},
	{name: ":status", value: "400"},
	{name: ":status", value: "404"},
	{name: ":status", value: "500"},
	{name: "accept-charset"},
	{name: "accept-encoding", value: "gzip, deflate"},
	{name: "accept-language"},
	{name: "accept-ranges"},
	{name: "accept"},
	{name: "access-control-allow-origin"},
	{name: "age"},
	{name: "allow"},
	{name: "authorization"},
	{name: "cache-control"},
	{name: "content-disposition"},
	{name: "content-encoding"},
	{name: "content-language"},
	{name: "content-length"},
	{name: "content-location"},
	{name: "content-range"},
	{name: "content-type"},
	{name: "cookie"},
	{name: "date"},
	{name: "etag"},
	{name: "expect"},
	{name: "expires"},
	{name: "from"},
	{name: "host"},
	{name: "if-match"},
	{name: "if-modified-since"},
	{name: "if-none-match"},
	{name: "if-range"},
	{name: "if-unmodified-since"},
	{name: "last-modified"},
	{name: "link"},
	{name: "location"},
	{name: "max-forwards"},
	{name: "proxy-authenticate"},
	{name: "proxy-authorization"},
	{name: "range"},
	{name: "referer"},
	{name: "refresh"},
	{name: "retry-after"},
	{name: "server"},
	{name: "set-cookie"},
	{name: "strict-transport-security"},
	{name: "transfer-encoding"},
	{name: "user-agent"},
	{name: "vary"},
	{name: "via"},
	{name: "www-authenticate"},
}
