package pod

import (
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"testing"
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

// A process gone before it could be read keeps its kernel name.
func TestGoneProcess(t *testing.T) {
	r := NewRegistry("/proc", Selection{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	p := r.Lookup(1<<22+7, "curl")
	if p == nil || p.Name != "curl" || p.Exe != "" {
		t.Fatalf("process = %+v", p)
	}
}
