package vmdkstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zlib"

	"github.com/ecs-image/ecs-image/testenv"
)

const mib = 1 << 20

func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(testenv.Tool(t, "qemu-img", "apt-get install qemu-utils"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// piece is data the test disk holds at an offset.
type piece struct {
	off int64
	n   int
}

// rawDisk writes a sparse raw disk of size bytes with random (partly
// compressible) data at each piece; it returns the file and its content.
func rawDisk(t *testing.T, dir string, size int64, pieces []piece) (string, []byte) {
	t.Helper()
	p := filepath.Join(dir, "disk.raw")
	content := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, pc := range pieces {
		b := content[pc.off : pc.off+int64(pc.n)]
		for i := range b {
			if i%3 == 0 {
				b[i] = byte(rng.Uint32())
			} else {
				b[i] = byte(i / 64)
			}
		}
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, pc := range pieces {
		if _, err := f.WriteAt(content[pc.off:pc.off+int64(pc.n)], pc.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p, content
}

func writeVMDK(t *testing.T, src string, size int64, regions []Region, opts Options) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out := strings.TrimSuffix(src, ".raw") + ".vmdk"
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(context.Background(), f, in, size, regions, opts); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// qemuChecks: qemu-img reads the file as a streamOptimized VMDK of the
// size, `qemu-img check` passes and the content equals the raw source.
func qemuChecks(t *testing.T, vmdk, raw string, size int64) {
	t.Helper()
	var info struct {
		Format         string `json:"format"`
		VirtualSize    int64  `json:"virtual-size"`
		FormatSpecific struct {
			Data struct {
				CreateType string `json:"create-type"`
				Extents    []struct {
					Compressed bool `json:"compressed"`
				} `json:"extents"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(qemuImg(t, "info", "--output=json", "-f", "vmdk", vmdk)), &info); err != nil {
		t.Fatal(err)
	}
	d := info.FormatSpecific.Data
	if info.Format != "vmdk" || info.VirtualSize != size || d.CreateType != "streamOptimized" || len(d.Extents) != 1 || !d.Extents[0].Compressed {
		t.Fatalf("qemu-img info: %+v, want a compressed streamOptimized vmdk of %d bytes", info, size)
	}
	qemuImg(t, "check", "-f", "vmdk", vmdk)
	qemuImg(t, "compare", "-f", "raw", "-F", "vmdk", raw, vmdk)
}

// layout is what parse found in a stream.
type layout struct {
	hdr, footer []byte
	gd          []uint32
	grains      map[int64][]byte // grain number → decompressed content
}

// parse reads a stream front to back as a streaming reader (an ESXi
// import) would: header, descriptor, then markers until end of stream; and
// checks that the footer's grain directory and tables point at what the
// stream holds.
func parse(t *testing.T, p string) layout {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if len(b)%SectorSize != 0 || len(b) < (overhead+3)*SectorSize {
		t.Fatalf("file is %d bytes", len(b))
	}
	l := layout{hdr: b[:SectorSize], grains: map[int64][]byte{}}
	if string(b[:4]) != "KDMV" || le.Uint32(b[4:]) != 3 || le.Uint32(b[8:]) != 0x30001 || le.Uint64(b[56:]) != math64 || le.Uint16(b[77:]) != 1 || le.Uint64(b[64:]) != overhead {
		t.Fatalf("header % x", b[:80])
	}
	desc := string(bytes.TrimRight(b[SectorSize:(1+descSectors)*SectorSize], "\x00"))
	if !strings.Contains(desc, `createType="streamOptimized"`) {
		t.Fatalf("descriptor:\n%s", desc)
	}
	gts := map[uint64][]uint32{} // sector of a grain table → its entries
	at := map[uint64]int64{}     // sector of a grain marker → its grain
	s := uint64(overhead)
	for {
		m := b[s*SectorSize:]
		val, size := le.Uint64(m), le.Uint32(m[8:])
		if size > 0 { // grain marker
			if val%GrainSectors != 0 {
				t.Fatalf("sector %d: grain marker LBA %d not grain-aligned", s, val)
			}
			zr, err := zlib.NewReader(bytes.NewReader(m[grainMarkerLen : grainMarkerLen+size]))
			if err != nil {
				t.Fatalf("sector %d: %v", s, err)
			}
			data, err := io.ReadAll(zr)
			if err != nil || len(data) != GrainSize {
				t.Fatalf("sector %d: grain inflates to %d bytes, %v", s, len(data), err)
			}
			g := int64(val / GrainSectors)
			if _, dup := l.grains[g]; dup {
				t.Fatalf("grain %d twice", g)
			}
			l.grains[g] = data
			at[s] = g
			s += uint64(roundUp(int64(grainMarkerLen+size), SectorSize) / SectorSize)
			continue
		}
		typ := le.Uint32(m[12:])
		switch typ {
		case markerEOS:
			if val != 0 || s+1 != uint64(len(b)/SectorSize) {
				t.Fatalf("end-of-stream marker at sector %d of %d", s, len(b)/SectorSize)
			}
			if l.footer == nil || l.gd == nil {
				t.Fatal("stream ends without grain directory or footer")
			}
			for i, e := range l.gd {
				if e == 0 {
					continue
				}
				gt, ok := gts[uint64(e)]
				if !ok {
					t.Fatalf("grain directory entry %d points at sector %d, not a grain table", i, e)
				}
				for k, ge := range gt {
					if ge == 0 {
						continue
					}
					if g, ok := at[uint64(ge)]; !ok || g != int64(i*GTEntries+k) {
						t.Fatalf("grain table %d entry %d points at sector %d (grain %d, %v)", i, k, ge, g, ok)
					}
				}
				delete(gts, uint64(e))
			}
			if len(gts) != 0 {
				t.Fatalf("grain tables not in the directory: %v", gts)
			}
			return l
		case markerGT:
			if val != gtSectors {
				t.Fatalf("grain table marker of %d sectors", val)
			}
			gt := make([]uint32, GTEntries)
			for i := range gt {
				gt[i] = le.Uint32(m[SectorSize+4*i:])
			}
			gts[s+1] = gt
		case markerGD:
			l.gd = make([]uint32, val*SectorSize/4)
			for i := range l.gd {
				l.gd[i] = le.Uint32(m[SectorSize+4*i:])
			}
			if uint64(le.Uint64(b[len(b)-2*SectorSize+56:])) != s+1 {
				t.Fatalf("footer's gdOffset %d, grain directory at %d", le.Uint64(b[len(b)-2*SectorSize+56:]), s+1)
			}
		case markerFooter:
			l.footer = m[SectorSize : 2*SectorSize]
			if val != 1 {
				t.Fatalf("footer marker of %d sectors", val)
			}
		default:
			t.Fatalf("sector %d: marker type %d", s, typ)
		}
		s += 1 + val
	}
}

const math64 = ^uint64(0)

func TestWriteReadByQemu(t *testing.T) {
	dir := t.TempDir()
	// Not a whole number of grains; data that starts and ends inside
	// grains, a grain written with zeros only (data to the file system,
	// skipped here), a 64 MiB gap (two grain tables omitted) and the last
	// sector.
	const size = 100*mib + 3*SectorSize
	pieces := []piece{{0, 1536}, {GrainSize - 100, 300}, {5*mib + 7, 3 * GrainSize}, {30 * mib, mib}, {96 * mib, 4096}, {size - SectorSize, SectorSize}}
	raw, content := rawDisk(t, dir, size, pieces)
	f, _ := os.OpenFile(raw, os.O_WRONLY, 0)
	f.WriteAt(make([]byte, GrainSize), 40*mib) // an allocated zero grain
	f.Close()
	var done atomic.Int64
	vmdk := writeVMDK(t, raw, size, nil, Options{HWVersion: "13", ExtentName: "x.vmdk", Workers: 3, Progress: func(n int64) { done.Add(n) }})
	qemuChecks(t, vmdk, raw, size)
	if done.Load() != size {
		t.Fatalf("progress added up to %d, want %d", done.Load(), size)
	}
	l := parse(t, vmdk)
	// Exactly the non-zero grains are stored, with the disk's content.
	want := 0
	for g := int64(0); g*GrainSize < size; g++ {
		chunk := content[g*GrainSize : min((g+1)*GrainSize, size)]
		if bytes.Equal(chunk, make([]byte, len(chunk))) {
			if _, ok := l.grains[g]; ok {
				t.Errorf("zero grain %d stored", g)
			}
			continue
		}
		want++
		got, ok := l.grains[g]
		if !ok || !bytes.Equal(got[:len(chunk)], chunk) || !bytes.Equal(got[len(chunk):], make([]byte, GrainSize-len(chunk))) {
			t.Errorf("grain %d: stored %v, content differs", g, ok)
		}
	}
	if len(l.grains) != want {
		t.Fatalf("%d grains stored, want %d", len(l.grains), want)
	}
	// Grain tables: 4 spans of 32 MiB (the last one partial); the third
	// (64–96 MiB) has no data and no table.
	if len(l.gd) != 128 || l.gd[0] == 0 || l.gd[1] != 0 || l.gd[2] != 0 || l.gd[3] == 0 {
		t.Fatalf("grain directory %v", l.gd[:4])
	}
	// The footer is the header with the grain directory's offset.
	if !bytes.Equal(l.footer[:56], l.hdr[:56]) || !bytes.Equal(l.footer[64:], l.hdr[64:]) {
		t.Fatal("footer differs from the header beyond gdOffset")
	}
	desc := string(mustRead(t, vmdk)[SectorSize : 2*SectorSize])
	for _, w := range []string{`RW 204803 SPARSE "x.vmdk"`, `ddb.virtualHWVersion = "13"`, `ddb.adapterType = "lsilogic"`, `ddb.geometry.heads = "255"`, `ddb.geometry.cylinders = "12"`} {
		if !strings.Contains(desc, w) {
			t.Errorf("descriptor lacks %s:\n%s", w, desc)
		}
	}

	// Naming the data regions gives the same disk, reading only them.
	rr := &countingReader{r: openT(t, raw)}
	regions := []Region{{0, 2 * GrainSize}, {5 * mib, mib}, {30 * mib, mib}, {40 * mib, GrainSize}, {96 * mib, 4096}, {size - 4096, 4096}}
	out := filepath.Join(dir, "regions.vmdk")
	w, _ := os.Create(out)
	if err := Write(context.Background(), w, rr, size, regions, Options{Level: 1}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	qemuChecks(t, out, raw, size)
	if n := rr.n.Load(); n > 4*mib {
		t.Fatalf("read %d bytes of a disk with %d bytes of regions", n, 3*mib)
	}
}

// TestSameAsQemuImg: qemu-img's own streamOptimized VMDK of the same disk
// has the same content, and ours is not much larger.
func TestSameAsQemuImg(t *testing.T) {
	dir := t.TempDir()
	const size = 48 * mib
	raw, _ := rawDisk(t, dir, size, []piece{{0, 4 * mib}, {20 * mib, 3*mib + 5}, {size - mib, mib}})
	ours := writeVMDK(t, raw, size, nil, Options{})
	theirs := filepath.Join(dir, "qemu.vmdk")
	qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, theirs)
	qemuImg(t, "compare", "-f", "vmdk", "-F", "vmdk", theirs, ours)
	a, _ := os.Stat(ours)
	b, _ := os.Stat(theirs)
	if a.Size() > b.Size()*11/10 {
		t.Fatalf("ours %d bytes, qemu-img's %d", a.Size(), b.Size())
	}
	t.Logf("ours %d bytes, qemu-img's %d", a.Size(), b.Size())
}

func TestZeroDisk(t *testing.T) {
	dir := t.TempDir()
	const size = 3 * mib
	raw, _ := rawDisk(t, dir, size, nil)
	vmdk := writeVMDK(t, raw, size, []Region{}, Options{})
	qemuChecks(t, vmdk, raw, size)
	l := parse(t, vmdk)
	if len(l.grains) != 0 || len(l.gd) != 128 || l.gd[0] != 0 {
		t.Fatalf("%d grains, directory %v", len(l.grains), l.gd[:1])
	}
	// header sectors + grain directory + footer + end of stream
	if st, _ := os.Stat(vmdk); st.Size() != (overhead+1+1+1+1+1)*SectorSize {
		t.Fatalf("empty disk's stream is %d bytes", st.Size())
	}
}

func TestWriteRefuses(t *testing.T) {
	src := bytes.NewReader(make([]byte, mib))
	for name, c := range map[string]struct {
		size    int64
		regions []Region
		opts    Options
		want    string
	}{
		"unaligned":  {size: mib - 1, want: "multiple of 512"},
		"too big":    {size: MaxSize + SectorSize, want: "2 TiB"},
		"order":      {size: mib, regions: []Region{{GrainSize, 10}, {0, 10}}, want: "out of order"},
		"past end":   {size: mib, regions: []Region{{0, mib + 1}}, want: "past the disk"},
		"level":      {size: mib, opts: Options{Level: 11}, want: "level"},
		"adapter":    {size: mib, opts: Options{AdapterType: "pvscsi"}, want: "adapter type"},
		"quote":      {size: mib, opts: Options{ExtentName: `a"b`}, want: "quotes"},
		"short read": {size: 2 * mib, want: io.ErrUnexpectedEOF.Error()},
	} {
		err := Write(context.Background(), io.Discard, src, c.size, c.regions, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Write = %v, want an error with %q", name, err, c.want)
		}
	}
}

// TestWriteErrors: a failing source, a failing destination and a
// cancelled context end Write with the error, without hanging.
func TestWriteErrors(t *testing.T) {
	const size = 64 * mib
	boom := errors.New("boom")
	data := &patternReader{}
	cases := map[string]struct {
		src  io.ReaderAt
		dst  io.Writer
		want error
	}{
		"source":      {src: &failingReader{after: 100, err: boom}, dst: io.Discard, want: boom},
		"destination": {src: data, dst: &failingWriter{after: 2 * mib, err: boom}, want: boom},
	}
	for name, c := range cases {
		done := make(chan error, 1)
		go func() { done <- Write(context.Background(), c.dst, c.src, size, nil, Options{Workers: 2}) }()
		select {
		case err := <-done:
			if !errors.Is(err, c.want) {
				t.Errorf("%s: Write = %v, want %v", name, err, c.want)
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s: Write hangs after an error", name)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	slow := &slowReader{cancel: cancel, after: 50}
	err := Write(ctx, io.Discard, slow, size, nil, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Write after cancel = %v", err)
	}
	if n := slow.n.Load(); n > 200 {
		t.Fatalf("%d grains read after cancellation at 50", n)
	}
}

func TestDescriptorGeometry(t *testing.T) {
	d, err := Descriptor(4<<30, Options{AdapterType: "ide", HWVersion: "4", ExtentName: "d.vmdk", CID: 0xabc})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"CID=00000abc\n", `ddb.geometry.heads = "16"`, `ddb.geometry.cylinders = "8322"`, `ddb.adapterType = "ide"`, `RW 8388608 SPARSE "d.vmdk"`} {
		if !strings.Contains(string(d), w) {
			t.Errorf("descriptor lacks %s:\n%s", w, d)
		}
	}
}

type countingReader struct {
	r io.ReaderAt
	n atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.n.Add(int64(len(p)))
	return c.r.ReadAt(p, off)
}

type patternReader struct{}

func (patternReader) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		x := uint64(off + int64(i))
		p[i] = byte((x * 2654435761) >> 13) // poorly compressible
	}
	return len(p), nil
}

type failingReader struct {
	after int64
	n     atomic.Int64
	err   error
}

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if f.n.Add(1) > f.after {
		return 0, f.err
	}
	return patternReader{}.ReadAt(p, off)
}

type failingWriter struct {
	after, n int
	err      error
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n += len(p); f.n > f.after {
		return 0, f.err
	}
	return len(p), nil
}

type slowReader struct {
	after  int64
	n      atomic.Int64
	cancel func()
}

func (s *slowReader) ReadAt(p []byte, off int64) (int, error) {
	if s.n.Add(1) == s.after {
		s.cancel()
	}
	time.Sleep(time.Millisecond)
	return patternReader{}.ReadAt(p, off)
}

func openT(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
