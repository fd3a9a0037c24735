package pod

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podtracer/podtracer/internal/testenv"
)

func TestParsePorts(t *testing.T) {
	p, err := ParsePorts("8080, 9000-9100,443")
	if err != nil {
		t.Fatal(err)
	}
	for port, want := range map[uint16]bool{8080: true, 9000: true, 9050: true, 9100: true, 9101: false, 443: true, 80: false} {
		if p.Contains(port) != want {
			t.Errorf("Contains(%d) = %v", port, !want)
		}
	}
	if p.String() != "8080,9000-9100,443" {
		t.Errorf("String() = %q", p.String())
	}
	for _, bad := range []string{"abc", "0", "70000", "10-5", "1-x", "-3"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) accepted", bad)
		}
	}
}

func TestContainerID(t *testing.T) {
	id := "3f4e1b2c9d8a7f6e5d4c3b2a19080706f5e4d3c2b1a09f8e7d6c5b4a39281706"
	if got := containerID("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + id + ".scope\n"); got != id {
		t.Errorf("containerID = %q", got)
	}
	if got := containerID("0::/user.slice\n"); got != "" {
		t.Errorf("containerID = %q", got)
	}
}

// The test process itself is the neighbour: it listens on a port, and the
// selection must find it by that port and by its executable.
func TestSelection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	self := uint32(os.Getpid())
	exe, _ := os.Executable()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	for name, tc := range map[string]struct {
		sel  Selection
		want bool
	}{
		"everyone":      {Selection{}, true},
		"by port":       {Selection{OpenPorts: Ports{{port, port}}}, true},
		"other port":    {Selection{OpenPorts: Ports{{port + 1, port + 1}}}, false},
		"by executable": {Selection{Executable: regexp.MustCompile(regexp.QuoteMeta(exe))}, true},
		"other exe":     {Selection{Executable: regexp.MustCompile("^nginx$")}, false},
		"port and exe":  {Selection{OpenPorts: Ports{{port, port}}, Executable: regexp.MustCompile(`\.test$`)}, true},
		"port, not exe": {Selection{OpenPorts: Ports{{port, port}}, Executable: regexp.MustCompile(`^python`)}, false},
	} {
		t.Run(name, func(t *testing.T) {
			r := NewRegistry("/proc", tc.sel, logger)
			p := r.Lookup(self, "comm")
			if (p != nil) != tc.want {
				t.Fatalf("selected = %v, want %v", p != nil, tc.want)
			}
			if p != nil && (p.Exe != exe || p.PID != int(self) || p.PPID == 0 || len(p.Cmdline) == 0) {
				t.Errorf("process = %+v", p)
			}
		})
	}
}

// A server's worker that only serves connections accepted on the port
// (Node.js cluster: the primary listens) is selected by a connection it
// serves on it (LookupServing), and stays so; a process whose connection
// has another local port, and does not listen, is not.
func TestSelectionByServedPort(t *testing.T) {
	root := t.TempDir()
	// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
	tcp := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0\n" // :8080 LISTEN
	if err := os.MkdirAll(filepath.Join(root, "self", "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "self", "net", "tcp"), []byte(tcp), 0o644); err != nil {
		t.Fatal(err)
	}
	for pid, inode := range map[int]int{10: 1001, 11: 1002, 12: 1003} {
		fd := filepath.Join(root, strconv.Itoa(pid), "fd")
		if err := os.MkdirAll(fd, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(fmt.Sprintf("socket:[%d]", inode), filepath.Join(fd, "3")); err != nil {
			t.Fatal(err)
		}
	}
	r := NewRegistry(root, Selection{OpenPorts: Ports{{8080, 8080}}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if r.Lookup(10, "node") == nil {
		t.Error("the primary, listening, is not selected")
	}
	if r.LookupServing(11, "node", 54321) != nil { // a client connection of the worker first
		t.Error("the worker is selected by a client connection")
	}
	if r.LookupServing(11, "node", 8080) == nil {
		t.Error("the worker serving a connection on 8080 is not selected")
	}
	r.entries[11].checked = time.Now().Add(-refreshAfter - time.Second)
	if r.LookupServing(11, "node", 54321) == nil {
		t.Error("the worker is not selected any more once its entry is refreshed")
	}
	if r.LookupServing(12, "node", 54321) != nil {
		t.Error("a client is selected")
	}
}

// PODTRACER_EXECUTABLE_NAME matches the name a program is known by, not
// only the path its link resolves to: the python image's python3 is
// /usr/local/bin/python3.12.
func TestSelectionByRunName(t *testing.T) {
	root := fakeProc(t, 42, map[string]string{"cmdline": "python3\x00app.py\x00"})
	if err := os.Symlink("/usr/local/bin/python3.12", filepath.Join(root, "42", "exe")); err != nil {
		t.Fatal(err)
	}
	for pattern, want := range map[string]bool{`python3$`: true, `^/usr/local/bin/python3\.12$`: true, `^ruby`: false} {
		r := NewRegistry(root, Selection{Executable: regexp.MustCompile(pattern)}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if got := r.Lookup(42, "python3") != nil; got != want {
			t.Errorf("%s: selected %v, want %v", pattern, got, want)
		}
	}
}

// A process gone before it could be read keeps its kernel name.
func TestGoneProcess(t *testing.T) {
	r := NewRegistry("/proc", Selection{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	p := r.Lookup(1<<22+7, "curl")
	if p == nil || p.Name != "curl" || p.Exe != "" {
		t.Fatalf("process = %+v", p)
	}
}

// fakeProc writes files for pid under a temporary /proc.
func fakeProc(t *testing.T, pid int, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// A huge command line is read only in part: it stays in the cache and goes
// out with every span of the process. One of NULs only is no arguments.
func TestReadProcessCmdline(t *testing.T) {
	huge := strings.Repeat(strings.Repeat("x", 1000)+"\x00", 4096) // 4 MB
	p := ReadProcess(fakeProc(t, 42, map[string]string{"cmdline": huge}), 42, "java")
	if n := len(strings.Join(p.Cmdline, "\x00")); n == 0 || n > maxCmdlineBytes {
		t.Errorf("read %d bytes of a %d-byte command line, want 1..%d", n, len(huge), maxCmdlineBytes)
	}
	for cmdline, want := range map[string][]string{
		"\x00\x00":                 nil,
		"":                         nil,
		"nginx: worker process   ": {"nginx: worker process   "}, // rewritten, no NULs
		"/bin/sh\x00-c\x00\x00":    {"/bin/sh", "-c"},
		"\xff\xfe\x00":             {"\xff\xfe"},
	} {
		p := ReadProcess(fakeProc(t, 42, map[string]string{"cmdline": cmdline}), 42, "x")
		if !slices.Equal(p.Cmdline, want) {
			t.Errorf("cmdline %q: got %q, want %q", cmdline, p.Cmdline, want)
		}
	}
}

// A process not selected is read again when it is checked again: it may
// have exec'd the selected program since (a wrapper script's exec), or its
// pid may belong to another process now.
func TestRecheckReadsAgain(t *testing.T) {
	root := fakeProc(t, 42, nil)
	exe := filepath.Join(root, "42", "exe")
	if err := os.Symlink("/bin/sh", exe); err != nil {
		t.Fatal(err)
	}
	r := NewRegistry(root, Selection{Executable: regexp.MustCompile(`/java$`)}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if p := r.Lookup(42, "sh"); p != nil {
		t.Fatalf("sh selected: %+v", p)
	}
	os.Remove(exe)
	if err := os.Symlink("/usr/bin/java", exe); err != nil {
		t.Fatal(err)
	}
	r.entries[42].checked = time.Now().Add(-recheckAfter - time.Second)
	if p := r.Lookup(42, "java"); p == nil || p.Exe != "/usr/bin/java" {
		t.Fatalf("after exec: process %+v, want /usr/bin/java selected", p)
	}
}

// A selected process that exec's another program keeps its pid: the
// kernel's new name for it (its comm) has the registry read it again at
// once, not a minute later, so the server a wrapper script exec's is not
// taken for the script. The same name is not read again.
func TestExecReadsAgain(t *testing.T) {
	root := fakeProc(t, 42, nil)
	exe := filepath.Join(root, "42", "exe")
	relink := func(target string) {
		os.Remove(exe)
		if err := os.Symlink(target, exe); err != nil {
			t.Fatal(err)
		}
	}
	relink("/bin/bash")
	r := NewRegistry(root, Selection{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if p := r.Lookup(42, "bash"); p == nil || p.Exe != "/bin/bash" {
		t.Fatalf("before exec: %+v", p)
	}
	relink("/app/server")
	if p := r.Lookup(42, "server"); p == nil || p.Exe != "/app/server" {
		t.Fatalf("after exec: %+v, want /app/server", p)
	}
	relink("/app/other")
	if p := r.Lookup(42, "server"); p == nil || p.Exe != "/app/server" {
		t.Fatalf("same name: %+v, want the entry kept", p)
	}
	// An event without a name (a close's) says nothing of an exec.
	if p := r.Lookup(42, ""); p == nil || p.Exe != "/app/server" {
		t.Fatalf("no name: %+v, want the entry kept", p)
	}
	if p := r.Lookup(42, "server"); p == nil || p.Exe != "/app/server" {
		t.Fatalf("the name again after none: %+v, want the entry kept", p)
	}
}

// Running: a process runs while its pid exists and names the same
// executable, or one the agent may not read.
func TestRunning(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "7"), 0o755)
	os.Symlink("/usr/bin/python3", filepath.Join(root, "7", "exe"))
	os.MkdirAll(filepath.Join(root, "8"), 0o755) // exe unreadable
	for _, c := range []struct {
		p    Process
		want bool
	}{
		{Process{PID: 7, Exe: "/usr/bin/python3"}, true},
		{Process{PID: 7, Exe: "/usr/bin/node"}, false}, // the pid went to another program
		{Process{PID: 7}, true},
		{Process{PID: 8, Exe: "/usr/bin/node"}, true},
		{Process{PID: 9, Exe: "/usr/bin/node"}, false}, // exited
	} {
		if got := Running(root, &c.p); got != c.want {
			t.Errorf("%+v: %v, want %v", c.p, got, c.want)
		}
	}
}

// A program run through a link goes by the link's name (RunAs), which
// comm and argv[0] both hold; its executable's name stays its own. A
// process that renamed itself, rewrote its argv[0] into a title, or runs
// itself again through /proc/self/exe has no other name.
func TestReadProcessLinkName(t *testing.T) {
	for _, c := range []struct{ exe, cmdline, comm, want string }{
		{"/usr/bin/redis-check-rdb", "redis-server *:6379\x00", "redis-server", "redis-server"}, // argv[0] rewritten as Redis does
		{"/usr/bin/redis-check-rdb", "/usr/bin/redis-server\x00--port\x006379\x00", "redis-server", "redis-server"},
		{"/usr/bin/python3.11", "python3\x00-c\x00pass\x00", "python3", "python3"},
		{"/usr/bin/python3.11", "worker: idle\x00", "python3", ""},
		{"/opt/app/bin/a-very-long-program-name", "./a-very-long-program-name\x00", "a-very-long-pro", "a-very-long-program-name"},
		{"/opt/app/bin/a-long-daemon-binary", "a-long-daemon-name: worker 3\x00", "a-long-daemon-n", ""},
		{"/usr/sbin/nginx", "nginx: worker process\x00", "nginx", ""},
		{"/usr/lib/jvm/bin/java", "/usr/bin/java\x00-jar\x00app.jar\x00", "main", ""},
		{"/usr/local/bin/myserver", "/proc/self/exe\x00child\x00", "exe", ""},
		{"/usr/bin/redis-check-rdb", "/usr/bin/redis-server\x00", "", "redis-server"}, // comm from stat
		{"/usr/bin/redis-check-rdb", "\x00", "redis-server", ""},
	} {
		files := map[string]string{"cmdline": c.cmdline}
		if c.comm == "" {
			files["stat"] = "42 (redis-server) S 1 42 42 0 -1"
		}
		root := fakeProc(t, 42, files)
		if err := os.Symlink(c.exe, filepath.Join(root, "42", "exe")); err != nil {
			t.Fatal(err)
		}
		p := ReadProcess(root, 42, c.comm)
		if p.RunAs != c.want || p.Name != filepath.Base(c.exe) || p.Exe != c.exe {
			t.Errorf("exe %s, argv %q, comm %q: run as %q, name %q; want %q, %q", c.exe, c.cmdline, c.comm, p.RunAs, p.Name, c.want, filepath.Base(c.exe))
		}
	}
}

// TestNodePIDNamespace: the node's PID namespace is told from a pod's by
// its inode; a pod made with unshare is not the node's.
func TestNodePIDNamespace(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "self", "ns"), 0o755)
	os.Symlink("pid:[4026531836]", filepath.Join(dir, "self", "ns", "pid"))
	if !NodePIDNamespace(dir) {
		t.Error("the node's namespace not recognised")
	}
	os.Remove(filepath.Join(dir, "self", "ns", "pid"))
	os.Symlink("pid:[4026532451]", filepath.Join(dir, "self", "ns", "pid"))
	if NodePIDNamespace(dir) {
		t.Error("a pod's namespace taken for the node's")
	}
	testenv.Privileged(t)
	out, err := exec.Command(testenv.LookPath(t, "unshare"), "--pid", "--fork", "--mount-proc", "readlink", "/proc/self/ns/pid").Output()
	if err != nil {
		t.Fatalf("unshare: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got == initPIDNamespace {
		t.Errorf("a new PID namespace reads %s", got)
	}
}

func TestRegistryAlive(t *testing.T) {
	r := NewRegistry("/proc", Selection{}, slog.New(slog.DiscardHandler))
	if !r.Alive(uint32(os.Getpid())) {
		t.Error("the test's own process is not alive")
	}
	if r.Alive(1<<30 + 7) {
		t.Error("a pid beyond the kernel's range is alive")
	}
}

// A neighbour's /proc entry the agent may not read is said once, with the
// capabilities that would let it; other errors (a process gone) are not.
func TestDeniedWarnedOnce(t *testing.T) {
	var log bytes.Buffer
	r := NewRegistry(t.TempDir(), Selection{}, slog.New(slog.NewTextHandler(&log, nil)))
	r.warnDenied(fs.ErrNotExist)
	r.warnDenied(&fs.PathError{Op: "readlink", Path: "/proc/7/exe", Err: fs.ErrPermission})
	r.warnDenied(fs.ErrPermission)
	if n := strings.Count(log.String(), "level=WARN"); n != 1 || !strings.Contains(log.String(), "SYS_PTRACE and DAC_READ_SEARCH") {
		t.Errorf("%d warnings:\n%s", n, log.String())
	}
}

// A full cache drops the entries of processes that have exited (read more
// than a minute ago) all at once, not the oldest one per new process;
// those of the living stay.
func TestFullCacheDropsExited(t *testing.T) {
	root := fakeProc(t, 42, nil)
	r := NewRegistry(root, Selection{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.Lookup(42, "app")
	long := time.Now().Add(-2 * time.Minute)
	r.entries[42].checked = long
	for pid := uint32(1000); len(r.entries) < maxCached; pid++ {
		r.entries[pid] = &entry{checked: long, comm: "gone"}
	}
	if err := os.Mkdir(filepath.Join(root, "43"), 0o755); err != nil {
		t.Fatal(err)
	}
	r.Lookup(43, "new")
	if _, ok := r.entries[42]; !ok || len(r.entries) != 2 {
		t.Errorf("%d entries after a lookup in a full cache (42 kept: %v), want 42 and 43", len(r.entries), ok)
	}
	// Full of living processes read within the minute: the oldest eighth
	// goes at once, the entry read last stays.
	recent := time.Now().Add(-time.Second)
	for pid := uint32(1000); len(r.entries) < maxCached; pid++ {
		r.entries[pid] = &entry{checked: recent.Add(time.Duration(pid) * time.Millisecond), comm: "young"}
	}
	newest := uint32(1000 + maxCached - 3)
	if err := os.Mkdir(filepath.Join(root, "44"), 0o755); err != nil {
		t.Fatal(err)
	}
	r.Lookup(44, "new")
	if _, ok := r.entries[newest]; !ok || len(r.entries) != maxCached-maxCached/8+1 {
		t.Errorf("%d entries after a lookup in a cache full of the living (the newest kept: %v), want %d", len(r.entries), ok, maxCached-maxCached/8+1)
	}
}
