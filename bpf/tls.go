package bpf

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/podtracer/podtracer/internal/kernel"
)

// tlsMaps are the maps that only TLS reading fills. The socket programs
// refer to them, so they exist with TLS off too, but then nothing is
// ever put in them (tls_probed stays 0).
var tlsMaps = []string{"tls_conns", "tls_calls", "go_tls_reads", "tls_h2", "tls_pids"}

// shrinkTLSMaps gives the TLS maps one entry each: with TLS off they
// would hold 17 MB of kernel memory, charged to the pod, for nothing.
func shrinkTLSMaps(spec *ebpf.CollectionSpec) {
	for _, name := range tlsMaps {
		spec.Maps[name].MaxEntries = 1
	}
}

// ErrNoTLSLibrary is TraceTLS's answer for a process that maps no TLS
// library the agent reads: its TLS connections stay unread.
var ErrNoTLSLibrary = errors.New("no libssl mapped, no OpenSSL exported by the executable, and no Go crypto/tls (a statically linked TLS library that exports nothing, and Java's, are not read)")

// ErrTLSNotSpoken is TraceTLS's answer for a Go program not seen to
// start a TLS connection yet, on a kernel where its uprobes would cost it
// something anyway: asked again with spoke, it probes it.
var ErrTLSNotSpoken = errors.New("a Go program's crypto/tls is probed at its first TLS connection on kernels before 6.10")

// ErrNoTLSHooks is TraceTLS's answer with the syscall hooks, which do not
// follow TLS, or without Config.TLS.
var ErrNoTLSHooks = errors.New("TLS is read with the socket hooks only (Linux 6.3+), when Config.TLS is on")

// tlsTracer holds the uprobes put on the neighbours' TLS libraries.
type tlsTracer struct {
	progs tlsPrograms
	// multi, when the kernel has uprobe_multi links with a working pid filter (Linux 6.10+), are the
	// programs attached with them instead of progs: one link for the
	// entries and one for the returns, per library and process, where
	// progs need a perf event per uprobe, scheduled in and out at each of
	// the process's context switches.
	multi *tlsMulti
	// loadMulti loads them, at the first TraceTLS: not at all for an
	// agent that reads no TLS, and after the garbage of loading the socket
	// programs is gone (a few MB of peak memory).
	loadMulti func() (*tlsMulti, error)
	logger    *slog.Logger
	// probed is the programs' tls_probed, set at the first uprobes: the
	// socket programs look for a thread's probed call from then on.
	probed *ebpf.Variable
	// pids is the programs' tls_pids: the processes whose libssl (or
	// linked-in OpenSSL) has the uprobes.
	pids *ebpf.Map

	mu    sync.Mutex
	procs map[int]*tlsProcess
	done  bool // closed: no more uprobes
}

// tlsProcess is a process whose TLS library has the uprobes.
type tlsProcess struct {
	libraries []string // the libraries' paths, in the process's mount namespace
	library   string   // and comma-separated
	refused   []string // libraries it loaded later whose uprobes failed: not tried again
	// goDone: its executable's crypto/tls has the uprobes, or refused
	// them; the scans do not inspect it again (an exec makes it another
	// process, by start).
	goDone bool
	// start is the process's start time and executable: a pid reused is
	// another process, and one that exec'd another program maps other
	// libraries.
	start string
	links []link.Link
}

// TraceTLS puts uprobes on the TLS libraries that process pid uses
// (OpenSSL's libssl, the copies of it that Python wheels bundle, a Go
// program's crypto/tls), for that process alone: the plaintext of its TLS
// connections then comes up as their events (FlagPlaintext). It returns
// the libraries' paths; for a process it traces already, it probes only
// the libraries mapped since, and takes the uprobes off one that exited or
// exec'd. ErrNoTLSLibrary when the process uses none. A libssl
// connection's plaintext comes from the first call of SSL_do_handshake,
// SSL_read or SSL_write that sends or receives on its socket after the
// uprobes are in; a Go connection's from its first Read or Write.
//
// spoke says that the process was seen to start a TLS connection: on
// kernels without uprobe_multi links (before 6.10), a Go program's
// crypto/tls is probed only then (before, ErrTLSNotSpoken, with the
// libraries probed, if any: its libssl's).
func (c *Capture) TraceTLS(pid int, spoke bool) (string, error) {
	t := c.tls
	if t == nil {
		return "", ErrNoTLSHooks
	}
	start, startErr := processStart(pid)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return "", ErrClosed
	}
	p := t.procs[pid]
	if p != nil && (startErr != nil || p.start != start) {
		// Gone, or another process under the pid now.
		t.forget(pid)
		p = nil
	}
	if startErr != nil {
		return "", startErr
	}
	libraries, err := tlsLibraries(pid, p == nil || !p.goDone)
	defer closeExecutables(libraries)
	if err != nil {
		if p != nil {
			return p.library, nil // its libraries were probed; maps could not be read again now
		}
		return "", err
	}
	if p == nil {
		p = &tlsProcess{start: start}
	}
	// Those not probed yet: all of a new process's; a library a traced
	// process loaded since (Python imports a wheel's copy when first used).
	var fresh []tlsLibrary
	for _, library := range libraries {
		if !slices.Contains(p.libraries, library.name) && !slices.Contains(p.refused, library.name) {
			fresh = append(fresh, library)
		}
	}
	if len(fresh) == 0 {
		return p.library, nil
	}
	if t.loadMulti != nil {
		var err error
		if t.multi, err = t.loadMulti(); err != nil {
			t.logger.Info("TLS uprobes as perf events, which cost each probed process's context switches a little (uprobe_multi links with a per-process filter need Linux 6.10+)",
				"reason", err)
		}
		t.loadMulti = nil
	}
	var pending error
	if t.multi == nil && !spoke && slices.ContainsFunc(fresh, func(l tlsLibrary) bool { return l.goTLS != nil }) {
		// A Go program links crypto/tls whenever it links net/http, TLS
		// or not; perf-event uprobes cost a process's context switches,
		// so they wait for its first TLS connection.
		fresh = slices.DeleteFunc(fresh, func(l tlsLibrary) bool { return l.goTLS != nil })
		pending = ErrTLSNotSpoken
		if len(fresh) == 0 {
			return p.library, pending
		}
	}
	ssl := false
	var failed error
	for _, library := range fresh {
		if library.exe == nil {
			// A libssl: opened and read only now that it is to be probed,
			// not at every scan of the process.
			library = openSSL(pid, library.name)
			if library.exe != nil {
				defer library.exe.Close()
			}
		}
		var err error
		switch {
		case library.goTLS != nil:
			err = p.attachGo(pid, library.exe, library.goTLS, t.progs, t.multi)
		case t.multi != nil:
			err = p.attachMulti(pid, library, t.multi)
		default:
			err = p.attach(pid, library, t.progs)
		}
		p.goDone = p.goDone || library.goTLS != nil
		if err != nil {
			// Not tried again for this process; the others are.
			p.refused = append(p.refused, library.name)
			failed = cmp.Or(failed, err)
			continue
		}
		p.libraries = append(p.libraries, library.name)
		ssl = ssl || library.goTLS == nil
		if library.places != nil {
			t.logger.Debug("TLS probes placed", "pid", pid, "library", library.name, "places", placesString(library.places))
		}
	}
	if len(p.libraries) == 0 {
		p.close()
		if pending != nil {
			// Its Go still waits for its first handshake.
			return "", fmt.Errorf("%w; %w", pending, failed)
		}
		return "", failed
	}
	if failed != nil {
		t.logger.Warn("cannot probe a TLS library of a neighbour", "pid", pid, "error", failed)
	}
	p.library = strings.Join(p.libraries, ",")
	t.procs[pid] = p
	// Only libssl's calls are followed by thread (tls_calls); Go's
	// programs find their connection in the tls.Conn.
	if ssl {
		if err := t.probed.Set(uint32(1)); err != nil {
			t.logger.Warn("set tls_probed: connections older than the agent are not recognised as TLS", "error", err)
		}
		if err := t.pids.Put(uint32(pid), uint8(1)); err != nil {
			t.logger.Debug("tls_pids full: a thread's first TLS read, before its first call, may be lost", "pid", pid, "error", err)
		}
	}
	return p.library, pending
}

// forget takes the uprobes off process pid, and forgets it. t.mu is held.
func (t *tlsTracer) forget(pid int) {
	if p := t.procs[pid]; p != nil {
		p.close()
		delete(t.procs, pid)
	}
	t.pids.Delete(uint32(pid))
}

// attach puts the uprobes on one OpenSSL that process pid uses, a perf
// event each.
func (p *tlsProcess) attach(pid int, library tlsLibrary, progs tlsPrograms) error {
	exe, err := openLibrary(library)
	if err != nil {
		return err
	}
	entries := [...]*ebpf.Program{fnWrite: progs.TLSWrite, fnWriteEx: progs.TLSWriteEx, fnRead: progs.TLSRead,
		fnReadEx: progs.TLSReadEx, fnHandshake: progs.TLSHandshake, fnFree: progs.TLSFree}
	for _, place := range library.places {
		opts := &link.UprobeOptions{PID: pid, Address: place.offset}
		// The return first: an entry without its return would leave the
		// thread's call open. SSL_free has its entry alone.
		if place.fn != fnFree {
			ret, err := exe.Uretprobe(place.name, progs.TLSReturn, opts)
			if err != nil {
				return fmt.Errorf("uretprobe %s in %s: %w", place.name, library.name, err)
			}
			p.links = append(p.links, ret)
		}
		entry, err := exe.Uprobe(place.name, entries[place.fn], opts)
		if err != nil {
			return fmt.Errorf("uprobe %s in %s: %w", place.name, library.name, err)
		}
		p.links = append(p.links, entry)
	}
	return nil
}

// tlsMulti are the programs attached with uprobe_multi links.
type tlsMulti struct {
	Enter  *ebpf.Program `ebpf:"tls_enter_multi"`
	Return *ebpf.Program `ebpf:"tls_return_multi"`
	GoTLS  *ebpf.Program `ebpf:"go_tls_multi"`
}

// loadTLSMulti loads the uprobe_multi programs, sharing the maps of the
// socket programs objs; an error on kernels before 6.10. Linux 6.6 brought
// uprobe_multi links, but until 6.10 (46ba0e49b642, "bpf: fix multi-uprobe
// PID filtering logic") their pid filter took the process's main thread
// alone: a threaded server's other threads would go unread.
func loadTLSMulti(spec *ebpf.CollectionSpec, objs socketObjects) (*tlsMulti, error) {
	if !kernel.AtLeast(6, 10) {
		return nil, errors.New("kernel before 6.10")
	}
	if err := features.HaveBPFLinkUprobeMulti(); err != nil {
		return nil, err
	}
	var multi tlsMulti
	err := spec.Copy().LoadAndAssign(&multi, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"events": objs.Events, "stats": objs.Stats, "tls_calls": objs.TLSCalls, "tls_conns": objs.TLSConns, "announced": objs.Announced,
		"go_tls_reads": objs.GoTLSReads, "tls_h2": objs.TLSH2,
	}})
	if err != nil {
		return nil, err
	}
	return &multi, nil
}

// openLibrary opens library, for its uprobes: by the agent's descriptor
// of the very file inspected (as attachGo does).
func openLibrary(library tlsLibrary) (*link.Executable, error) {
	if library.err != nil {
		return nil, library.err
	}
	exe, err := link.OpenExecutable(fmt.Sprintf("/proc/self/fd/%d", library.exe.Fd()))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", library.name, err)
	}
	return exe, nil
}

// attachMulti puts the uprobes on one OpenSSL that process pid uses,
// with a uprobe_multi link for the returns and one for the entries.
func (p *tlsProcess) attachMulti(pid int, library tlsLibrary, multi *tlsMulti) error {
	exe, err := openLibrary(library)
	if err != nil {
		return err
	}
	var returns, entries, cookies []uint64
	for _, place := range library.places {
		if place.fn != fnFree {
			returns = append(returns, place.offset)
		}
		entries = append(entries, place.offset)
		cookies = append(cookies, place.fn)
	}
	// The returns first: an entry without its return would leave the
	// thread's call open.
	ret, err := exe.UretprobeMulti(nil, multi.Return, &link.UprobeMultiOptions{PID: uint32(pid), Addresses: returns})
	if err != nil {
		return fmt.Errorf("uretprobes in %s: %w", library.name, err)
	}
	p.links = append(p.links, ret)
	entry, err := exe.UprobeMulti(nil, multi.Enter, &link.UprobeMultiOptions{PID: uint32(pid), Addresses: entries, Cookies: cookies})
	if err != nil {
		return fmt.Errorf("uprobes in %s: %w", library.name, err)
	}
	p.links = append(p.links, entry)
	return nil
}

// UntraceTLS takes the uprobes off process pid's TLS library, if it had
// them; for a process that exited, it frees them.
func (c *Capture) UntraceTLS(pid int) {
	if c.tls == nil {
		return
	}
	c.tls.mu.Lock()
	defer c.tls.mu.Unlock()
	c.tls.forget(pid)
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
	if t.multi != nil {
		errs = append(errs, t.multi.Enter.Close(), t.multi.Return.Close(), t.multi.GoTLS.Close())
		t.multi = nil
	}
	t.done = true
	return errors.Join(errs...)
}

// close takes the uprobes off, the last attached first: an entry's before
// its return's, so that no call is entered without its return to end it.
func (p *tlsProcess) close() error {
	var errs []error
	for i := len(p.links) - 1; i >= 0; i-- {
		errs = append(errs, p.links[i].Close())
	}
	p.links = nil
	return errors.Join(errs...)
}

// tlsLibrary is a TLS library a process uses: a libssl it maps, the
// OpenSSL its executable links in, or a Go program's own crypto/tls.
type tlsLibrary struct {
	name   string       // the path in the process's mount namespace; an executable's with " (Go crypto/tls)" or " (OpenSSL linked in)"
	goTLS  *goTLSPlaces // a Go program's places to probe
	places []tlsPlace   // or an OpenSSL's (sslPlaces; a libssl's once openSSL read it)
	exe    *os.File     // and the file, open (a libssl's once openSSL opened it)
	err    error        // or why its file cannot be probed
}

// closeExecutables closes the executables tlsLibraries opened.
func closeExecutables(libraries []tlsLibrary) {
	for _, l := range libraries {
		if l.exe != nil {
			l.exe.Close()
		}
	}
}

// tlsLibraries finds the TLS libraries process pid uses: its executable's
// crypto/tls, if it is a Go program (and withGo), or the OpenSSL it links
// in and exports (Node.js's), and the libssl copies it maps.
func tlsLibraries(pid int, withGo bool) ([]tlsLibrary, error) {
	var libraries []tlsLibrary
	library, ok, goErr := executableTLS(pid, withGo)
	if ok {
		libraries = append(libraries, library)
	}
	ssl, err := sslLibraries(pid)
	if err != nil && !errors.Is(err, ErrNoTLSLibrary) {
		closeExecutables(libraries)
		return nil, err
	}
	for _, name := range ssl {
		libraries = append(libraries, tlsLibrary{name: name})
	}
	if len(libraries) == 0 {
		if goErr != nil && !errors.Is(goErr, errNoGoTLS) && !errors.Is(goErr, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrNoTLSLibrary, goErr)
		}
		return nil, err
	}
	return libraries, nil
}

// openSSL opens libssl file name that process pid maps, and finds where
// its uprobes go; or says why it cannot be probed.
func openSSL(pid int, name string) tlsLibrary {
	library := tlsLibrary{name: name}
	file, err := os.Open(fmt.Sprintf("/proc/%d/root%s", pid, name))
	if err != nil {
		library.err = fmt.Errorf("open %s: %w", name, err)
		return library
	}
	if library.places, err = sslPlaces(file); err != nil {
		file.Close()
		library.err = fmt.Errorf("%s: %w", name, err)
		return library
	}
	library.exe = file
	return library
}

// executableTLS finds the TLS library in process pid's executable, if
// any: its crypto/tls if it is a Go program (and withGo), else the
// OpenSSL it links in and exports (Node.js's: its native addons call it;
// a statically linked OpenSSL that exports nothing cannot be found). The
// file is opened once, and stays open in the library found: what is
// inspected is what gets the uprobes, whatever the process does
// meanwhile. goErr says why it is no Go program the agent probes (nil
// without withGo); a file that cannot be read leaves the process's libssl
// copies to be probed all the same.
func executableTLS(pid int, withGo bool) (library tlsLibrary, ok bool, goErr error) {
	path := fmt.Sprintf("/proc/%d/exe", pid)
	exe, err := os.Open(path)
	if err != nil {
		if withGo {
			goErr = err
		}
		return tlsLibrary{}, false, goErr
	}
	name, _ := os.Readlink(path)
	if withGo {
		places, err := goTLSOf(exe)
		if err == nil {
			return tlsLibrary{name: name + " (Go crypto/tls)", goTLS: places, exe: exe}, true, nil
		}
		goErr = err
	}
	if places, err := sslPlaces(exe); err == nil {
		return tlsLibrary{name: name + " (OpenSSL linked in)", places: places, exe: exe}, true, goErr
	}
	exe.Close()
	return tlsLibrary{}, false, goErr
}

// sslLibraries finds the libssl copies that process pid maps, as paths in
// its mount namespace.
func sslLibraries(pid int) ([]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var libraries []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// address perms offset dev inode path. A deleted file (the
		// package upgraded under the process) has " (deleted)" after its
		// path, which names another file now: not probed.
		fields := strings.Fields(sc.Text())
		if len(fields) != 6 || !strings.Contains(fields[1], "x") {
			continue
		}
		if file := fields[5]; isSSLLibrary(path.Base(file)) && !slices.Contains(libraries, file) {
			libraries = append(libraries, file)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(libraries) == 0 {
		return nil, ErrNoTLSLibrary
	}
	return libraries, nil
}

// isSSLLibrary tells whether a file's name is OpenSSL's libssl:
// libssl.so.3, libssl.so.1.1, or a copy a Python wheel bundles
// (libssl-1b2c3d4e.so.3); not NSS's libssl3.so.
func isSSLLibrary(name string) bool {
	base, _, ok := strings.Cut(name, ".so")
	return ok && (base == "libssl" || strings.HasPrefix(base, "libssl-")) && (strings.HasPrefix(name[len(base):], ".so.") || name[len(base):] == ".so")
}

// processStart returns the start time of process pid (stat's field 22),
// with its executable: a pid reused by another process has another start,
// and an exec another executable, most often.
func processStart(pid int) (string, error) {
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	start, err := startTime(pid)
	return start + " " + exe, err
}

func startTime(pid int) (string, error) {
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
