package bpf

import (
	"debug/buildinfo"
	"debug/elf"
	"debug/gosym"
	"errors"
	"fmt"
	"go/version"
	"os"
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
)

// errNoGoTLS: the executable is no Go program that links crypto/tls.
var errNoGoTLS = errors.New("no Go crypto/tls")

// goTLSPlaces are where the uprobes go in a Go executable, as offsets in
// its file.
type goTLSPlaces struct {
	write, read uint64
	readReturns []uint64
}

// goTLSCookies says, for each place of places (in the order of
// goTLSPlaces.all), what it is to the program (enum go_tls_function).
func (p *goTLSPlaces) all() (offsets, cookies []uint64) {
	offsets = append([]uint64{p.write, p.read}, p.readReturns...)
	cookies = []uint64{0, 1}
	for range p.readReturns {
		cookies = append(cookies, 2)
	}
	return offsets, cookies
}

// goTLSCache remembers what an executable's inspection found, by file: a
// Deployment's replicas and a rescan of the same process read it once.
var goTLSCache struct {
	sync.Mutex
	m map[goFileKey]goTLSFound
}

type goFileKey struct {
	dev, ino    uint64
	size, mtime int64
}

type goTLSFound struct {
	places *goTLSPlaces
	err    error
}

// goTLSOf returns the places to probe in the executable at path (a
// /proc/PID/exe), errNoGoTLS if it is not a Go program with crypto/tls, or
// why such a program cannot be probed.
func goTLSOf(path string) (*goTLSPlaces, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, errNoGoTLS
	}
	key := goFileKey{dev: st.Dev, ino: st.Ino, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	goTLSCache.Lock()
	defer goTLSCache.Unlock()
	if found, ok := goTLSCache.m[key]; ok {
		return found.places, found.err
	}
	places, err := inspectGoTLS(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, err // gone: nothing learnt of the file
	}
	if goTLSCache.m == nil || len(goTLSCache.m) >= 256 {
		goTLSCache.m = map[goFileKey]goTLSFound{}
	}
	goTLSCache.m[key] = goTLSFound{places, err}
	return places, err
}

// inspectGoTLS reads a Go executable's function table for crypto/tls's
// Read and Write.
func inspectGoTLS(path string) (*goTLSPlaces, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, errNoGoTLS // not ELF, or unreadable: not a Go program to probe
	}
	defer f.Close()
	pcln := f.Section(".gopclntab")
	if pcln == nil {
		pcln = f.Section(".data.rel.ro.gopclntab") // a PIE's
	}
	text := f.Section(".text")
	if pcln == nil || text == nil {
		return nil, errNoGoTLS
	}
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, errNoGoTLS
	}
	// Arguments in registers: Go 1.17 and later, on amd64.
	if f.Machine != elf.EM_X86_64 || !version.IsValid(info.GoVersion) || version.Compare(info.GoVersion, "go1.17") < 0 {
		return nil, fmt.Errorf("Go crypto/tls is read in amd64 programs of Go 1.17 and later, not %s %s", info.GoVersion, f.Machine)
	}
	data, err := pcln.Data()
	if err != nil {
		return nil, fmt.Errorf("read .gopclntab: %w", err)
	}
	table, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil, fmt.Errorf("read .gopclntab: %w", err)
	}
	read, write := table.LookupFunc(goTLSRead), table.LookupFunc(goTLSWrite)
	if read == nil || write == nil {
		return nil, errNoGoTLS
	}
	places := &goTLSPlaces{}
	if places.write, err = fileOffset(f, write.Entry); err != nil {
		return nil, err
	}
	if places.read, err = fileOffset(f, read.Entry); err != nil {
		return nil, err
	}
	code := make([]byte, read.End-read.Entry)
	if _, err := text.ReadAt(code, int64(read.Entry-text.Addr)); err != nil {
		return nil, fmt.Errorf("read %s: %w", goTLSRead, err)
	}
	returns, err := returnOffsets(code)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", goTLSRead, err)
	}
	for _, r := range returns {
		places.readReturns = append(places.readReturns, places.read+r)
	}
	return places, nil
}

// returnOffsets disassembles a function's code and returns the offsets of
// its return instructions. A uprobe must start an instruction: any byte
// the decoder cannot place makes it refuse the whole function.
func returnOffsets(code []byte) ([]uint64, error) {
	var returns []uint64
	for at := 0; at < len(code); {
		inst, err := x86asm.Decode(code[at:], 64)
		if err != nil {
			return nil, fmt.Errorf("disassemble at +%#x: %w", at, err)
		}
		if inst.Op == x86asm.RET {
			returns = append(returns, uint64(at))
		}
		at += inst.Len
	}
	if len(returns) == 0 {
		return nil, errors.New("no return instruction")
	}
	return returns, nil
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
	return []*ebpf.Program{p.GoTLSWrite, p.GoTLSRead, p.GoTLSReadReturn}
}

// attachGo puts the uprobes on the Go program pid runs, a perf event each;
// with multi, one uprobe_multi link for all of them.
func (p *tlsProcess) attachGo(pid int, places *goTLSPlaces, progs tlsPrograms, multi *tlsMulti) error {
	exe, err := link.OpenExecutable(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return err
	}
	offsets, cookies := places.all()
	if multi != nil {
		l, err := exe.UprobeMulti(nil, multi.GoTLS, &link.UprobeMultiOptions{Addresses: offsets, Cookies: cookies, PID: uint32(pid)})
		if err != nil {
			return fmt.Errorf("uprobes on Go crypto/tls: %w", err)
		}
		p.links = append(p.links, l)
		return nil
	}
	// The returns first: a read entered without its return in would
	// leave its goroutine's entry until the LRU takes it.
	for i := len(offsets) - 1; i >= 0; i-- {
		l, err := exe.Uprobe("", progs.goTLS()[cookies[i]], &link.UprobeOptions{Address: offsets[i], PID: pid})
		if err != nil {
			return fmt.Errorf("uprobe on Go crypto/tls at %#x: %w", offsets[i], err)
		}
		p.links = append(p.links, l)
	}
	return nil
}
