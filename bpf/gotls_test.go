package bpf

import (
	"slices"
	"testing"
)

// TestGoPrologue: the uprobes go past a Go function's stack check, and
// on nothing that does not start with one.
func TestGoPrologue(t *testing.T) {
	for _, tc := range []struct {
		name string
		code string
		at   int
		ok   bool
	}{
		// cmp rsp, [r14+0x10]; jbe +0x40; push rbp
		{"small frame", "\x49\x3b\x66\x10\x76\x40\x55", 6, true},
		// lea r12, [rsp-0x88]; cmp r12, [r14+0x10]; jbe rel32; push rbp
		{"large frame", "\x4c\x8d\xa4\x24\x78\xff\xff\xff\x4d\x3b\x66\x10\x0f\x86\x00\x01\x00\x00\x55", 18, true},
		// push rbp; mov rbp, rsp: C, not Go
		{"C function", "\x55\x48\x89\xe5\x48\x83\xec\x10", 0, false},
		// cmp rsp, [r14+0x10]; push rbp: no jump after the check
		{"no jump", "\x49\x3b\x66\x10\x55\x48\x89\xe5", 0, false},
		// mid-instruction: the tail of a cmp
		{"mid-instruction", "\x66\x10\x76\x40\x55", 0, false},
	} {
		at, ok := goPrologue([]byte(tc.code))
		if at != tc.at || ok != tc.ok {
			t.Errorf("%s: goPrologue = %d, %v; want %d, %v", tc.name, at, ok, tc.at, tc.ok)
		}
	}
}

// TestReadEnds: every return instruction, and no 0xc3 byte inside
// another instruction; the direct calls of memmove, and no other call.
func TestReadEnds(t *testing.T) {
	// At 0x1000: mov eax, 0xc3; ret; call 0x2000 (memmove); call 0x3000;
	// call *rax; add rsp, 8; ret
	code := []byte("\xb8\xc3\x00\x00\x00\xc3" + "\xe8\xf5\x0f\x00\x00" + "\xe8\xf0\x1f\x00\x00" + "\xff\xd0" + "\x48\x83\xc4\x08\xc3")
	returns, copies, err := readEnds(code, 0x1000, 0x2000)
	if err != nil || !slices.Equal(returns, []uint64{5, 22}) || !slices.Equal(copies, []uint64{6}) {
		t.Errorf("readEnds = %v, %v, %v; want [5 22], [6]", returns, copies, err)
	}
	if _, _, err := readEnds([]byte("\x55\x48\x89\xe5"), 0x1000, 0x2000); err == nil {
		t.Error("no return instruction: no error")
	}
}
