package bpf

import (
	"bytes"
	"cmp"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podtracer/podtracer/internal/testenv"
)

// TestSSLPlacesSystem: on this machine's libssl (Debian's, whose SSL_read
// and SSL_write begin with a sub, single-stepped), the reads and writes
// are probed at the internal functions both forms call, which begin with
// an instruction the kernel emulates; the handshake and SSL_free at their
// entries.
func TestSSLPlacesSystem(t *testing.T) {
	const path = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
	file, err := os.Open(path)
	if err != nil {
		t.Skipf("no libssl 3 to read: %v", err)
	}
	defer file.Close()
	f, err := elf.NewFile(file)
	if err != nil {
		t.Fatal(err)
	}
	symbols, err := exportedFunctions(f, tlsSymbols[:])
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]uint64{}
	for name, fn := range symbols {
		exported[name] = fn.offset
	}
	places, err := sslPlaces(file)
	if err != nil {
		t.Fatal(err)
	}
	code := codeReader{f}
	at := func(fn uint64) []tlsPlace {
		return slices.DeleteFunc(slices.Clone(places), func(p tlsPlace) bool { return p.fn != fn })
	}
	for _, pair := range [][2]uint64{{fnRead, fnReadEx}, {fnWrite, fnWriteEx}} {
		plain, ex := tlsSymbols[pair[0]], tlsSymbols[pair[1]]
		if code.emulated(exported[plain]) {
			t.Skipf("%s's %s begins with an instruction emulated: nothing to move", path, plain)
		}
		if got := at(pair[0]); len(got) != 0 {
			t.Errorf("%s is probed at its entry, single-stepped: %v", plain, got)
		}
		got := at(pair[1])
		if len(got) != 1 || got[0].offset == exported[plain] || got[0].offset == exported[ex] || !code.emulated(got[0].offset) {
			t.Fatalf("%s and %s: want one place, at a function both call that begins with an instruction emulated; got %v", plain, ex, got)
		}
		// Debian's SSL_read_ex is "sub $0x8,%rsp; call" the internal
		// read (relative to the call's end, in the same segment).
		b := code.at(exported[ex], 9)
		if !bytes.HasPrefix(b, []byte{0x48, 0x83, 0xec, 0x08, 0xe8}) {
			t.Fatalf("%s begins % x, not as Debian's does", ex, b)
		}
		if callee := exported[ex] + 9 + uint64(int64(int32(binary.LittleEndian.Uint32(b[5:])))); callee != got[0].offset {
			t.Errorf("%s calls %#x, the place is %#x", ex, callee, got[0].offset)
		}
	}
	// SSL_do_handshake begins with a push; SSL_free with a check of its
	// object (test %rdi,%rdi; je rel32), then a push.
	free := exported[tlsFree]
	if b := code.at(free, 9); !bytes.HasPrefix(b, []byte{0x48, 0x85, 0xff, 0x0f, 0x84}) || !code.emulated(free+9) {
		t.Fatalf("SSL_free begins % x, not as Debian's does", b)
	}
	for fn, want := range map[uint64]uint64{fnHandshake: exported["SSL_do_handshake"], fnFree: free + 9} {
		if got := at(fn); len(got) != 1 || got[0].offset != want {
			t.Errorf("%s: %v, want %#x", tlsSymbols[fn], got, want)
		}
	}
}

// TestSSLPlaces builds libraries shaped as OpenSSL builds are, and checks
// where their uprobes go.
func TestSSLPlaces(t *testing.T) {
	clang := testenv.LookPath(t, "clang")
	const (
		endbr = "endbr64"
		sub   = "sub $0x18,%rsp"
		push  = "push %r13"
	)
	// A library is its functions' bodies, by name; exported ones are
	// named SSL_*.
	type library map[string][]string
	// Debian's OpenSSL 3.0: SSL_read checks its count (a branch not
	// taken) and calls the internal read with the count's pointer on its
	// stack; SSL_read_ex calls it at once; the internal read begins with
	// a push.
	debian := func() library {
		wrapper := func(callee string) []string {
			return []string{sub, "test %edx,%edx", "js 1f", "mov %rsp,%rcx", "movslq %edx,%rdx", "call " + callee, "1: add $0x18,%rsp", "ret"}
		}
		ex := func(callee string) []string {
			return []string{"sub $0x8,%rsp", "call " + callee, "add $0x8,%rsp", "ret"}
		}
		internal := []string{push, "pop %r13", "mov $1,%eax", "ret"}
		return library{
			"read_internal": internal, "write_internal": internal, "other": internal,
			"SSL_read": wrapper("read_internal"), "SSL_read_ex": ex("read_internal"),
			"SSL_write": wrapper("write_internal"), "SSL_write_ex": ex("write_internal"),
			"SSL_do_handshake": {push, "pop %r13", "ret"}, "SSL_free": {"test %rdi,%rdi", "ret"},
		}
	}
	with := func(l library, changes library) library {
		for name, body := range changes {
			if body == nil {
				delete(l, name)
			} else {
				l[name] = body
			}
		}
		return l
	}
	cet := func(l library) library {
		for name, body := range l {
			l[name] = append([]string{endbr}, body...)
		}
		return l
	}
	build := func(t *testing.T, l library, hashStyle string) (*os.File, *elf.File) {
		var asm strings.Builder
		asm.WriteString(".text\n")
		names := slices.Sorted(maps.Keys(l))
		for _, name := range names {
			if strings.HasPrefix(name, "SSL_") {
				fmt.Fprintf(&asm, ".globl %s\n", name)
			}
			fmt.Fprintf(&asm, ".type %[1]s,@function\n%[1]s:\n\t%s\n.size %[1]s,.-%[1]s\n", name, strings.Join(l[name], "\n\t"))
		}
		dir := t.TempDir()
		src, lib := filepath.Join(dir, "ssl.S"), filepath.Join(dir, "libssl.so.3")
		if err := os.WriteFile(src, []byte(asm.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(clang, "-shared", "-nostdlib", "-Wl,--hash-style="+hashStyle, "-o", lib, src).CombinedOutput(); err != nil {
			t.Fatalf("clang: %v\n%s\n%s", err, out, asm.String())
		}
		file, err := os.Open(lib)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { file.Close() })
		f, err := elf.NewFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return file, f
	}
	// symbol is the file offset of a function, by its name in .symtab.
	symbol := func(t *testing.T, f *elf.File, name string) uint64 {
		syms, err := f.Symbols()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range syms {
			if s.Name == name {
				off, err := fileOffset(f, s.Value)
				if err != nil {
					t.Fatal(err)
				}
				return off
			}
		}
		t.Fatalf("no %s", name)
		return 0
	}
	type want struct {
		fn     uint64
		symbol string
		past   uint64 // bytes past the symbol
		name   string // the place's name, when it is not the function's
	}
	internals := []want{{fnWriteEx, "write_internal", 0, "callee of SSL_write and SSL_write_ex"}, {fnReadEx, "read_internal", 0, "callee of SSL_read and SSL_read_ex"}}
	writeEntries := []want{{fnWrite, "SSL_write", 0, ""}, {fnWriteEx, "SSL_write_ex", 0, ""}}
	readEntries := []want{{fnRead, "SSL_read", 0, ""}, {fnReadEx, "SSL_read_ex", 0, ""}}
	rest := []want{{fnHandshake, "SSL_do_handshake", 0, ""}, {fnFree, "SSL_free", 0, ""}}
	for _, c := range []struct {
		name      string
		lib       library
		hashStyle string
		want      []want
	}{{
		name: "Debian's build: the internal functions",
		lib:  debian(),
		want: slices.Concat(internals, rest),
	}, {
		name:      "a library with no GNU hash table",
		lib:       debian(),
		hashStyle: "sysv",
		want:      slices.Concat(internals, rest),
	}, {
		name: "control-flow protection: past the endbr64 where a push follows, else at the start",
		lib:  cet(debian()),
		want: []want{{fnWriteEx, "write_internal", 4, "callee of SSL_write and SSL_write_ex"}, {fnReadEx, "read_internal", 4, "callee of SSL_read and SSL_read_ex"},
			{fnHandshake, "SSL_do_handshake", 4, ""}, {fnFree, "SSL_free", 0, ""}},
	}, {
		name: "entries emulated already (Node.js's build): kept",
		lib: with(debian(), library{"SSL_read": {"push %rbp", "call read_internal", "pop %rbp", "ret"},
			"SSL_read_ex": {"push %rbp", "call read_internal", "pop %rbp", "ret"}}),
		want: slices.Concat(internals[:1], readEntries, rest),
	}, {
		name: "an internal read that begins with an instruction single-stepped: the entries",
		lib:  with(debian(), library{"read_internal": {sub, "add $0x18,%rsp", "ret"}}),
		want: slices.Concat(internals[:1], readEntries, rest),
	}, {
		name: "wrappers that call different functions first: the entries",
		lib:  with(debian(), library{"SSL_read_ex": {"sub $0x8,%rsp", "call other", "add $0x8,%rsp", "ret"}}),
		want: slices.Concat(internals[:1], readEntries, rest),
	}, {
		name: "the internal read inlined, both calling another function first with other arguments: the entries",
		lib: with(debian(), library{"SSL_read": {sub, "xor %esi,%esi", "mov %rsp,%rcx", "call other", "add $0x18,%rsp", "ret"},
			"SSL_read_ex": {sub, "xor %esi,%esi", "call other", "add $0x18,%rsp", "ret"}}),
		want: slices.Concat(internals[:1], readEntries, rest),
	}, {
		name: "a read whose count's pointer is not in the fourth register: the entries",
		lib:  with(debian(), library{"SSL_read": {sub, "mov %rsp,%r8", "call read_internal", "add $0x18,%rsp", "ret"}}),
		want: slices.Concat(internals[:1], readEntries, rest),
	}, {
		name: "one function called by the reads and the writes: neither has it",
		lib: with(debian(), library{"SSL_read": {sub, "mov %rsp,%rcx", "call write_internal", "add $0x18,%rsp", "ret"},
			"SSL_read_ex": {"sub $0x8,%rsp", "call write_internal", "add $0x8,%rsp", "ret"}}),
		want: slices.Concat(writeEntries, readEntries, rest),
	}, {
		// Called directly, by a local label of its address (through the
		// PLT, it would be no function of the library's own).
		name: "an exported function called: the entries",
		lib: with(debian(), library{"SSL_read": {sub, "mov %rsp,%rcx", "call peek", "add $0x18,%rsp", "ret"},
			"SSL_read_ex": {"sub $0x8,%rsp", "call peek", "add $0x8,%rsp", "ret"}, "SSL_peek_ex": {"peek: " + push, "pop %r13", "ret"}}),
		want: slices.Concat(internals[:1], readEntries, rest),
	}, {
		// SSL_write passes flags, then the count's pointer in r8;
		// SSL_write_ex calls SSL_write_ex2, or inlines it.
		name: "OpenSSL 3.3+'s writes: the entries",
		lib: with(debian(), library{"SSL_write": {sub, "xor %ecx,%ecx", "mov %rsp,%r8", "call write_internal", "add $0x18,%rsp", "ret"},
			"SSL_write_ex":  {"sub $0x8,%rsp", "mov %rcx,%r8", "xor %ecx,%ecx", "call write_internal", "add $0x8,%rsp", "ret"},
			"SSL_write_ex2": {"jmp write_internal"}}),
		want: slices.Concat(writeEntries, internals[1:], rest),
	}, {
		name: "OpenSSL 3.3+'s writes, SSL_write_ex calling SSL_write_ex2: the entries",
		lib: with(debian(), library{"SSL_write": {sub, "xor %ecx,%ecx", "mov %rsp,%r8", "call write_internal", "add $0x18,%rsp", "ret"},
			"SSL_write_ex":  {"sub $0x8,%rsp", "call SSL_write_ex2", "add $0x8,%rsp", "ret"},
			"SSL_write_ex2": {"sub $0x8,%rsp", "call write_internal", "add $0x8,%rsp", "ret"}}),
		want: slices.Concat(writeEntries, internals[1:], rest),
	}, {
		// OpenSSL 3.5's builds (Node.js 24's): the _ex forms, the
		// handshake and SSL_free check their object before their
		// prologue.
		name: "past a check of the first argument, where a push follows",
		lib: with(debian(), library{"SSL_read": {"push %rbp", "call read_internal", "pop %rbp", "ret"},
			"SSL_read_ex":      {"test %rdi,%rdi", "je 1f", "push %rbp", "call read_internal", "pop %rbp", "ret", "1: xor %eax,%eax", "ret"},
			"SSL_do_handshake": {"test %rdi,%rdi", "je 1f", "push %rbx", "pop %rbx", "ret", "1: ret"},
			"SSL_free":         {"test %rdi,%rdi", "je 1f", "mov $1,%eax", "push %rbx", "pop %rbx", "1: ret"}}),
		want: slices.Concat(internals[:1], []want{{fnRead, "SSL_read", 0, ""}, {fnReadEx, "SSL_read_ex", 5, ""},
			{fnHandshake, "SSL_do_handshake", 5, ""}, {fnFree, "SSL_free", 0, ""}}),
	}, {
		name: "past a check, under control-flow protection",
		lib:  cet(with(debian(), library{"SSL_do_handshake": {"test %rdi,%rdi", "je 1f", "push %rbx", "pop %rbx", "ret", "1: ret"}})),
		want: []want{{fnWriteEx, "write_internal", 4, "callee of SSL_write and SSL_write_ex"}, {fnReadEx, "read_internal", 4, "callee of SSL_read and SSL_read_ex"},
			{fnHandshake, "SSL_do_handshake", 9, ""}, {fnFree, "SSL_free", 0, ""}},
	}, {
		name: "a jump to the place past the check, a jne, a check of another register: at the start",
		lib: with(debian(), library{
			"SSL_do_handshake": {"test %rdi,%rdi", "je 1f", "2: push %rbx", "pop %rbx", "dec %rsi", "jnz 2b", "ret", "1: ret"},
			"SSL_free":         {"test %rdi,%rdi", "jne 1f", "push %rbx", "pop %rbx", "1: ret"},
			"SSL_read":         {"test %rsi,%rsi", "je 1f", "push %rbp", "pop %rbp", "1: ret"},
			"SSL_read_ex":      {"push %rbp", "pop %rbp", "ret"}}),
		want: slices.Concat(internals[:1], readEntries, rest),
	}, {
		name: "before OpenSSL 1.1.1, no _ex forms: the entries",
		lib:  with(debian(), library{"SSL_read_ex": nil, "SSL_write_ex": nil}),
		want: slices.Concat([]want{{fnWrite, "SSL_write", 0, ""}, {fnRead, "SSL_read", 0, ""}}, rest),
	}} {
		t.Run(c.name, func(t *testing.T) {
			file, f := build(t, c.lib, cmp.Or(c.hashStyle, "gnu"))
			got, err := sslPlaces(file)
			if err != nil {
				t.Fatal(err)
			}
			var expected []tlsPlace
			for _, w := range c.want {
				expected = append(expected, tlsPlace{symbol(t, f, w.symbol) + w.past, w.fn, cmp.Or(w.name, w.symbol)})
			}
			if !slices.Equal(got, expected) {
				t.Errorf("places\n%+v, want\n%+v", got, expected)
			}
		})
	}
	t.Run("no SSL_do_handshake: no OpenSSL", func(t *testing.T) {
		file, _ := build(t, with(debian(), library{"SSL_do_handshake": nil}), "gnu")
		if _, err := sslPlaces(file); err == nil {
			t.Error("places for a library without SSL_do_handshake")
		}
	})
}
