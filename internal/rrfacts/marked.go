package rrfacts

import "hash/maphash"

// marked remembers which fingerprints may have a high-water mark (package marks): those whose
// marks existed when the index started, those it has seen an RR of deleted since (an RR is
// released only after its mark covers it), and those whose marks this replica's release raised. A fingerprint it has never heard of has no mark, so a
// decision about it needs no mark read. It is a Bloom filter: a "maybe" can be wrong (then the
// mark is read, and found absent), a "no" never is. Nothing is ever removed; 1 MiB holds a
// million fingerprints at about a 2% false-positive rate.
type marked struct {
	seed maphash.Seed
	bits []uint64
}

const (
	markedBits   = 1 << 23
	markedHashes = 6
)

func newMarked() *marked {
	return &marked{seed: maphash.MakeSeed(), bits: make([]uint64, markedBits/64)}
}

func (m *marked) positions(key string, f func(bit uint64)) {
	h := maphash.String(m.seed, key)
	h1, h2 := h&0xffffffff, (h>>32)|1
	for i := range uint64(markedHashes) {
		f((h1 + i*h2) % markedBits)
	}
}

func (m *marked) add(key string) {
	m.positions(key, func(bit uint64) { m.bits[bit/64] |= 1 << (bit % 64) })
}

func (m *marked) has(key string) bool {
	all := true
	m.positions(key, func(bit uint64) { all = all && m.bits[bit/64]&(1<<(bit%64)) != 0 })
	return all
}
