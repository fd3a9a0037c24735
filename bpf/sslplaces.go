package bpf

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"golang.org/x/arch/x86/x86asm"
)

// The functions of an OpenSSL that the uprobes stand for: the entry
// program's cookies, as enum tls_function in capture.c. The first six are
// tlsSymbols, in that order.
const (
	fnWrite     uint64 = iota // SSL_write
	fnWriteEx                 // SSL_write_ex, or the internal write both call
	fnRead                    // SSL_read
	fnReadEx                  // SSL_read_ex, or the internal read both call
	fnHandshake               // SSL_do_handshake
	fnFree                    // SSL_free: its entry alone
	fnWriteEx2                // the internal write of OpenSSL 3.3+, flags before the count's pointer
)

// tlsPlace is where one uprobe goes on an OpenSSL: a file offset, and the
// function it stands for (its return is probed too, but SSL_free's).
type tlsPlace struct {
	offset uint64
	fn     uint64
	name   string // the function's, or "callee of SSL_read and SSL_read_ex"
}

// errNoSSLExports is an ELF file that does not export the functions every
// libssl has: no OpenSSL linked in, for an executable.
var errNoSSLExports = errors.New("no SSL_read, SSL_write and SSL_do_handshake exported")

// sslPlacesCache remembers, by file, where its uprobes go (nil: it
// exports no OpenSSL): every process's executable is asked at its start,
// and a pod's processes share their libssl.
var sslPlacesCache struct {
	sync.Mutex
	m map[fileKey][]tlsPlace
}

// sslPlaces returns where the uprobes go on file, a libssl or an
// executable that links OpenSSL in and exports it (Node.js's);
// errNoSSLExports if it does not export the functions every libssl has.
func sslPlaces(file *os.File) ([]tlsPlace, error) {
	key, err := keyOf(file)
	if err != nil {
		return nil, err
	}
	sslPlacesCache.Lock()
	defer sslPlacesCache.Unlock()
	places, ok := sslPlacesCache.m[key]
	if !ok {
		// Learnt once, whatever the file holds: one that is no ELF file,
		// or whose tables are odd, exports nothing here.
		if f, err := elf.NewFile(file); err == nil {
			places = placesOf(f)
		}
		if sslPlacesCache.m == nil || len(sslPlacesCache.m) >= 256 {
			sslPlacesCache.m = map[fileKey][]tlsPlace{}
		}
		sslPlacesCache.m[key] = places
	}
	if places == nil {
		return nil, errNoSSLExports
	}
	return places, nil
}

// placesOf finds an OpenSSL's functions, nil if it lacks one every libssl
// has, and places their uprobes where they cost least.
//
// A uprobe is a breakpoint on the instruction at its place. The kernel
// emulates a few instructions under it (a push, a jmp, a nop); any other
// it single-steps out of line, a second trap that costs some 40 times the
// first on a virtual machine (BENCHMARKS.md, "What a trap costs"). Builds
// of OpenSSL differ: Node.js's SSL_read begins with a push, Debian's
// with a sub, and a build with control-flow protection (Ubuntu's) begins
// every function with an endbr64. So:
//   - a function that begins with an endbr64 and then an instruction
//     emulated is probed just past the endbr64, which changes no register
//     (its return too: the return address is where it was);
//   - where SSL_read or SSL_read_ex begins with an instruction
//     single-stepped, and both begin by calling one function of the
//     library's own, which begins with an instruction emulated (OpenSSL
//     1.1.1 to 3.x's ssl_read_internal, whose arguments are
//     SSL_read_ex's), that function is probed instead of the two;
//     likewise SSL_write's pair (ssl_write_internal, which takes flags
//     before the count's pointer in 3.3 and later, where SSL_write_ex2 is
//     exported). Their first calls must agree: a build that calls
//     something else first in one of them keeps its two entries.
func placesOf(f *elf.File) []tlsPlace {
	exported, err := exportedFunctions(f, slices.Concat(tlsSymbols, []string{"SSL_write_ex2"}))
	if err != nil || exported["SSL_read"] == 0 || exported["SSL_write"] == 0 || exported["SSL_do_handshake"] == 0 {
		return nil
	}
	code := codeReader{f}
	var places []tlsPlace
	pair := func(plain, ex, internal uint64) {
		plainAt, exAt := exported[tlsSymbols[plain]], exported[tlsSymbols[ex]]
		if exAt == 0 {
			// Before OpenSSL 1.1.1: no _ex forms.
			places = append(places, tlsPlace{code.entry(plainAt), plain, tlsSymbols[plain]})
			return
		}
		plainEntry, exEntry := code.entry(plainAt), code.entry(exAt)
		if !code.emulated(plainEntry) || !code.emulated(exEntry) {
			if callee, ok := code.firstCall(plainAt); ok {
				if other, ok := code.firstCall(exAt); ok && other == callee && code.emulated(code.entry(callee)) {
					name := "callee of " + tlsSymbols[plain] + " and " + tlsSymbols[ex]
					places = append(places, tlsPlace{code.entry(callee), internal, name})
					return
				}
			}
		}
		places = append(places, tlsPlace{plainEntry, plain, tlsSymbols[plain]}, tlsPlace{exEntry, ex, tlsSymbols[ex]})
	}
	internalWrite := fnWriteEx
	if exported["SSL_write_ex2"] != 0 {
		internalWrite = fnWriteEx2
	}
	pair(fnWrite, fnWriteEx, internalWrite)
	pair(fnRead, fnReadEx, fnReadEx)
	places = append(places, tlsPlace{code.entry(exported["SSL_do_handshake"]), fnHandshake, "SSL_do_handshake"})
	if free := exported[tlsFree]; free != 0 {
		places = append(places, tlsPlace{code.entry(free), fnFree, tlsFree})
	}
	return places
}

// codeReader reads an ELF file's code by file offset.
type codeReader struct{ f *elf.File }

// endbr64 is the instruction a function built with control-flow
// protection begins with, an indirect branch's landing mark.
var endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}

// segment is the loaded code segment that holds file offset off, if any.
func (c codeReader) segment(off uint64) *elf.Prog {
	for _, p := range c.f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && off >= p.Off && off < p.Off+p.Filesz {
			return p
		}
	}
	return nil
}

// at reads up to n bytes of code at file offset off (fewer at the end of
// its segment; none outside the code segments).
func (c codeReader) at(off uint64, n int) []byte {
	p := c.segment(off)
	if p == nil {
		return nil
	}
	b := make([]byte, min(uint64(n), p.Off+p.Filesz-off))
	k, _ := p.ReadAt(b, int64(off-p.Off))
	return b[:k]
}

// entry is where function off's entry uprobe goes: past an endbr64
// followed by an instruction emulated, else at its start.
func (c codeReader) entry(off uint64) uint64 {
	if bytes.HasPrefix(c.at(off, len(endbr64)), endbr64) && c.emulated(off+uint64(len(endbr64))) {
		return off + uint64(len(endbr64))
	}
	return off
}

// emulated tells whether the instruction at off is one the kernel
// emulates under a uprobe (arch/x86/kernel/uprobes.c: a push of a
// register, with no prefix but REX.B; a nop; a relative jmp), rather than
// single-stepping it.
func (c codeReader) emulated(off uint64) bool {
	b := c.at(off, 16)
	inst, err := x86asm.Decode(b, 64)
	if err != nil {
		return false
	}
	switch {
	case inst.Op == x86asm.PUSH && b[0] >= 0x50 && b[0] <= 0x57:
		return inst.Len == 1
	case inst.Op == x86asm.PUSH && b[0] == 0x41:
		return inst.Len == 2
	case inst.Op == x86asm.NOP:
		return inst.Len == 1 && b[0] == 0x90
	case inst.Op == x86asm.JMP && (b[0] == 0xeb || b[0] == 0xe9):
		return true
	}
	return false
}

// firstCall returns the file offset of the function that function off
// calls first, directly, on its way without jumps taken (a conditional
// jump falls through), if that function is in the file's .text (not a
// stub of another library's in the PLT) and the call comes within its
// first 16 instructions.
func (c codeReader) firstCall(off uint64) (uint64, bool) {
	code := c.at(off, 96)
	if bytes.HasPrefix(code, endbr64) {
		code, off = code[len(endbr64):], off+uint64(len(endbr64))
	}
	text, segment := c.f.Section(".text"), c.segment(off)
	if text == nil || segment == nil {
		return 0, false
	}
	vaddr := off - segment.Off + segment.Vaddr // where off is loaded
	for at, n := 0, 0; at < len(code) && n < 16; n++ {
		inst, err := x86asm.Decode(code[at:], 64)
		if err != nil {
			return 0, false
		}
		at += inst.Len
		switch inst.Op {
		case x86asm.CALL:
			rel, ok := inst.Args[0].(x86asm.Rel)
			if !ok {
				return 0, false // through a register or memory: not known here
			}
			target := vaddr + uint64(at) + uint64(int64(rel))
			if target < text.Addr || target >= text.Addr+text.Size {
				return 0, false
			}
			callee, err := fileOffset(c.f, target)
			return callee, err == nil
		case x86asm.RET, x86asm.JMP, x86asm.UD1, x86asm.UD2, x86asm.INT, x86asm.HLT:
			return 0, false
		}
	}
	return 0, false
}

// placesString says where the uprobes went, for the log: "SSL_write at
// 0x359c0, callee of SSL_read and SSL_read_ex at 0x352d0, ...".
func placesString(places []tlsPlace) string {
	var b strings.Builder
	for i, p := range places {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s at %#x", p.name, p.offset)
	}
	return b.String()
}
