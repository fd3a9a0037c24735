package pod

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
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
	// serving a connection accepted on one (serverInodes).
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
}

type entry struct {
	proc     *Process
	selected bool
	checked  time.Time
	comm     string // the kernel's name for the process when it was read
}

// NewRegistry returns a registry reading procRoot (normally "/proc").
func NewRegistry(procRoot string, sel Selection, logger *slog.Logger) *Registry {
	return &Registry{procRoot: procRoot, selection: sel, logger: logger, entries: make(map[uint32]*entry)}
}

// Lookup returns the process pid, or nil when it is not selected. comm is
// the kernel's name for it, used when /proc no longer has the process.
func (r *Registry) Lookup(pid uint32, comm string) *Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	e := r.entries[pid]
	if e != nil && (e.comm != comm || e.selected && now.Sub(e.checked) > refreshAfter) {
		// Read it again: its name changed, which an exec does (a wrapper
		// script that exec's the server keeps its pid), or it is time.
		e = nil
	}
	if e != nil && (e.selected || now.Sub(e.checked) < recheckAfter) {
		if e.selected {
			return e.proc
		}
		return nil
	}
	if e == nil {
		if _, known := r.entries[pid]; !known && len(r.entries) >= maxCached {
			r.makeRoom(now)
		}
		e = &entry{}
		r.entries[pid] = e
	}
	// Read at every check, not only the first: since the last one, the
	// process may have exec'd the selected program, or exited and left its
	// pid to another.
	e.proc = ReadProcess(r.procRoot, int(pid), comm)
	e.checked, e.comm = now, comm
	if e.proc.Exe == "" {
		_, err := os.Readlink(fmt.Sprintf("%s/%d/exe", r.procRoot, pid))
		r.warnDenied(err)
	}
	e.selected = r.selects(e.proc)
	if e.selected {
		r.logger.Debug("tracing neighbour", "pid", pid, "executable", e.proc.Exe, "name", e.proc.Name)
		return e.proc
	}
	return nil
}

// Forget drops what is known of pid, for instance after it exited.
func (r *Registry) Forget(pid uint32) {
	r.mu.Lock()
	delete(r.entries, pid)
	r.mu.Unlock()
}

// makeRoom drops, once the cache is full, the entries of the processes
// that have exited (a pod's exec probes and scripts leave thousands), read
// more than a minute ago: the last events of a process that just exited
// may still be on their way, and keep their identity. If none, the
// oldest entry goes. A scan of the cache, once per maxCached new
// processes at most, rather than one per new process.
func (r *Registry) makeRoom(now time.Time) {
	for pid, e := range r.entries {
		if now.Sub(e.checked) > time.Minute && !exists(r.procRoot, int(pid)) {
			delete(r.entries, pid)
		}
	}
	if len(r.entries) >= maxCached {
		r.evictOldest()
	}
}

func (r *Registry) evictOldest() {
	var oldest uint32
	var when time.Time
	for pid, e := range r.entries {
		if when.IsZero() || e.checked.Before(when) {
			oldest, when = pid, e.checked
		}
	}
	delete(r.entries, oldest)
}

func (r *Registry) selects(p *Process) bool {
	if re := r.selection.Executable; re != nil && !slices.ContainsFunc(executableNames(p), re.MatchString) {
		return false
	}
	if len(r.selection.OpenPorts) > 0 {
		held, err := holdsSocket(r.procRoot, p.PID, serverInodes(r.procRoot, r.selection.OpenPorts))
		r.warnDenied(err)
		if !held {
			return false
		}
	}
	return true
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
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			if f := bytes.Fields(b[i+1:]); len(f) > 1 {
				p.PPID, _ = strconv.Atoi(string(f[1]))
			}
			if j := bytes.IndexByte(b, '('); j >= 0 && j < i {
				if comm == "" {
					comm = string(b[j+1 : i])
				}
				if p.Name == "" {
					p.Name = string(b[j+1 : i])
				}
			}
		}
	}
	p.RunAs = runAs(p, comm)
	if b, err := os.ReadFile(dir + "/cgroup"); err == nil {
		p.ContainerID = containerID(string(b))
	}
	return p
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
