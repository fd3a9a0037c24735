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
// program's cookies, as enum tls_function in capture.c, and the indexes
// of their names in tlsSymbols.
const (
	fnWrite     uint64 = iota // SSL_write
	fnWriteEx                 // SSL_write_ex, or the internal write both call
	fnRead                    // SSL_read
	fnReadEx                  // SSL_read_ex, or the internal read both call
	fnHandshake               // SSL_do_handshake
	fnFree                    // SSL_free: its entry alone
)

// tlsSymbols are the functions of OpenSSL that are probed (or stand for
// the function they call: placesOf), by their fn constants; the _ex
// forms are in OpenSSL 1.1.1 and later, the others in every libssl.
// SSL_free is probed at its entry alone (tlsFree), the others at their
// returns too.
var tlsSymbols = [...]string{fnWrite: "SSL_write", fnWriteEx: "SSL_write_ex", fnRead: "SSL_read", fnReadEx: "SSL_read_ex",
	fnHandshake: "SSL_do_handshake", fnFree: tlsFree}

const tlsFree = "SSL_free"

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
//     single-stepped, and SSL_read_ex does nothing but make room on the
//     stack before it calls a function of the library's own, not
//     exported, that begins with an instruction emulated, and SSL_read
//     calls the same function first with a count's pointer on its stack
//     in the fourth argument's register, that function is probed instead
//     of the two: it has SSL_read_ex's arguments (OpenSSL 1.1.1 to 3.x's
//     ssl_read_internal). Likewise SSL_write's pair, with another
//     function (ssl_write_internal). A build that calls anything else
//     first, or inlines the call, keeps its entries; so does OpenSSL
//     3.3+'s write, whose SSL_write_ex calls SSL_write_ex2.
//
// A place is always a function's first instruction, or the one after its
// endbr64: a wrong guess of a function's arguments would lose or garble
// plaintext, never break the neighbour.
func placesOf(f *elf.File) []tlsPlace {
	// The functions probed, and others that wrappers call, which a
	// function found called must not be.
	names := slices.Concat(tlsSymbols[:], []string{"SSL_peek", "SSL_peek_ex", "SSL_write_ex2"})
	exported, err := exportedFunctions(f, names)
	if errors.Is(err, errNoGNUHash) {
		exported, err = dynamicFunctions(f, names)
	}
	if err != nil || exported["SSL_read"].offset == 0 || exported["SSL_write"].offset == 0 || exported["SSL_do_handshake"].offset == 0 {
		return nil
	}
	code := codeReader{f}
	// entry is where exported function fn's uprobe goes (0: none such).
	entry := func(fn uint64) uint64 {
		if e := exported[tlsSymbols[fn]]; e.offset != 0 {
			return code.entry(e.offset, e.size)
		}
		return 0
	}
	// callee is the function a pair calls first that stands for both, if
	// any.
	callee := func(plain, ex uint64) uint64 {
		if entry(ex) == 0 || code.emulated(entry(plain)) && code.emulated(entry(ex)) {
			return 0 // before OpenSSL 1.1.1, no _ex forms; or nothing to gain
		}
		fromPlain, fromEx := code.firstCall(exported[tlsSymbols[plain]].offset), code.firstCall(exported[tlsSymbols[ex]].offset)
		c := fromEx.callee
		if c == 0 || fromPlain.callee != c || !fromEx.argumentsKept || !fromPlain.countOnStack || isExported(exported, c) || !code.emulated(code.entry(c, 0)) {
			return 0
		}
		return c
	}
	write, read := callee(fnWrite, fnWriteEx), callee(fnRead, fnReadEx)
	if write == read {
		write, read = 0, 0 // one function is not both the read and the write
	}
	var places []tlsPlace
	pair := func(plain, ex, callee uint64) {
		switch {
		case callee != 0:
			name := "callee of " + tlsSymbols[plain] + " and " + tlsSymbols[ex]
			places = append(places, tlsPlace{code.entry(callee, 0), ex, name})
		case entry(ex) == 0:
			places = append(places, tlsPlace{entry(plain), plain, tlsSymbols[plain]})
		default:
			places = append(places, tlsPlace{entry(plain), plain, tlsSymbols[plain]}, tlsPlace{entry(ex), ex, tlsSymbols[ex]})
		}
	}
	pair(fnWrite, fnWriteEx, write)
	pair(fnRead, fnReadEx, read)
	places = append(places, tlsPlace{entry(fnHandshake), fnHandshake, "SSL_do_handshake"})
	if free := entry(fnFree); free != 0 {
		places = append(places, tlsPlace{free, fnFree, tlsFree})
	}
	return places
}

// isExported tells whether off is one of the functions found exported
// (placesOf's names).
func isExported(exported map[string]exportedFunction, off uint64) bool {
	for _, fn := range exported {
		if fn.offset == off {
			return true
		}
	}
	return false
}

// dynamicFunctions finds the functions of names that an ELF file exports
// by reading its whole dynamic symbol table: for a library linked
// without a GNU hash table (a libssl's table is small).
func dynamicFunctions(f *elf.File, names []string) (map[string]exportedFunction, error) {
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil, err
	}
	found := map[string]exportedFunction{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Section == elf.SHN_UNDEF || s.Value == 0 || !slices.Contains(names, s.Name) {
			continue
		}
		if off, err := fileOffset(f, s.Value); err == nil {
			found[s.Name] = exportedFunction{off, s.Size}
		}
	}
	return found, nil
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

// entry is where the uprobe of function off, size bytes long (0: not
// known), goes: at its first instruction the kernel emulates among
//   - its first;
//   - the one after an endbr64, which changes no register;
//   - the one after a check that its first argument is not NULL (test
//     %rdi,%rdi; je), which OpenSSL 3.5's builds put before their
//     prologue: a call with an object goes on to it with the registers
//     and the stack as they came (a NULL one returns unprobed), and the
//     same code runs from there to the function's return, so [rsp] there
//     is the return address the uretprobe takes. Only where the
//     function's size is known, and no jump of the function's lands
//     there, or between (a review found none from elsewhere either, in
//     Node.js 24's OpenSSL and Debian's libssl).
//
// Otherwise at its start.
func (c codeReader) entry(off, size uint64) uint64 {
	at := off
	if bytes.HasPrefix(c.at(off, len(endbr64)), endbr64) {
		at += uint64(len(endbr64))
	}
	if c.emulated(at) {
		return at
	}
	if past, ok := c.pastNullCheck(off, at, size); ok && c.emulated(past) {
		return past
	}
	return off
}

// pastNullCheck returns where the code after a check of the first
// argument at at (test %rdi,%rdi; je) starts, in the function at off of
// size bytes, if nothing of the function jumps into the check or to that
// place: the function decoded whole, every relative jump's target.
func (c codeReader) pastNullCheck(off, at, size uint64) (uint64, bool) {
	if size == 0 || size > 1<<16 {
		return 0, false
	}
	code := c.at(off, int(size))
	if uint64(len(code)) != size {
		return 0, false
	}
	pos := int(at - off)
	test, err := x86asm.Decode(code[pos:], 64)
	if err != nil || test.Op != x86asm.TEST || test.Args[0] != x86asm.RDI || test.Args[1] != x86asm.RDI {
		return 0, false
	}
	je, err := x86asm.Decode(code[pos+test.Len:], 64)
	if _, rel := je.Args[0].(x86asm.Rel); err != nil || je.Op != x86asm.JE || !rel {
		return 0, false
	}
	past := pos + test.Len + je.Len
	for i := pos; i < len(code); { // past an endbr64, which x86asm does not know
		inst, err := x86asm.Decode(code[i:], 64)
		if err != nil {
			return 0, false // not decoded whole: its jumps are not known
		}
		i += inst.Len
		if rel, ok := inst.Args[0].(x86asm.Rel); ok && inst.Op != x86asm.CALL {
			if target := i + int(rel); target > 0 && target <= past {
				return 0, false
			}
		}
	}
	return off + uint64(past), true
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

// callSite is the first call a function makes, on its way without jumps
// taken, and what it did before it.
type callSite struct {
	callee uint64 // the file offset of the function called, in .text; 0: none found
	// argumentsKept: the function did nothing before the call but make
	// room on the stack (a sub from rsp, a push, a nop): the callee gets
	// its arguments as they came.
	argumentsKept bool
	// countOnStack: the fourth argument's register, rcx, was last given
	// an address on the stack (mov %rsp or lea off(%rsp)), as SSL_read
	// passes the count's pointer to the function that SSL_read_ex calls.
	countOnStack bool
}

// firstCall finds the first call function off makes, directly, on its way
// without jumps taken (a conditional jump falls through), within its
// first 16 instructions, to a function in the file's .text (not a stub of
// another library's in the PLT).
func (c codeReader) firstCall(off uint64) callSite {
	code := c.at(off, 96)
	if bytes.HasPrefix(code, endbr64) {
		code, off = code[len(endbr64):], off+uint64(len(endbr64))
	}
	text, segment := c.f.Section(".text"), c.segment(off)
	if text == nil || segment == nil {
		return callSite{}
	}
	vaddr := off - segment.Off + segment.Vaddr // where off is loaded
	site := callSite{argumentsKept: true}
	for at, n := 0, 0; at < len(code) && n < 16; n++ {
		inst, err := x86asm.Decode(code[at:], 64)
		if err != nil {
			return callSite{}
		}
		at += inst.Len
		switch inst.Op {
		case x86asm.CALL:
			rel, ok := inst.Args[0].(x86asm.Rel)
			if !ok {
				return callSite{} // through a register or memory: not known here
			}
			target := vaddr + uint64(at) + uint64(int64(rel))
			if target < text.Addr || target >= text.Addr+text.Size {
				return callSite{}
			}
			if site.callee, err = fileOffset(c.f, target); err != nil {
				return callSite{}
			}
			return site
		case x86asm.RET, x86asm.JMP, x86asm.UD1, x86asm.UD2, x86asm.INT, x86asm.HLT:
			return callSite{}
		case x86asm.PUSH, x86asm.NOP:
			continue
		case x86asm.SUB:
			if inst.Args[0] == x86asm.RSP {
				continue
			}
		}
		site.argumentsKept = false
		if reg, ok := inst.Args[0].(x86asm.Reg); ok && (reg == x86asm.RCX || reg == x86asm.ECX || reg == x86asm.CX || reg == x86asm.CL) {
			site.countOnStack = stackAddress(inst)
		}
	}
	return callSite{}
}

// stackAddress tells whether inst puts an address on the stack in its
// destination: mov %rsp, or lea off(%rsp).
func stackAddress(inst x86asm.Inst) bool {
	switch inst.Op {
	case x86asm.MOV:
		return inst.Args[0] == x86asm.RCX && inst.Args[1] == x86asm.RSP
	case x86asm.LEA:
		m, ok := inst.Args[1].(x86asm.Mem)
		return ok && inst.Args[0] == x86asm.RCX && m.Base == x86asm.RSP && m.Index == 0
	}
	return false
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
