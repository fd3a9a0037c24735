package bpf

import (
	"debug/elf"
	"errors"
	"os"
	"slices"
	"testing"
)

// TestExportedFunctions: the lookup through the GNU hash table finds what
// the full dynamic symbol table says, at the same file offsets, for
// shared libraries and an executable that exports OpenSSL (Node.js's,
// when installed), and nothing for names not exported as functions.
func TestExportedFunctions(t *testing.T) {
	names := append([]string{"malloc", "free", "printf", "SSL_new", "SSL_CTX_new", "ERR_get_error", "no_such_function", "stdout"}, tlsSymbols[:]...)
	files := map[string]bool{ // path: required
		"/lib/x86_64-linux-gnu/libc.so.6":      true,
		"/lib/x86_64-linux-gnu/libssl.so.3":    false,
		"/lib/x86_64-linux-gnu/libcrypto.so.3": false,
		"/usr/bin/node":                        false,
	}
	for path, required := range files {
		f, err := elf.Open(path)
		if err != nil {
			if required {
				t.Fatal(err)
			}
			t.Logf("%s: %v; not checked", path, err)
			continue
		}
		defer f.Close()
		want, sizes := map[string]uint64{}, map[string]uint64{}
		syms, err := f.DynamicSymbols()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range syms {
			if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Section != elf.SHN_UNDEF && s.Value != 0 && slices.Contains(names, s.Name) {
				if _, dup := want[s.Name]; dup {
					continue // a versioned twin (memcpy@GLIBC_2.2.5): the hash table's chain finds the first
				}
				off, err := fileOffset(f, s.Value)
				if err != nil {
					t.Fatal(err)
				}
				want[s.Name], sizes[s.Name] = off, s.Size
			}
		}
		got, err := exportedFunctions(f, names)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(want) == 0 {
			t.Fatalf("%s: none of %v exported: the test checks nothing", path, names)
		}
		for name, off := range want {
			if got[name].offset != off {
				t.Errorf("%s: %s at %#x, want %#x", path, name, got[name].offset, off)
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("%s: %s found, but it is not an exported function", path, name)
			}
		}
		for name, size := range sizes {
			if got[name].size != size {
				t.Errorf("%s: %s %+v, want %d bytes", path, name, got[name], size)
			}
		}
	}
}

// TestLinkedSSL: an executable that exports OpenSSL's functions (Node.js)
// is found as a TLS library of its own; a library without them, and a Go
// executable without a dynamic symbol table, are not.
func TestLinkedSSL(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/lib/x86_64-linux-gnu/libc.so.6", self} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := sslPlaces(f); !errors.Is(err, errNoSSLExports) {
			t.Errorf("%s: %v, want errNoSSLExports", path, err)
		}
	}
	f, err := os.Open("/usr/bin/node")
	if err != nil {
		t.Skipf("no Node.js to check: %v", err)
	}
	defer f.Close()
	if e, err := elf.NewFile(f); err == nil {
		if syms, _ := e.DynamicSymbols(); !slices.ContainsFunc(syms, func(s elf.Symbol) bool { return s.Name == "SSL_read" && s.Section != elf.SHN_UNDEF }) {
			t.Skip("this node exports no OpenSSL (Debian's links libssl): nothing linked in to find")
		}
	}
	places, err := sslPlaces(f)
	if err != nil {
		t.Fatal(err)
	}
	// Reads and writes at their entries or at the functions they call
	// (sslPlaces), the handshake at its entry.
	for _, fns := range [][]uint64{{fnRead, fnReadEx}, {fnWrite, fnWriteEx}, {fnHandshake}} {
		if !slices.ContainsFunc(places, func(p tlsPlace) bool { return slices.Contains(fns, p.fn) }) {
			t.Errorf("node: no %s in %v", tlsSymbols[fns[0]], places)
		}
	}
}
