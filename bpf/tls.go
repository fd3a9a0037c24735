package bpf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ErrNoTLSLibrary is TraceTLS's answer for a process that maps no TLS
// library the agent reads: its TLS connections stay unread.
var ErrNoTLSLibrary = errors.New("no libssl mapped (a Go program's crypto/tls, a statically linked TLS library and Node.js's memory buffers are not read)")

// ErrNoTLSHooks is TraceTLS's answer with the syscall hooks, which do not
// follow TLS.
var ErrNoTLSHooks = errors.New("TLS is read with the socket hooks only (Linux 6.3+)")

// tlsTracer holds the uprobes put on the neighbours' TLS libraries.
type tlsTracer struct {
	progs tlsPrograms

	mu    sync.Mutex
	procs map[int]*tlsProcess
	done  bool // closed: no more uprobes
}

// tlsProcess is a process whose TLS library has the uprobes.
type tlsProcess struct {
	library string // the library's path, in the process's mount namespace
	start   string // the process's start time: a pid reused is another process
	links   []link.Link
}

// TraceTLS puts uprobes on the TLS library (OpenSSL's libssl) that process
// pid maps, for that process alone: the plaintext of its TLS connections
// then comes up as their events (FlagPlaintext). It returns the library's
// path, and nothing new for a process it traces already; ErrNoTLSLibrary
// when the process maps none. A connection's plaintext comes from the
// first call of SSL_read or SSL_write that sends or receives on its socket
// after the uprobes are in.
func (c *Capture) TraceTLS(pid int) (string, error) {
	t := c.tls
	if t == nil {
		return "", ErrNoTLSHooks
	}
	start, err := processStart(pid)
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return "", ErrClosed
	}
	if p := t.procs[pid]; p != nil {
		if p.start == start {
			return p.library, nil
		}
		p.close()
		delete(t.procs, pid)
	}
	library, err := sslLibrary(pid)
	if err != nil {
		return "", err
	}
	exe, err := link.OpenExecutable(fmt.Sprintf("/proc/%d/root%s", pid, library))
	if err != nil {
		return "", fmt.Errorf("open %s: %w", library, err)
	}
	p := &tlsProcess{library: library, start: start}
	probes := []struct {
		symbol   string
		entry    *ebpf.Program
		required bool
	}{
		{"SSL_write", t.progs.TLSWrite, true},
		{"SSL_read", t.progs.TLSRead, true},
		{"SSL_write_ex", t.progs.TLSWriteEx, false},
		{"SSL_read_ex", t.progs.TLSReadEx, false},
	}
	opts := &link.UprobeOptions{PID: pid}
	for _, probe := range probes {
		// The return first: an entry without its return would leave the
		// thread's call open.
		ret, err := exe.Uretprobe(probe.symbol, t.progs.TLSReturn, opts)
		if err != nil {
			if !probe.required && errors.Is(err, link.ErrNoSymbol) {
				continue
			}
			p.close()
			return "", fmt.Errorf("uretprobe %s in %s: %w", probe.symbol, library, err)
		}
		p.links = append(p.links, ret)
		entry, err := exe.Uprobe(probe.symbol, probe.entry, opts)
		if err != nil {
			p.close()
			return "", fmt.Errorf("uprobe %s in %s: %w", probe.symbol, library, err)
		}
		p.links = append(p.links, entry)
	}
	t.procs[pid] = p
	return library, nil
}

// UntraceTLS takes the uprobes off process pid's TLS library, if it had
// them; for a process that exited, it frees them.
func (c *Capture) UntraceTLS(pid int) {
	if c.tls == nil {
		return
	}
	c.tls.mu.Lock()
	defer c.tls.mu.Unlock()
	if p := c.tls.procs[pid]; p != nil {
		p.close()
		delete(c.tls.procs, pid)
	}
}

// TLSTraced returns the pids whose TLS libraries have the uprobes.
func (c *Capture) TLSTraced() []int {
	if c.tls == nil {
		return nil
	}
	c.tls.mu.Lock()
	defer c.tls.mu.Unlock()
	pids := make([]int, 0, len(c.tls.procs))
	for pid := range c.tls.procs {
		pids = append(pids, pid)
	}
	return pids
}

// close takes every uprobe off, for good.
func (t *tlsTracer) close() error {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for pid, p := range t.procs {
		errs = append(errs, p.close())
		delete(t.procs, pid)
	}
	t.done = true
	return errors.Join(errs...)
}

func (p *tlsProcess) close() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	return errors.Join(errs...)
}

// sslLibrary finds the libssl that process pid maps, as a path in its
// mount namespace.
func sslLibrary(pid int) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) != 6 || !strings.Contains(fields[1], "x") {
			continue
		}
		if file := fields[5]; isSSLLibrary(path.Base(file)) {
			return file, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", ErrNoTLSLibrary
}

// isSSLLibrary tells whether a file's name is OpenSSL's libssl
// (libssl.so.3, libssl.so.1.1; not libssl3.so, NSS's).
func isSSLLibrary(name string) bool {
	return name == "libssl.so" || strings.HasPrefix(name, "libssl.so.")
}

// processStart returns the start time of process pid (stat's field 22): a
// pid reused by another process has another.
func processStart(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", err
	}
	// The name (field 2) may hold spaces and parentheses: fields are
	// counted after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", fmt.Errorf("/proc/%d/stat: no name", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	return fields[19], nil
}
