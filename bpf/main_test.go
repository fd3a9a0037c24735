package bpf

import (
	"os"
	"testing"
	"time"
)

// TestMain polls the ring buffer at most every 40 ms instead of
// PollInterval: the tests wait for the reader's polls (fastEvents.take),
// and would wait five times as long. TestNextPoll checks the real bounds.
func TestMain(m *testing.M) {
	maxPoll = 40 * time.Millisecond
	os.Exit(m.Run())
}
