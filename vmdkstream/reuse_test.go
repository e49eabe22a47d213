package vmdkstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// memReuse serves the grains a write recorded from its output.
type memReuse struct {
	mu     sync.Mutex
	out    []byte
	grains map[[32]byte]Grain
	tamper func(Grain, []byte) (Grain, []byte) // changes a copy before it is returned
	asked  int
}

func (m *memReuse) record(g Grain) { m.grains[g.Sum] = g }

func (m *memReuse) Grain(sum *[32]byte, dst []byte) ([]byte, uint32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.asked++
	g, ok := m.grains[*sum]
	if !ok {
		return dst, 0, false
	}
	z := append([]byte(nil), m.out[g.Off:g.Off+int64(g.Len)]...)
	if m.tamper != nil {
		g, z = m.tamper(g, z)
	}
	return append(dst, z...), g.CRC, true
}

// writeMem writes content as a VMDK in memory with a fixed CID.
func writeMem(t *testing.T, content []byte, opts Options) []byte {
	t.Helper()
	var b bytes.Buffer
	opts.CID, opts.Level = 0x1234, 1
	if err := Write(context.Background(), &b, bytes.NewReader(content), int64(len(content)), nil, opts); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// reuseDisk is a 20 MiB disk of partly compressible data with holes, the
// same grain at two places, and a partial last grain.
func reuseDisk(t *testing.T, dir string) (string, []byte) {
	const size = 20*mib + 3*SectorSize
	return rawDisk(t, dir, size, []piece{{0, 3 * mib}, {5 * mib, 2*mib + 77}, {12 * mib, mib}, {size - 2*SectorSize, 2 * SectorSize}})
}

// TestReuseIsByteIdentical: a write that copies every grain from an
// earlier write of the same disk is that write byte for byte; after a
// change, only the changed grains are deflated and the stream is the one
// a write without reuse makes. The grains' hashes and places are what
// Record reported.
func TestReuseIsByteIdentical(t *testing.T) {
	dir := t.TempDir()
	raw, content := reuseDisk(t, dir)
	m := &memReuse{grains: map[[32]byte]Grain{}}
	var st Stats
	m.out = writeMem(t, content, Options{Record: m.record, Stats: &st})
	if st.Grains == 0 || st.Reused != 0 {
		t.Fatalf("first write: %+v", st)
	}
	for sum, g := range m.grains {
		lba := binary.LittleEndian.Uint64(m.out[g.Off-grainMarkerLen:])
		data := content[lba*SectorSize : min(int64(len(content)), int64(lba*SectorSize+GrainSize))]
		padded := append(append([]byte(nil), data...), make([]byte, GrainSize-len(data))...)
		z := m.out[g.Off : g.Off+int64(g.Len)]
		if sha256.Sum256(padded) != sum || binary.LittleEndian.Uint32(m.out[g.Off-4:]) != uint32(g.Len) || crc32.Checksum(z, castagnoli) != g.CRC {
			t.Fatalf("recorded grain at %d: wrong hash, length or CRC", g.Off)
		}
	}

	var st2 Stats
	again := writeMem(t, content, Options{Reuse: m, Stats: &st2, Workers: 3})
	if !bytes.Equal(again, m.out) {
		t.Fatal("a write copying every grain differs from the write it copied")
	}
	if st2.Reused != st.Grains || st2.Rejected != 0 {
		t.Fatalf("second write: %+v, want all %d grains reused", st2, st.Grains)
	}

	// Change two grains (one of them in a hole before) and write again.
	changed := append([]byte(nil), content...)
	changed[GrainSize+5] ^= 0xff
	copy(changed[9*mib:], "new data in a hole")
	var st3 Stats
	got := writeMem(t, changed, Options{Reuse: m, Stats: &st3})
	if want := writeMem(t, changed, Options{}); !bytes.Equal(got, want) {
		t.Fatal("a write with reuse after a change differs from one without")
	}
	if st3.Grains != st.Grains+1 || st3.Reused != st.Grains-1 || st3.Rejected != 0 {
		t.Fatalf("after the change: %+v, want %d grains, %d reused", st3, st.Grains+1, st.Grains-1)
	}
	p := filepath.Join(dir, "changed.vmdk")
	os.WriteFile(p, got, 0o644)
	os.WriteFile(raw, changed, 0o644)
	qemuChecks(t, p, raw, int64(len(changed)))
}

// TestReuseRefusesBadCopies: copies not what was recorded (CRC-32C), and
// recorded ones with a wrong Adler-32, a broken zlib header, or too short
// to be a stream are deflated instead, counted, and the stream is the one
// a write without reuse makes.
func TestReuseRefusesBadCopies(t *testing.T) {
	dir := t.TempDir()
	raw, content := reuseDisk(t, dir)
	want := writeMem(t, content, Options{})
	recrc := func(f func([]byte) []byte) func(Grain, []byte) (Grain, []byte) {
		return func(g Grain, z []byte) (Grain, []byte) { z = f(z); g.CRC = crc32.Checksum(z, castagnoli); return g, z }
	}
	for name, tamper := range map[string]func(Grain, []byte) (Grain, []byte){
		"crc":        func(g Grain, z []byte) (Grain, []byte) { z[len(z)/2] ^= 4; return g, z },
		"adler":      recrc(func(z []byte) []byte { z[len(z)-1] ^= 1; return z }),
		"header":     recrc(func(z []byte) []byte { z[0] = 0x79; return z }),
		"dictionary": recrc(func(z []byte) []byte { z[1] |= 0x20; z[1] -= byte((uint16(z[0])<<8 | uint16(z[1])) % 31); return z }),
		"truncated":  recrc(func(z []byte) []byte { return z[:5] }),
	} {
		m := &memReuse{grains: map[[32]byte]Grain{}}
		m.out = writeMem(t, content, Options{Record: m.record})
		m.tamper = tamper
		var st Stats
		got := writeMem(t, content, Options{Reuse: m, Stats: &st})
		if !bytes.Equal(got, want) {
			p := filepath.Join(dir, name+".vmdk")
			os.WriteFile(p, got, 0o644)
			qemuChecks(t, p, raw, int64(len(content)))
			t.Errorf("%s: the stream differs from a write without reuse", name)
		}
		if st.Reused != 0 || st.Rejected != st.Grains || st.Grains == 0 {
			t.Errorf("%s: %+v, want every grain refused", name, st)
		}
	}
}
