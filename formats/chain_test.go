package formats

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// testChain makes base.qcow2 (uncompressed, or compressed with -c) and an
// overlay over it, grown by 1 MiB, that rewrites some of the base's data,
// zeroes some (a zero cluster hiding the base's data) and adds data of its
// own; it returns the overlay.
func testChain(t *testing.T, dir string, compressed bool) string {
	t.Helper()
	const size = 64*mib + 4096
	in := testImage(t, dir, size, 6)
	base := filepath.Join(dir, "base.qcow2")
	args := []string{"convert", "-f", "qcow2", "-O", "qcow2"}
	if compressed {
		args = append(args, "-c")
	}
	run(t, "qemu-img", append(args, in, base)...)
	top := filepath.Join(dir, "top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top, "65M")
	run(t, "qemu-io", "-f", "qcow2",
		"-c", "write -P 0x5a 0 128k", // over the base's first data
		"-c", "write -z 10m 1m", // zeroes over the base's second MiB of data
		"-c", "write -P 0x33 40m 3000", // part of a cluster
		"-c", "write -P 0x77 64m 512k", // past the base's end
		top)
	return top
}

func TestChainReaderReadsTheGuestData(t *testing.T) {
	dir := t.TempDir()
	top := testChain(t, dir, false)
	ctx := context.Background()
	c, err := openChain(ctx, top, "qcow2")
	if err != nil || c == nil {
		t.Fatalf("openChain = %v, %v; want a reader", c, err)
	}
	defer c.Close()
	raw := filepath.Join(dir, "want.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, raw)
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want)+8192) // past the end: zeros
	for i := range got {
		got[i] = 0xee
	}
	// Odd-sized reads that straddle extents.
	for off := 0; off < len(got); {
		n := min(len(got)-off, 777_777)
		if m, err := c.ReadAt(got[off:off+n], int64(off)); m != n || err != nil {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, m, err)
		}
		off += n
	}
	if !bytes.Equal(got[:len(want)], want) {
		t.Fatal("the chain's bytes differ from qemu-img convert's")
	}
	if !bytes.Equal(got[len(want):], make([]byte, 8192)) {
		t.Error("bytes past the disk are not zeros")
	}
	// Every non-zero byte is inside a region; the zeroed MiB is not.
	rs := c.regions()
	in := func(off int64) bool {
		for _, r := range rs {
			if off >= r.off && off < r.off+r.len {
				return true
			}
		}
		return false
	}
	for off := int64(0); off < int64(len(want)); off += 4096 {
		if !bytes.Equal(want[off:off+4096], make([]byte, 4096)) && !in(off) {
			t.Fatalf("data at %d is in no region", off)
		}
	}
	if in(10*mib + 65536) {
		t.Error("the zeroed MiB is a data region")
	}

	// A layer shorter than its map is an error, not zeros.
	if err := os.Truncate(filepath.Join(dir, "base.qcow2"), 256*1024); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(make([]byte, len(want)), 0); err == nil {
		t.Error("ReadAt from a truncated layer: no error")
	}
}

func TestChainReaderLeavesCompressedChains(t *testing.T) {
	dir := t.TempDir()
	top := testChain(t, dir, true)
	c, err := openChain(context.Background(), top, "qcow2")
	if c != nil || err != nil {
		t.Fatalf("openChain of a chain with compressed clusters = %v, %v; want nil, nil", c, err)
	}
}

// TestVMDKOfChains: the stream VMDK of an overlay chain, read directly
// (uncompressed base) and through the raw copy (compressed base), holds
// the chain's guest data.
func TestVMDKOfChains(t *testing.T) {
	for _, compressed := range []bool{false, true} {
		dir := t.TempDir()
		top := testChain(t, dir, compressed)
		in := &qemuimg.Info{Path: top, Format: "qcow2", VirtualSize: 65 * mib}
		out := filepath.Join(dir, "out.vmdk")
		if err := Write(context.Background(), in, "vmdk", out, Options{}); err != nil {
			t.Fatalf("compressed base %v: %v", compressed, err)
		}
		checkStreamVMDK(t, out, 65*mib, true)
		same(t, top, out, "vmdk")
	}
}
