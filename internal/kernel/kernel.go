// Package kernel tells what the running kernel is.
package kernel

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// AtLeast tells whether the running kernel's release is at least
// major.minor.
func AtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var maj, min int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &maj, &min)
	return maj > major || maj == major && min >= minor
}
