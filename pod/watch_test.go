package pod

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// Alone: no neighbour left but the pod's init and zombies, whatever their
// command names hold; a process gone between the listing and its stat is
// gone.
func TestAlone(t *testing.T) {
	proc := t.TempDir()
	stat := func(pid int, comm string, state byte) {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		line := fmt.Sprintf("%d (%s) %c 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 100\n", pid, comm, state)
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stat(1, "pause", 'S')
	stat(42, "a) S (b", 'Z')                      // a zombie whose name looks alive
	os.MkdirAll(filepath.Join(proc, "44"), 0o755) // gone: no stat
	os.MkdirAll(filepath.Join(proc, "self"), 0o755)
	if !Alone(proc) {
		t.Error("not alone with the pod's init, a zombie and a process gone")
	}
	stat(43, "srv) Z (x", 'S') // alive, whose name looks like a zombie's
	if Alone(proc) {
		t.Error("alone beside a live neighbour")
	}
	if Alone(filepath.Join(proc, "missing")) {
		t.Error("alone when /proc cannot be read")
	}
}
