package bpf

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// errNoGNUHash is an executable without a .gnu.hash section: one that
// exports no symbols, or was linked for a loader older than 2006.
var errNoGNUHash = errors.New("no .gnu.hash section")

// exportedFunction is a function an ELF file exports: its file offset
// (where a uprobe goes) and size (0: not known).
type exportedFunction struct {
	offset, size uint64
}

// exportedFunctions finds the functions of names that an ELF executable
// exports through its GNU hash table, as the dynamic loader does: a few
// reads whatever the size of the symbol table. Node.js exports its
// OpenSSL's 75 000 symbols, and keeps 110 000 more in .symtab; reading
// them all, as a symbol lookup by name otherwise does, would take the
// agent tens of megabytes for a moment. Names the executable does not
// export, or exports as no function, are left out of the map.
func exportedFunctions(f *elf.File, names []string) (map[string]exportedFunction, error) {
	if f.Class != elf.ELFCLASS64 || f.ByteOrder != binary.LittleEndian {
		return nil, fmt.Errorf("not a 64-bit little-endian ELF file")
	}
	hash, dynsym := f.Section(".gnu.hash"), f.Section(".dynsym")
	if hash == nil || dynsym == nil || hash.Type == elf.SHT_NOBITS || dynsym.Type == elf.SHT_NOBITS {
		return nil, errNoGNUHash
	}
	if dynsym.Link >= uint32(len(f.Sections)) {
		return nil, fmt.Errorf(".dynsym: string table %d of %d sections", dynsym.Link, len(f.Sections))
	}
	dynstr := f.Sections[dynsym.Link]
	// The header: buckets, the first symbol hashed, the Bloom filter's
	// words (skipped: a miss only costs a bucket's read here), its shift.
	var head [16]byte
	if _, err := hash.ReadAt(head[:], 0); err != nil {
		return nil, fmt.Errorf(".gnu.hash: %w", err)
	}
	le := binary.LittleEndian
	nbuckets, symoffset, bloomWords := le.Uint32(head[0:]), le.Uint32(head[4:]), le.Uint32(head[8:])
	if nbuckets == 0 {
		return nil, nil
	}
	buckets := int64(16) + 8*int64(bloomWords)
	chains := buckets + 4*int64(nbuckets)
	nsyms := dynsym.Size / 24
	word := func(off int64) (uint32, error) {
		var b [4]byte
		_, err := hash.ReadAt(b[:], off)
		return le.Uint32(b[:]), err
	}
	found := make(map[string]exportedFunction, len(names))
	for _, name := range names {
		h := gnuHash(name)
		i, err := word(buckets + 4*int64(h%nbuckets))
		if err != nil {
			return nil, fmt.Errorf(".gnu.hash: %w", err)
		}
		// The bucket's chain: symbols i, i+1, ... of the same bucket, the
		// last one's hash with its low bit set.
		for ; i >= symoffset && uint64(i) < nsyms; i++ {
			hi, err := word(chains + 4*int64(i-symoffset))
			if err != nil {
				return nil, fmt.Errorf(".gnu.hash: %w", err)
			}
			if hi|1 == h|1 {
				if fn, ok, err := functionAt(f, dynsym, dynstr, i, name); err != nil {
					return nil, err
				} else if ok {
					found[name] = fn
					break
				}
			}
			if hi&1 != 0 {
				break
			}
		}
	}
	return found, nil
}

// gnuHash is the GNU hash of a symbol name (DJB's, 33 × h + c).
func gnuHash(name string) uint32 {
	h := uint32(5381)
	for i := 0; i < len(name); i++ {
		h = h*33 + uint32(name[i])
	}
	return h
}

// functionAt tells whether dynamic symbol i is the function name, defined
// here, and if so returns its file offset and size.
func functionAt(f *elf.File, dynsym, dynstr *elf.Section, i uint32, name string) (exportedFunction, bool, error) {
	var sym [24]byte // Elf64_Sym: name, info, other, shndx, value, size
	if _, err := dynsym.ReadAt(sym[:], 24*int64(i)); err != nil {
		return exportedFunction{}, false, fmt.Errorf(".dynsym: %w", err)
	}
	le := binary.LittleEndian
	strOff, info, shndx, value, size := le.Uint32(sym[0:]), sym[4], le.Uint16(sym[6:]), le.Uint64(sym[8:]), le.Uint64(sym[16:])
	if elf.ST_TYPE(info) != elf.STT_FUNC || elf.SectionIndex(shndx) == elf.SHN_UNDEF || value == 0 {
		return exportedFunction{}, false, nil
	}
	got := make([]byte, len(name)+1)
	if _, err := dynstr.ReadAt(got, int64(strOff)); err != nil && !errors.Is(err, io.EOF) {
		return exportedFunction{}, false, fmt.Errorf(".dynstr: %w", err)
	}
	if string(got) != name+"\x00" {
		return exportedFunction{}, false, nil
	}
	off, err := fileOffset(f, value)
	if err != nil {
		return exportedFunction{}, false, err
	}
	return exportedFunction{off, size}, true, nil
}
