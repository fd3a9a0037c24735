package pod

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Selection says which neighbours to trace. Every criterion given must
// match; with none, every neighbour is traced.
type Selection struct {
	// OpenPorts selects processes listening on one of these TCP ports, or
	// serving a connection accepted on one (LookupServing).
	OpenPorts Ports
	// Executable selects processes whose executable path matches.
	Executable *regexp.Regexp
}

// recheckAfter is how long a "not selected" verdict holds: a process may
// open its port after its first connection.
const recheckAfter = 5 * time.Second

// refreshAfter is how long what was read of a process is trusted: a pid
// can be reused, and a process can exec another program.
const refreshAfter = time.Minute

// maxCached bounds the process cache; beyond it, the oldest entries go.
const maxCached = 4096

// Registry knows the neighbour processes: it reads them from /proc when
// they first show up in the capture and caches who they are and whether
// they are selected. Discovery enriches, it never gates: a process gone
// before it could be read is still traced, named by its kernel comm.
type Registry struct {
	procRoot  string
	selection Selection
	logger    *slog.Logger

	mu      sync.Mutex
	entries map[uint32]*entry
	denied  bool // a neighbour's /proc entry was refused: logged once
	// listening are the inodes of the sockets listening on a selected
	// port, read at listeningAt (listens).
	listening   map[uint64]bool
	listeningAt time.Time
}

type entry struct {
	proc     *Process
	selected bool
	checked  time.Time
	comm     string // the kernel's name for the process when it was read
	exeOK    bool   // its names match the executable selection (or there is none)
	served   bool   // it served a connection on a selected port (LookupServing), as this program
}

// NewRegistry returns a registry reading procRoot (normally "/proc").
func NewRegistry(procRoot string, sel Selection, logger *slog.Logger) *Registry {
	return &Registry{procRoot: procRoot, selection: sel, logger: logger, entries: make(map[uint32]*entry)}
}

// Lookup returns the process pid, or nil when it is not selected. comm is
// the kernel's name for it ("" when the event had none), used when /proc
// no longer has the process.
func (r *Registry) Lookup(pid uint32, comm string) *Process {
	return r.LookupServing(pid, comm, 0)
}

// LookupServing is Lookup for a connection whose local port is local (0:
// unknown). A process serving a connection on a port of the selection is
// selected by it, whether it listens or not: in Node.js's cluster module
// (and PM2's) the primary listens and its workers serve the connections
// it accepts.
func (r *Registry) LookupServing(pid uint32, comm string, local uint16) *Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	serves := local != 0 && r.selection.OpenPorts.Contains(local)
	e := r.entries[pid]
	switch {
	case e == nil:
		if len(r.entries) >= maxCached {
			r.makeRoom(now)
		}
		e = &entry{}
		r.entries[pid] = e
	case comm != "" && e.comm != comm:
		// Its name changed, which an exec does (a wrapper script that
		// exec's the server keeps its pid): another program, read again.
		*e = entry{}
	case e.selected && now.Sub(e.checked) <= refreshAfter:
		return e.proc
	case !e.selected && now.Sub(e.checked) < recheckAfter:
		if !serves || !e.exeOK {
			return nil
		}
		e.served, e.selected = true, true
		return e.proc
	}
	// Read at every check, not only the first: since the last one, the
	// process may have exec'd the selected program, or exited and left its
	// pid to another.
	e.proc = ReadProcess(r.procRoot, int(pid), comm)
	e.checked = now
	if comm != "" {
		e.comm = comm
	}
	if e.proc.Exe == "" && !r.denied {
		_, err := os.Readlink(fmt.Sprintf("%s/%d/exe", r.procRoot, pid))
		r.warnDenied(err)
	}
	e.exeOK = r.matchesExecutable(e.proc)
	e.served = e.served || serves
	e.selected = e.exeOK && (len(r.selection.OpenPorts) == 0 || e.served || r.listens(e.proc))
	if e.selected {
		r.logger.Debug("tracing neighbour", "pid", pid, "executable", e.proc.Exe, "name", e.proc.Name)
		return e.proc
	}
	return nil
}

// Recheck is Lookup read again from /proc, whatever the cache says: for a
// program that has just started, which may listen on a port of the
// selection from one moment to the next.
func (r *Registry) Recheck(pid uint32, comm string) *Process {
	r.mu.Lock()
	if e := r.entries[pid]; e != nil {
		e.checked = time.Time{}
	}
	r.mu.Unlock()
	return r.Lookup(pid, comm)
}

// Forget drops what is known of pid, for instance after it exited, or
// exec'd another program.
func (r *Registry) Forget(pid uint32) {
	r.mu.Lock()
	delete(r.entries, pid)
	r.mu.Unlock()
}

// makeRoom drops, once the cache is full, the entries of the processes
// that have exited (a pod's exec probes and scripts leave thousands), read
// more than a minute ago: the last events of a process that just exited
// may still be on their way, and keep their identity. If that frees less
// than an eighth of the cache, the oldest entries go until it does: a
// scan of the cache once per maxCached/8 new processes at most, not one
// per new process.
func (r *Registry) makeRoom(now time.Time) {
	for pid, e := range r.entries {
		if now.Sub(e.checked) > time.Minute && !exists(r.procRoot, int(pid)) {
			delete(r.entries, pid)
		}
	}
	if keep := maxCached - maxCached/8; len(r.entries) > keep {
		pids := slices.SortedFunc(maps.Keys(r.entries), func(a, b uint32) int {
			return r.entries[a].checked.Compare(r.entries[b].checked)
		})
		for _, pid := range pids[:len(pids)-keep] {
			delete(r.entries, pid)
		}
	}
}

// matchesExecutable tells whether p's names match the executable
// selection, if there is one.
func (r *Registry) matchesExecutable(p *Process) bool {
	re := r.selection.Executable
	return re == nil || slices.ContainsFunc(executableNames(p), re.MatchString)
}

// listens tells whether p holds a socket listening on a selected port.
// The pod's listening sockets are read at most once a second: the table
// lists every socket of the pod's network namespace, which a busy proxy
// has thousands of.
func (r *Registry) listens(p *Process) bool {
	if r.listening == nil || time.Since(r.listeningAt) > time.Second {
		r.listening, r.listeningAt = listeningInodes(r.procRoot, r.selection.OpenPorts), time.Now()
	}
	held, err := holdsSocket(r.procRoot, p.PID, r.listening)
	r.warnDenied(err)
	return held
}

// warnDenied logs, once, that the agent may not read a neighbour's /proc
// entry: what it then misses is silent otherwise.
func (r *Registry) warnDenied(err error) {
	if r.denied || !errors.Is(err, fs.ErrPermission) {
		return
	}
	r.denied = true
	r.logger.Warn("the agent may not read a neighbour's /proc entry (another user's process): its executable, hence service.name "+
		"(the kernel's 15-byte name instead), PODTRACER_EXECUTABLE_NAME and PODTRACER_OPEN_PORTS miss it; "+
		"give the sidecar the capabilities SYS_PTRACE and DAC_READ_SEARCH (the webhook's sidecar has them)", "error", err)
}

// executableNames are the names of p that PODTRACER_EXECUTABLE_NAME may
// match: its executable's path (the kernel's name for it when that
// cannot be read), the name of the link it was run by (RunAs: Debian's
// redis-server, a link to redis-check-rdb), and its argv[0] as it gave
// it ("python3", where the executable is /usr/local/bin/python3.12). A
// pattern of the name users know the program by must not miss it.
func executableNames(p *Process) []string {
	names := []string{p.Exe, p.RunAs}
	if p.Exe == "" {
		names[0] = p.Name
	}
	if len(p.Cmdline) > 0 {
		names = append(names, p.Cmdline[0])
	}
	return slices.DeleteFunc(names, func(n string) bool { return n == "" })
}

// readExe reads the executable of the process whose /proc folder is dir.
// A binary replaced on disk since it started still runs: its " (deleted)"
// mark is dropped.
func readExe(dir string) (string, error) {
	exe, err := os.Readlink(dir + "/exe")
	return strings.TrimSuffix(exe, " (deleted)"), err
}

// Alive tells whether pid is a process of the namespace now (perhaps
// another one than the pid's last).
func (r *Registry) Alive(pid uint32) bool { return exists(r.procRoot, int(pid)) }

// exists tells whether procRoot has a directory for pid.
func exists(procRoot string, pid int) bool {
	_, err := os.Stat(fmt.Sprintf("%s/%d", procRoot, pid))
	return err == nil
}

// Running tells whether p still runs under its pid: a process that exited,
// or whose pid another executable took, no longer does. Where the agent may
// not read a neighbour's executable (no CAP_SYS_PTRACE), the pid's
// existence is all it knows.
func Running(procRoot string, p *Process) bool {
	if !exists(procRoot, p.PID) {
		return false
	}
	exe, err := readExe(fmt.Sprintf("%s/%d", procRoot, p.PID))
	return err != nil || p.Exe == "" || exe == p.Exe
}

// ReadProcess reads what /proc tells of pid. Fields it cannot read stay
// empty; Name falls back to comm.
func ReadProcess(procRoot string, pid int, comm string) *Process {
	dir := fmt.Sprintf("%s/%d", procRoot, pid)
	p := &Process{PID: pid, Name: comm}
	if exe, err := readExe(dir); err == nil {
		p.Exe = exe
		p.Name = filepath.Base(p.Exe)
	}
	if b, err := readPrefix(dir+"/cmdline", maxCmdlineBytes); err == nil {
		// A zombie's or kernel thread's is empty; one that only holds NULs
		// has no argument to show either.
		if args := strings.TrimRight(string(b), "\x00"); args != "" {
			p.Cmdline = strings.Split(args, "\x00")
		}
	}
	if b, err := os.ReadFile(dir + "/stat"); err == nil {
		if statComm, f, ok := statFields(b); ok {
			if len(f) > 1 {
				p.PPID, _ = strconv.Atoi(string(f[1]))
			}
			if comm == "" {
				comm = statComm
			}
			if p.Name == "" {
				p.Name = statComm
			}
		}
	}
	p.RunAs = runAs(p, comm)
	if b, err := os.ReadFile(dir + "/cgroup"); err == nil {
		p.ContainerID = containerID(string(b))
	}
	return p
}

// statFields splits a /proc/PID/stat line, "pid (comm) state ppid ...":
// the command, which may hold spaces and parentheses, and the fields
// after it, the state first.
func statFields(b []byte) (comm string, fields [][]byte, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	j := bytes.IndexByte(b, '(')
	if i < 0 || j < 0 || j > i {
		return "", nil, false
	}
	return string(b[j+1 : i]), bytes.Fields(b[i+1:]), true
}

// runAs is the name p was run by when that is a link to its executable
// (Debian's redis-server is a link to redis-check-rdb, python3 one to
// python3.11), else "". The kernel's comm holds it (cut to 15 bytes), as
// argv[0] does up to a space (Redis rewrites it as "redis-server *:6379"),
// while /proc/PID/exe names the link's target. Both must agree, since a
// process may rename itself or rewrite its argv[0]; a program that runs
// itself again through /proc/self/exe is "exe" to both, and a title
// ("daemon: worker 3") is no name.
func runAs(p *Process, comm string) string {
	if p.Exe == "" || comm == "" || comm == p.Name || len(p.Cmdline) == 0 {
		return ""
	}
	word, _, _ := strings.Cut(p.Cmdline[0], " ")
	base := filepath.Base(word)
	if strings.HasPrefix(word, "/proc/") || base == "exe" || strings.ContainsAny(base, ":/") {
		return ""
	}
	if base == comm || len(comm) == 15 && strings.HasPrefix(base, comm) {
		return base
	}
	return ""
}

// maxCmdlineBytes bounds what is read of /proc/PID/cmdline, which can be
// megabytes long: the command line stays in the cache with the process and
// goes out with its telemetry. Linux before 4.2 showed no more than this.
const maxCmdlineBytes = 4096

// readPrefix reads at most n bytes of a file.
func readPrefix(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

var containerIDPattern = regexp.MustCompile(`[0-9a-f]{64}`)

// containerID finds a container runtime id (64 hex digits) in a
// /proc/PID/cgroup file, as containerd, CRI-O and Docker write them.
func containerID(cgroup string) string {
	ids := containerIDPattern.FindAllString(cgroup, -1)
	if len(ids) == 0 {
		return ""
	}
	return ids[len(ids)-1]
}
