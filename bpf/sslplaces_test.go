package bpf

import (
	"debug/elf"
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
	exported, err := exportedFunctions(f, tlsSymbols)
	if err != nil {
		t.Fatal(err)
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
		if callee, _ := code.firstCall(exported[plain]); callee != got[0].offset {
			t.Errorf("%s calls %#x first, the place is %#x", plain, callee, got[0].offset)
		}
	}
	for _, fn := range []uint64{fnHandshake, fnFree} {
		if got := at(fn); len(got) != 1 || got[0].offset != exported[tlsSymbols[fn]] {
			t.Errorf("%s: %v, want its entry %#x", tlsSymbols[fn], got, exported[tlsSymbols[fn]])
		}
	}
}

// TestSSLPlaces builds libraries shaped as OpenSSL builds are, and checks
// where their uprobes go.
func TestSSLPlaces(t *testing.T) {
	clang := testenv.LookPath(t, "clang")
	// fn emits a function: an exported one, or a local one the others call.
	fn := func(name string, global bool, body ...string) string {
		s := ".type " + name + ",@function\n"
		if global {
			s += ".globl " + name + "\n"
		}
		return s + name + ":\n\t" + strings.Join(body, "\n\t") + "\n.size " + name + ",.-" + name + "\n"
	}
	const (
		endbr = "endbr64"
		sub   = "sub $0x18,%rsp"
		push  = "push %r13"
	)
	// Debian's OpenSSL 3.0: SSL_read checks its count (a branch not
	// taken), then calls the internal read; SSL_read_ex calls it at once.
	wrapper := func(cet bool, name, callee string) string {
		body := []string{sub, "test %edx,%edx", "js 1f", "mov %rsp,%rcx", "call " + callee, "1: add $0x18,%rsp", "ret"}
		if cet {
			body = append([]string{endbr}, body...)
		}
		return fn(name, true, body...)
	}
	internal := func(cet bool, name, first string) string {
		body := []string{first, "pop %r13", "mov $1,%eax", "ret"}
		if cet {
			body = append([]string{endbr}, body...)
		}
		return fn(name, false, body...)
	}
	openssl := func(cet bool, readFirst, writeFirst string, extra ...string) string {
		handshake := []string{push, "pop %r13", "ret"}
		if cet {
			handshake = append([]string{endbr}, handshake...)
		}
		return strings.Join(append([]string{".text",
			internal(cet, "read_internal", readFirst), internal(cet, "write_internal", writeFirst),
			wrapper(cet, "SSL_read", "read_internal"), wrapper(cet, "SSL_read_ex", "read_internal"),
			wrapper(cet, "SSL_write", "write_internal"), wrapper(cet, "SSL_write_ex", "write_internal"),
			fn("SSL_do_handshake", true, handshake...), fn("SSL_free", true, "test %rdi,%rdi", "ret"),
			fn("other", false, push, "pop %r13", "ret")}, extra...), "\n")
	}
	build := func(t *testing.T, asm string) (*os.File, *elf.File) {
		dir := t.TempDir()
		src, lib := filepath.Join(dir, "ssl.S"), filepath.Join(dir, "libssl.so.3")
		if err := os.WriteFile(src, []byte(asm), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(clang, "-shared", "-nostdlib", "-Wl,--hash-style=gnu", "-o", lib, src).CombinedOutput(); err != nil {
			t.Fatalf("clang: %v\n%s", err, out)
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
	}
	for _, c := range []struct {
		name string
		asm  string
		want []want
	}{{
		name: "Debian's build: the internal functions",
		asm:  openssl(false, push, push),
		want: []want{{fnWriteEx, "write_internal", 0}, {fnReadEx, "read_internal", 0}, {fnHandshake, "SSL_do_handshake", 0}, {fnFree, "SSL_free", 0}},
	}, {
		name: "control-flow protection: past the endbr64 where a push follows",
		asm:  openssl(true, push, push),
		want: []want{{fnWriteEx, "write_internal", 4}, {fnReadEx, "read_internal", 4}, {fnHandshake, "SSL_do_handshake", 4}, {fnFree, "SSL_free", 0}},
	}, {
		name: "OpenSSL 3.3+: the internal write takes flags",
		asm:  openssl(false, push, push, fn("SSL_write_ex2", true, "jmp write_internal")),
		want: []want{{fnWriteEx2, "write_internal", 0}, {fnReadEx, "read_internal", 0}, {fnHandshake, "SSL_do_handshake", 0}, {fnFree, "SSL_free", 0}},
	}, {
		name: "an internal read that begins with an instruction single-stepped: no gain, the entries",
		asm:  openssl(false, sub, push),
		want: []want{{fnWriteEx, "write_internal", 0}, {fnRead, "SSL_read", 0}, {fnReadEx, "SSL_read_ex", 0}, {fnHandshake, "SSL_do_handshake", 0}, {fnFree, "SSL_free", 0}},
	}, {
		name: "wrappers that call different functions first: the entries",
		asm: strings.Replace(openssl(false, push, push), wrapper(false, "SSL_read_ex", "read_internal"),
			wrapper(false, "SSL_read_ex", "other"), 1),
		want: []want{{fnWriteEx, "write_internal", 0}, {fnRead, "SSL_read", 0}, {fnReadEx, "SSL_read_ex", 0}, {fnHandshake, "SSL_do_handshake", 0}, {fnFree, "SSL_free", 0}},
	}, {
		name: "entries emulated already (Node.js's build): kept",
		asm: strings.NewReplacer(wrapper(false, "SSL_read", "read_internal"), fn("SSL_read", true, "push %rbp", "call read_internal", "pop %rbp", "ret"),
			wrapper(false, "SSL_read_ex", "read_internal"), fn("SSL_read_ex", true, "push %rbp", "call read_internal", "pop %rbp", "ret")).Replace(openssl(false, push, push)),
		want: []want{{fnWriteEx, "write_internal", 0}, {fnRead, "SSL_read", 0}, {fnReadEx, "SSL_read_ex", 0}, {fnHandshake, "SSL_do_handshake", 0}, {fnFree, "SSL_free", 0}},
	}} {
		t.Run(c.name, func(t *testing.T) {
			file, f := build(t, c.asm)
			got, err := sslPlaces(file)
			if err != nil {
				t.Fatal(err)
			}
			var expected []tlsPlace
			for _, w := range c.want {
				expected = append(expected, tlsPlace{offset: symbol(t, f, w.symbol) + w.past, fn: w.fn})
			}
			for i := range got {
				got[i].name = ""
			}
			if !slices.Equal(got, expected) {
				t.Errorf("places %+v, want %+v", got, expected)
			}
		})
	}
	t.Run("no SSL_do_handshake: no OpenSSL", func(t *testing.T) {
		file, _ := build(t, strings.Replace(openssl(false, push, push), ".globl SSL_do_handshake\n", "", 1))
		if _, err := sslPlaces(file); err == nil {
			t.Error("places for a library without SSL_do_handshake")
		}
	})
}
