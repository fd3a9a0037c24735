package pod

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ From, To uint16 }

// Ports is a set of TCP ports, as given in PODTRACER_OPEN_PORTS
// ("8080,9000-9100").
type Ports []PortRange

// ParsePorts parses a comma-separated list of ports and port ranges.
func ParsePorts(s string) (Ports, error) {
	var ports Ports
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		from, to, isRange := strings.Cut(item, "-")
		lo, err := parsePort(from)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", item, err)
		}
		hi := lo
		if isRange {
			if hi, err = parsePort(to); err != nil {
				return nil, fmt.Errorf("port range %q: %w", item, err)
			}
			if hi < lo {
				return nil, fmt.Errorf("port range %q: end before start", item)
			}
		}
		ports = append(ports, PortRange{lo, hi})
	}
	return ports, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("not a port number (1-65535)")
	}
	return uint16(n), nil
}

// Contains reports whether port is in the set.
func (p Ports) Contains(port uint16) bool {
	for _, r := range p {
		if r.From <= port && port <= r.To {
			return true
		}
	}
	return false
}

// String gives the set back in the form ParsePorts reads.
func (p Ports) String() string {
	parts := make([]string, len(p))
	for i, r := range p {
		if r.From == r.To {
			parts[i] = strconv.Itoa(int(r.From))
		} else {
			parts[i] = fmt.Sprintf("%d-%d", r.From, r.To)
		}
	}
	return strings.Join(parts, ",")
}

// listeningInodes returns the socket inodes of TCP sockets in LISTEN state
// on one of ports, from the pod's network namespace (the agent shares it).
func listeningInodes(procRoot string, ports Ports) map[uint64]bool {
	inodes := make(map[uint64]bool)
	for _, file := range []string{"net/tcp", "net/tcp6"} {
		f, err := os.Open(procRoot + "/self/" + file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := bytes.Fields(sc.Bytes())
			if len(fields) < 10 || string(fields[3]) != "0A" { // 0A: TCP_LISTEN
				continue
			}
			_, portHex, ok := bytes.Cut(fields[1], []byte(":"))
			if !ok {
				continue
			}
			port, err := strconv.ParseUint(string(portHex), 16, 16)
			if err != nil || !ports.Contains(uint16(port)) {
				continue
			}
			if inode, err := strconv.ParseUint(string(fields[9]), 10, 64); err == nil {
				inodes[inode] = true
			}
		}
		f.Close()
	}
	return inodes
}

// holdsSocket reports whether process pid has one of the socket inodes
// open; the error is the one that kept it from looking.
func holdsSocket(procRoot string, pid int, inodes map[uint64]bool) (bool, error) {
	dir := fmt.Sprintf("%s/%d/fd", procRoot, pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue
		}
		if rest, ok := strings.CutPrefix(target, "socket:["); ok {
			if inode, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64); err == nil && inodes[inode] {
				return true, nil
			}
		}
	}
	return false, nil
}
