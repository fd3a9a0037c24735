package bpf

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"go/version"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/arch/x86/x86asm"
)

// Go's crypto/tls (bpf/capture.c, "Go's crypto/tls"): a Go program's TLS
// is in its executable, not in a library. Its places to probe are found
// in the executable's function table (.gopclntab, which stripped binaries
// keep too), and Read's returns by disassembling it.

// The functions probed.
const (
	goTLSWrite = "crypto/tls.(*Conn).Write"
	goTLSRead  = "crypto/tls.(*Conn).Read"
	goMemmove  = "runtime.memmove" // which Read calls to copy its plaintext out
)

// errNoGoTLS: the executable is no Go program that links crypto/tls.
var errNoGoTLS = errors.New("no Go crypto/tls")

// goTLSPlaces are where the uprobes go in a Go executable, as offsets in
// its file: Write's and Read's first instruction past their stack check
// (at the function's very start a uprobe would fire twice for one call
// whenever Go grows the goroutine's stack or preempts it there: morestack
// starts the function again), and where Read's plaintext is known: its
// copy into the caller's buffer, else its return instructions.
//
// The copy is a call of runtime.memmove (Read's c.input.Read(b), inlined
// bytes.Reader.Read's copy), whose registers hold the plaintext's address
// and length: a call is an instruction the kernel emulates under a
// breakpoint, where a return is single-stepped, some 40 times dearer on
// a virtual machine (BENCHMARKS.md, "What a trap costs"). A Read that
// does not make exactly one such call (a Go version that does not inline
// it) is probed at its returns.
type goTLSPlaces struct {
	write, read           uint64
	writeEntry, readEntry uint64 // the functions' starts
	readCopy              uint64 // Read's call of runtime.memmove; 0: none, the returns instead
	readReturns           []uint64
}

// all returns the places with what each is to the program (enum
// go_tls_function, its cookie): the copy or the returns first, so that no
// read is entered with the uprobes before its end has one.
func (p *goTLSPlaces) all() (offsets, cookies []uint64) {
	if p.readCopy != 0 {
		offsets, cookies = append(offsets, p.readCopy), append(cookies, 3)
	} else {
		for _, r := range p.readReturns {
			offsets, cookies = append(offsets, r), append(cookies, 2)
		}
	}
	return append(offsets, p.write, p.read), append(cookies, 0, 1)
}

// goTLSCache remembers what an executable's inspection found, by file: a
// Deployment's replicas and a rescan of the same process read it once.
var goTLSCache struct {
	sync.Mutex
	m map[fileKey]goTLSFound
}

// fileKey names a file's content as well as its metadata can: ctime
// changes with any write and cannot be set back.
type fileKey struct {
	dev, ino           uint64
	size, mtime, ctime int64
}

// keyOf names the content of the open file f.
func keyOf(f *os.File) (fileKey, error) {
	fi, err := f.Stat()
	if err != nil {
		return fileKey{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, fmt.Errorf("%s: no inode", f.Name())
	}
	return fileKey{dev: st.Dev, ino: st.Ino, size: fi.Size(), mtime: fi.ModTime().UnixNano(), ctime: st.Ctim.Nano()}, nil
}

type goTLSFound struct {
	places *goTLSPlaces
	err    error
}

// errGoTLSUnsupported wraps what inspecting an executable's content
// concluded: remembered for the file, as errNoGoTLS is.
type errGoTLSUnsupported struct{ error }

// goTLSOf returns the places to probe in exe, a process's executable
// opened once (what is inspected is what gets the uprobes, whatever the
// process does meanwhile), errNoGoTLS if it is not a Go program with
// crypto/tls, or why such a program cannot be probed.
func goTLSOf(exe *os.File) (*goTLSPlaces, error) {
	key, err := keyOf(exe)
	if err != nil {
		return nil, err
	}
	goTLSCache.Lock()
	defer goTLSCache.Unlock()
	if found, ok := goTLSCache.m[key]; ok && (found.places == nil || found.places.stillIn(exe)) {
		return found.places, found.err
	}
	places, err := inspectGoTLS(exe)
	var unsupported errGoTLSUnsupported
	if err != nil && !errors.Is(err, errNoGoTLS) && !errors.As(err, &unsupported) {
		return nil, err // the file could not be read: nothing learnt of it
	}
	if goTLSCache.m == nil || len(goTLSCache.m) >= 256 {
		goTLSCache.m = map[fileKey]goTLSFound{}
	}
	goTLSCache.m[key] = goTLSFound{places, err}
	return places, err
}

// stillIn tells whether exe's functions still start where p says, with
// the stack checks p found, and return where it says: a file of the same
// inode, size and times is another build only by a rare chance, and the
// uprobes must never land inside an instruction.
func (p *goTLSPlaces) stillIn(exe io.ReaderAt) bool {
	code := make([]byte, 32)
	for _, f := range [][2]uint64{{p.writeEntry, p.write}, {p.readEntry, p.read}} {
		if _, err := exe.ReadAt(code, int64(f[0])); err != nil {
			return false
		}
		if at, ok := goPrologue(code); !ok || f[0]+uint64(at) != f[1] {
			return false
		}
	}
	for _, r := range p.readReturns {
		if _, err := exe.ReadAt(code[:1], int64(r)); err != nil || code[0] != 0xc3 {
			return false
		}
	}
	if p.readCopy != 0 {
		if _, err := exe.ReadAt(code[:1], int64(p.readCopy)); err != nil || code[0] != 0xe8 {
			return false
		}
	}
	return true
}

// inspectGoTLS reads a Go executable's function table for crypto/tls's
// Read and Write. It reads the file a window at a time, never whole: a
// large Go program's table is tens of MB once decoded, more than the
// agent's whole budget.
func inspectGoTLS(exe *os.File) (*goTLSPlaces, error) {
	f, err := elf.NewFile(exe)
	if err != nil {
		return nil, errNoGoTLS // not ELF: not a Go program to probe
	}
	pcln := f.Section(".gopclntab")
	if pcln == nil {
		pcln = f.Section(".data.rel.ro.gopclntab") // a PIE's
	}
	if pcln == nil || pcln.Type == elf.SHT_NOBITS {
		return nil, errNoGoTLS
	}
	info, err := buildinfo.Read(exe)
	if err != nil {
		return nil, errNoGoTLS
	}
	// Arguments in registers from Go 1.17 on amd64; this function
	// table's layout from Go 1.18. The version may say more after a
	// space ("go1.22.5 X:boringcrypto").
	goVersion, _, _ := strings.Cut(info.GoVersion, " ")
	if f.Machine != elf.EM_X86_64 || !version.IsValid(goVersion) || version.Compare(goVersion, "go1.18") < 0 {
		return nil, errGoTLSUnsupported{fmt.Errorf("Go crypto/tls is read in amd64 programs of Go 1.18 and later, not %s %s", info.GoVersion, f.Machine)}
	}
	table, err := readFuncTable(pcln)
	if err != nil {
		return nil, err
	}
	funcs, err := table.lookup(goTLSRead, goTLSWrite, goMemmove)
	if err != nil {
		return nil, err
	}
	if funcs == nil {
		return nil, errNoGoTLS
	}
	// Function addresses are offsets from the start of the Go code,
	// which is the .text section's only when the Go linker laid it out
	// (not with cgo's external linking): the runtime's module data says.
	text, err := moduleText(f, pcln.Addr, pcln.Addr+table.funcnames)
	if err != nil {
		return nil, err
	}
	places := &goTLSPlaces{}
	memmove := text + uint64(funcs[2][0])
	for i, fn := range funcs[:2] {
		entry, end := text+uint64(fn[0]), text+uint64(fn[1])
		code, err := readCode(f, entry, end)
		if err != nil {
			return nil, err
		}
		// The uprobes must go at the start of instructions of the right
		// function: a Go function starts with its stack check against
		// the goroutine's bound (R14 is its g); anything else means the
		// addresses are not what they seem, and nothing is probed.
		body, ok := goPrologue(code)
		if !ok {
			return nil, errGoTLSUnsupported{fmt.Errorf("%s at %#x does not start as a Go function: not probed", []string{goTLSRead, goTLSWrite}[i], entry)}
		}
		offset, err := fileOffset(f, entry)
		if err != nil {
			return nil, err
		}
		if i == 1 {
			places.writeEntry, places.write = offset, offset+uint64(body)
			continue
		}
		places.readEntry, places.read = offset, offset+uint64(body)
		returns, copies, err := readEnds(code, entry, memmove)
		if err != nil {
			return nil, errGoTLSUnsupported{fmt.Errorf("%s: %w", goTLSRead, err)}
		}
		if len(copies) == 1 {
			places.readCopy = offset + copies[0]
			continue
		}
		for _, r := range returns {
			places.readReturns = append(places.readReturns, offset+r)
		}
	}
	return places, nil
}

// funcTable is a Go 1.18+ function table (.gopclntab, the runtime's
// pcHeader and what follows it).
type funcTable struct {
	r         io.ReaderAt
	nfunc     uint64
	funcnames uint64 // where the function names start, from the table's start
	names     uint64 // and end (the compilation units' table follows)
	funcs     uint64 // where the function entries (functab) and their data start
}

func readFuncTable(pcln *elf.Section) (*funcTable, error) {
	var h [8 + 8*8]byte
	if _, err := pcln.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("read .gopclntab: %w", err)
	}
	magic := binary.LittleEndian.Uint32(h[:])
	if magic != 0xfffffff0 && magic != 0xfffffff1 || h[7] != 8 {
		return nil, errGoTLSUnsupported{fmt.Errorf(".gopclntab of an unknown layout (magic %#x, pointer size %d)", magic, h[7])}
	}
	word := func(i int) uint64 { return binary.LittleEndian.Uint64(h[8+8*i:]) }
	return &funcTable{r: pcln, nfunc: word(0), funcnames: word(3), names: word(4), funcs: word(7)}, nil
}

// lookup returns the entry and end of each named function, as offsets
// from the start of the Go code; nil when one is not in the table.
func (t *funcTable) lookup(names ...string) ([][2]uint32, error) {
	nameOffsets := map[uint32]int{} // where each name is, in the names
	for i, name := range names {
		at, err := findName(io.NewSectionReader(t.r, int64(t.funcnames), int64(t.names-t.funcnames)), int64(t.names-t.funcnames), name)
		if err != nil {
			return nil, fmt.Errorf("read .gopclntab: %w", err)
		}
		if at < 0 {
			return nil, nil
		}
		nameOffsets[uint32(at)] = i
	}
	// functab: nfunc pairs of (entry, offset of the function's data),
	// then the end of the last function; a function's data starts with
	// its entry and the offset of its name.
	found := make([][2]uint32, len(names))
	left := len(names)
	tab, data := newWindow(t.r), newWindow(t.r)
	for i := uint64(0); i < t.nfunc && left > 0; i++ {
		funcoff, err := tab.uint32(int64(t.funcs + 8*i + 4))
		if err != nil {
			return nil, fmt.Errorf("read .gopclntab: %w", err)
		}
		nameOff, err := data.uint32(int64(t.funcs + uint64(funcoff) + 4))
		if err != nil {
			return nil, fmt.Errorf("read .gopclntab: %w", err)
		}
		j, ok := nameOffsets[nameOff]
		if !ok {
			continue
		}
		entry, err1 := tab.uint32(int64(t.funcs + 8*i))
		end, err2 := tab.uint32(int64(t.funcs + 8*(i+1)))
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("read .gopclntab: %w", err)
		}
		if end <= entry {
			return nil, errGoTLSUnsupported{fmt.Errorf("%s: no code (%#x-%#x)", names[j], entry, end)}
		}
		found[j] = [2]uint32{entry, end}
		delete(nameOffsets, nameOff)
		left--
	}
	if left > 0 {
		return nil, nil
	}
	return found, nil
}

// findName returns where name starts in r, size bytes of NUL-terminated
// names; -1 when it is not there.
func findName(r io.ReaderAt, size int64, name string) (int64, error) {
	want := []byte("\x00" + name + "\x00")
	buf := make([]byte, 64<<10)
	// Read from one byte before the start, a NUL there, so that the first
	// name matches too; windows overlap by a match less a byte.
	for at := int64(-1); at < size; at += int64(len(buf) - len(want) + 1) {
		var n int
		var err error
		if at < 0 {
			buf[0] = 0
			n, err = r.ReadAt(buf[1:], 0)
			n++
		} else {
			n, err = r.ReadAt(buf, at)
		}
		if err != nil && err != io.EOF {
			return 0, err
		}
		if i := bytes.Index(buf[:n], want); i >= 0 {
			return at + int64(i) + 1, nil
		}
		if at+int64(n) >= size {
			break
		}
	}
	return -1, nil
}

// window reads a file's little-endian words a chunk at a time, for reads
// that go forward.
type window struct {
	r     io.ReaderAt
	buf   []byte
	start int64
	n     int
}

func newWindow(r io.ReaderAt) *window { return &window{r: r, buf: make([]byte, 32<<10), start: -1} }

func (w *window) uint32(off int64) (uint32, error) {
	if w.start < 0 || off < w.start || off+4 > w.start+int64(w.n) {
		n, err := w.r.ReadAt(w.buf, off)
		if n < 4 {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		w.start, w.n = off, n
	}
	return binary.LittleEndian.Uint32(w.buf[off-w.start:]), nil
}

// moduleText finds where the Go code starts (the runtime's
// firstmoduledata.text) from the module data, which starts with the
// address of the function table (pclntab) and then that of its names
// (funcnames). In a position-dependent executable the addresses are in
// the file; in a PIE they are the addends of its relocations.
func moduleText(f *elf.File, pclntab, funcnames uint64) (uint64, error) {
	// Offsets in the module data (runtime.moduledata, Go 1.18 to 1.26):
	// pcHeader, funcnametab's pointer, ..., text after the six slices,
	// findfunctab, minpc and maxpc.
	const funcnamesAt, textAt = 8, 8 + 6*24 + 3*8
	for _, name := range []string{".go.module", ".noptrdata", ".data.rel.ro", ".data"} { // .go.module from Go 1.26
		sect := f.Section(name)
		if sect == nil || sect.Type == elf.SHT_NOBITS {
			continue
		}
		w := newWindow(sect)
		for off := int64(0); off+textAt+8 <= int64(sect.Size); off += 8 {
			lo, err := w.uint32(off)
			if err != nil {
				break
			}
			if lo != uint32(pclntab) {
				continue
			}
			var md [textAt + 8]byte
			if _, err := sect.ReadAt(md[:], off); err != nil {
				break
			}
			if binary.LittleEndian.Uint64(md[:]) == pclntab && binary.LittleEndian.Uint64(md[funcnamesAt:]) == funcnames {
				return binary.LittleEndian.Uint64(md[textAt:]), nil
			}
		}
	}
	if rela := f.Section(".rela.dyn"); rela != nil {
		// Relative relocations: the module data's first word's addend
		// is pclntab's address; then its words' addends are read.
		md, _, ok := relocated(rela, func(_, addend uint64) bool { return addend == pclntab })
		if ok {
			_, names, _ := relocated(rela, func(at, _ uint64) bool { return at == md+funcnamesAt })
			_, text, ok := relocated(rela, func(at, _ uint64) bool { return at == md+textAt })
			if ok && names == funcnames {
				return text, nil
			}
		}
	}
	return 0, errGoTLSUnsupported{errors.New("the Go runtime's module data was not found: the code's addresses are unknown, nothing is probed")}
}

// relocated returns the first relative relocation (R_X86_64_RELATIVE) in
// rela for which match holds: the address it writes, and its addend.
func relocated(rela *elf.Section, match func(at, addend uint64) bool) (at, addend uint64, ok bool) {
	const relative = 8
	buf := make([]byte, 24*1024)
	for off := int64(0); off < int64(rela.Size); off += int64(len(buf)) {
		n, _ := rela.ReadAt(buf, off)
		for e := buf[:n-n%24]; len(e) > 0; e = e[24:] {
			at, info, addend := binary.LittleEndian.Uint64(e), binary.LittleEndian.Uint64(e[8:]), binary.LittleEndian.Uint64(e[16:])
			if uint32(info) == relative && match(at, addend) {
				return at, addend, true
			}
		}
		if n < len(buf) {
			break
		}
	}
	return 0, 0, false
}

// readCode reads the code from entry to end.
func readCode(f *elf.File, entry, end uint64) ([]byte, error) {
	for _, sect := range f.Sections {
		if sect.Flags&elf.SHF_EXECINSTR != 0 && entry >= sect.Addr && end <= sect.Addr+sect.Size {
			code := make([]byte, end-entry)
			if _, err := sect.ReadAt(code, int64(entry-sect.Addr)); err != nil {
				return nil, err
			}
			return code, nil
		}
	}
	return nil, fmt.Errorf("code at %#x-%#x in no section", entry, end)
}

// goPrologue finds a Go function's stack check at the start of code (Go
// 1.17+ on amd64): a compare of the stack pointer, or of a register it
// was moved or lowered into, with the goroutine's stack bound, 16 bytes
// into its g (R14), among the first three instructions, then the
// conditional jump to the stack's growth. It returns where the code after
// that jump starts, which a call runs once.
func goPrologue(code []byte) (int, bool) {
	checked := false
	for at, i := 0, 0; i < 4 && at < len(code); i++ {
		inst, err := x86asm.Decode(code[at:], 64)
		if err != nil {
			return 0, false
		}
		at += inst.Len
		if checked {
			if inst.Op != x86asm.JBE && inst.Op != x86asm.JB {
				return 0, false
			}
			return at, true
		}
		if inst.Op == x86asm.CMP {
			for _, arg := range inst.Args {
				if m, ok := arg.(x86asm.Mem); ok && m.Base == x86asm.R14 && m.Disp == 16 {
					checked = true
				}
			}
		}
	}
	return 0, false
}

// readEnds disassembles a function's code, loaded at entry, and returns
// the offsets of its return instructions and of its calls of the function
// at memmove. A uprobe must start an instruction: any byte the decoder
// cannot place makes it refuse the whole function.
func readEnds(code []byte, entry, memmove uint64) (returns, copies []uint64, err error) {
	for at := 0; at < len(code); {
		inst, err := x86asm.Decode(code[at:], 64)
		if err != nil {
			return nil, nil, fmt.Errorf("disassemble at +%#x: %w", at, err)
		}
		switch inst.Op {
		case x86asm.RET:
			returns = append(returns, uint64(at))
		case x86asm.CALL:
			if rel, ok := inst.Args[0].(x86asm.Rel); ok && code[at] == 0xe8 && entry+uint64(at+inst.Len)+uint64(int64(rel)) == memmove {
				copies = append(copies, uint64(at))
			}
		}
		at += inst.Len
	}
	if len(returns) == 0 {
		return nil, nil, errors.New("no return instruction")
	}
	return returns, copies, nil
}

// fileOffset converts a virtual address of f's code to its offset in the
// file, where uprobes are placed.
func fileOffset(f *elf.File, addr uint64) (uint64, error) {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr < p.Vaddr+p.Filesz {
			return addr - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("address %#x in no loaded code segment", addr)
}

// goTLSPrograms are the programs on a Go program's crypto/tls when each
// uprobe is a perf event, in the order of enum go_tls_function.
func (p tlsPrograms) goTLS() []*ebpf.Program {
	return []*ebpf.Program{p.GoTLSWrite, p.GoTLSRead, p.GoTLSReadReturn, p.GoTLSReadCopy}
}

// attachGo puts the uprobes on the Go program pid runs, exe (the file
// inspected, open), a perf event each; with multi, one uprobe_multi link
// for all of them.
func (p *tlsProcess) attachGo(pid int, exe *os.File, places *goTLSPlaces, progs tlsPrograms, multi *tlsMulti) error {
	// By the agent's descriptor of the very file: the uprobes go on its
	// inode, and the pid filter finds nothing there if the process
	// exec'd another program since.
	ex, err := link.OpenExecutable(fmt.Sprintf("/proc/self/fd/%d", exe.Fd()))
	if err != nil {
		return err
	}
	offsets, cookies := places.all()
	if multi != nil {
		l, err := ex.UprobeMulti(nil, multi.GoTLS, &link.UprobeMultiOptions{Addresses: offsets, Cookies: cookies, PID: uint32(pid)})
		if err != nil {
			return fmt.Errorf("uprobes on Go crypto/tls: %w", err)
		}
		p.links = append(p.links, l)
		return nil
	}
	for i := range offsets {
		l, err := ex.Uprobe("", progs.goTLS()[cookies[i]], &link.UprobeOptions{Address: offsets[i], PID: pid})
		if err != nil {
			return fmt.Errorf("uprobe on Go crypto/tls at %#x: %w", offsets[i], err)
		}
		p.links = append(p.links, l)
	}
	return nil
}
