// Package vmdkstream writes a raw disk image as a streamOptimized VMDK (the
// disk format of OVAs, EC2 ImportSnapshot and VMware's stream imports),
// deflating its grains on every core: qemu-img deflates them one after
// another on a single thread, which made the VMDK the slowest output.
//
// The layout is the stream-optimized compressed sparse extent of VMware's
// "Virtual Disk Format 1.1" (and 5.0) technical notes, as VMware's own
// tools write it:
//
//	sector 0        sparse extent header: version 3, flags "newline
//	                test + compressed grains + markers", deflate,
//	                gdOffset = GD_AT_END (the real one is in the footer)
//	sector 1..20    the embedded descriptor, createType="streamOptimized"
//	sector 128..    for each grain (64 KiB of the disk) that is not all
//	                zero, in disk order: a grain marker (LBA, compressed
//	                size) and the zlib stream, padded to a sector;
//	                after the grains of each 32 MiB span, that span's
//	                grain table behind a metadata marker (type 1); spans
//	                without data have no table (grain directory entry 0,
//	                as VMware's and VirtualBox's writers do)
//	then            the grain directory behind a metadata marker (type 2),
//	                the footer marker (type 3) and a copy of the header
//	                with the grain directory's offset, and the
//	                end-of-stream marker (a zero sector).
//
// Grains are compressed in parallel and written in disk order, so the
// output is one sequential write. The source is an io.ReaderAt of raw disk
// bytes (a sparse raw file that qemu-img wrote: this package never parses
// an image format); zero grains are skipped, and the caller may name the
// data regions of a sparse source so that holes are not even read.
package vmdkstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/adler32"
	"hash/crc32"
	"io"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zlib"
)

// Format constants (VMware Virtual Disk Format 1.1, "Hosted Sparse Extent
// Header" and "Stream-Optimized Compressed Sparse Extents").
const (
	SectorSize   = 512
	GrainSectors = 128                        // 64 KiB grains, the only size VMware's stream tools write
	GrainSize    = GrainSectors * SectorSize  // bytes of disk per grain
	GTEntries    = 512                        // grain table entries: one table covers 32 MiB
	gtSectors    = GTEntries * 4 / SectorSize // 4
	descSectors  = 20                         // room for the embedded descriptor (10 KiB, as qemu-img)
	overhead     = GrainSectors               // first grain sector: header + descriptor rounded up to a grain

	magic           = 0x564d444b // "KDMV"
	version         = 3          // stream-optimized extents are version 3
	flagNewlineTest = 1 << 0
	flagCompressed  = 1 << 16
	flagMarkers     = 1 << 17
	compressDeflate = 1
	gdAtEnd         = math.MaxUint64

	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3

	grainMarkerLen = 12 // LBA (8 bytes) + compressed size (4 bytes)
)

// MaxSize is the largest disk this writer takes (2 TiB, VMware's limit for
// a sparse extent: its tables hold 32-bit sector numbers).
const MaxSize = 2 << 40

// Options describe the disk written into the descriptor and how to write it.
type Options struct {
	// AdapterType is ddb.adapterType: "lsilogic" (default), "ide",
	// "buslogic", "legacyESX".
	AdapterType string
	// HWVersion is ddb.virtualHWVersion (default "4").
	HWVersion string
	// ExtentName is the file name in the descriptor's extent line (the
	// extent is the file itself; readers do not open it). Default
	// "disk.vmdk".
	ExtentName string
	// CID is the descriptor's content ID; 0 picks a random one.
	CID uint32
	// Level is the deflate level, 1 (fastest) to 9 (smallest); 0 is 6.
	Level int
	// Workers compress grains in parallel; 0 is runtime.NumCPU().
	Workers int
	// Progress, if set, is called (from one goroutine) with the number of
	// disk bytes just done, read or skipped; the calls add up to the size.
	Progress func(n int64)
	// Reuse, if set, holds compressed grains of an earlier stream (written
	// at the same Level): a grain whose SHA-256 it knows is copied from it
	// instead of deflated, once the copy's CRC-32C is the one recorded
	// and its zlib header and Adler-32 match the grain. Reuse is called
	// from every worker at once.
	Reuse Reuse
	// Record, if set, is called (from one goroutine, in disk order) for
	// every grain written, with where its zlib stream lies in the output:
	// what a Reuse of this stream needs.
	Record func(Grain)
	// Stats, if set, receives the counts of the grains written.
	Stats *Stats
}

// Reuse is a source of compressed grains (package grainstore's).
type Reuse interface {
	// Grain appends to dst the zlib stream of the grain whose 64 KiB of
	// disk have the SHA-256 sum, with the CRC-32C recorded for it, and
	// reports whether it has one.
	Grain(sum *[32]byte, dst []byte) (z []byte, crc uint32, ok bool)
}

// Grain is a grain written, as Options.Record reports it.
type Grain struct {
	Sum [32]byte // SHA-256 of the grain's 64 KiB of disk (zero-padded past its end)
	Off int64    // offset of its zlib stream in the output
	Len int      // length of its zlib stream
	CRC uint32   // CRC-32C (Castagnoli) of its zlib stream
}

// Stats counts the grains of a stream.
type Stats struct {
	Grains   int64 // non-zero grains written
	Reused   int64 // of them, copied from Options.Reuse
	Rejected int64 // copies refused (CRC-32C, zlib header or Adler-32 wrong) and deflated
}

// Region is a byte range of the source that may hold data; everything
// outside the regions given to Write reads as zeros.
type Region struct{ Off, Len int64 }

// Write writes the size bytes of src as a streamOptimized VMDK to w. With
// regions nil, the whole source is read; otherwise only the grains that
// overlap a region (sorted by offset, not overlapping) are. size must be a
// multiple of SectorSize. On error (or when ctx ends) w holds a partial
// stream: write to a temporary file and rename it on success.
func Write(ctx context.Context, w io.Writer, src io.ReaderAt, size int64, regions []Region, opts Options) error {
	if size <= 0 || size%SectorSize != 0 {
		return fmt.Errorf("vmdkstream: disk size %d is not a positive multiple of %d bytes", size, SectorSize)
	}
	if size > MaxSize {
		return fmt.Errorf("vmdkstream: disk size %d exceeds the 2 TiB of a sparse extent", size)
	}
	if regions == nil {
		regions = []Region{{0, size}}
	}
	if err := checkRegions(regions, size); err != nil {
		return err
	}
	if opts.AdapterType == "" {
		opts.AdapterType = "lsilogic"
	}
	if opts.HWVersion == "" {
		opts.HWVersion = "4"
	}
	if opts.ExtentName == "" {
		opts.ExtentName = "disk.vmdk"
	}
	if opts.Level == 0 {
		opts.Level = 6
	}
	if opts.Level < 1 || opts.Level > 9 {
		return fmt.Errorf("vmdkstream: deflate level %d not in 1..9", opts.Level)
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.NumCPU()
	}
	if opts.CID == 0 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		opts.CID = binary.LittleEndian.Uint32(b[:])&0x7fffffff | 1 // never 0, never ffffffff (no parent)
	}
	desc, err := Descriptor(size, opts)
	if err != nil {
		return err
	}
	capacity := uint64(size / SectorSize)
	hdr := header(capacity, gdAtEnd)

	sw := &streamWriter{w: bufio.NewWriterSize(w, 1<<20)}
	head := make([]byte, overhead*SectorSize)
	copy(head, hdr)
	copy(head[SectorSize:], desc)
	if err := sw.write(head); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	grains := (size + GrainSize - 1) / GrainSize
	gd := make([]uint32, (grains+GTEntries-1)/GTEntries)
	jobs := make(chan *grainJob, opts.Workers*2)
	ordered := make(chan *grainJob, opts.Workers*8)
	pool := &sync.Pool{New: func() any { return &grainJob{in: make([]byte, GrainSize)} }}

	var wg sync.WaitGroup
	wg.Add(1 + opts.Workers)
	go func() { // producer: the candidate grains in disk order
		defer wg.Done()
		defer close(jobs)
		defer close(ordered)
		next := int64(0) // first grain not yet queued
		for _, r := range regions {
			first, last := r.Off/GrainSize, (r.Off+r.Len-1)/GrainSize
			for g := max(first, next); g <= last; g++ {
				j := pool.Get().(*grainJob)
				j.grain, j.done, j.err, j.zero, j.copied = g, make(chan struct{}), nil, false, false
				j.skipped = (g - next) * GrainSize // holes before it
				next = g + 1
				select {
				case ordered <- j:
				case <-ctx.Done():
					return
				}
				select {
				case jobs <- j:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	hash := opts.Reuse != nil || opts.Record != nil
	var reused, rejected atomic.Int64
	for range opts.Workers {
		go func() { // compressors
			defer wg.Done()
			zw, _ := zlib.NewWriterLevel(io.Discard, opts.Level)
			for j := range jobs {
				if j.read(src, size) && !j.zero {
					if hash {
						j.sum = sha256.Sum256(j.in)
					}
					switch {
					case opts.Reuse != nil && j.reuse(opts.Reuse):
						reused.Add(1)
					case j.copied:
						rejected.Add(1)
						fallthrough
					default:
						j.compress(zw)
					}
				}
				close(j.done)
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()

	var gt [GTEntries]uint32
	curGT, used := int64(-1), false
	flushGT := func() error {
		if !used {
			return nil
		}
		if err := sw.marker(gtSectors, markerGT); err != nil {
			return err
		}
		gd[curGT] = uint32(sw.sector)
		var buf [GTEntries * 4]byte
		for i, e := range gt {
			binary.LittleEndian.PutUint32(buf[4*i:], e)
		}
		clear(gt[:])
		used = false
		return sw.write(buf[:])
	}
	written := int64(0) // non-zero grains
	done := int64(0)    // disk bytes accounted for
	progress := func(n int64) {
		n = min(n, size-done)
		done += n
		if opts.Progress != nil && n > 0 {
			opts.Progress(n)
		}
	}
	for j := range ordered {
		select {
		case <-j.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if j.err != nil {
			cancel()
			return j.err
		}
		progress(j.skipped)
		if !j.zero {
			if t := j.grain / GTEntries; t != curGT {
				if err := flushGT(); err != nil {
					cancel()
					return err
				}
				curGT = t
			}
			if sw.sector > math.MaxUint32 {
				cancel()
				return errors.New("vmdkstream: the stream outgrew the 32-bit sector numbers of a grain table")
			}
			gt[j.grain%GTEntries] = uint32(sw.sector)
			used = true
			written++
			if opts.Record != nil {
				b := j.out.Bytes()
				n := binary.LittleEndian.Uint32(b[8:])
				opts.Record(Grain{Sum: j.sum, Off: int64(sw.sector)*SectorSize + grainMarkerLen, Len: int(n), CRC: crc32.Checksum(b[grainMarkerLen:grainMarkerLen+n], castagnoli)})
			}
			if err := sw.write(j.out.Bytes()); err != nil {
				cancel()
				return err
			}
		}
		progress(GrainSize)
		pool.Put(j)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	progress(size - done) // the hole after the last region
	if opts.Stats != nil {
		*opts.Stats = Stats{Grains: written, Reused: reused.Load(), Rejected: rejected.Load()}
	}
	if err := flushGT(); err != nil {
		return err
	}
	gdBytes := make([]byte, roundUp(int64(len(gd))*4, SectorSize))
	for i, e := range gd {
		binary.LittleEndian.PutUint32(gdBytes[4*i:], e)
	}
	if err := sw.marker(uint64(len(gdBytes)/SectorSize), markerGD); err != nil {
		return err
	}
	gdOffset := sw.sector
	if err := sw.write(gdBytes); err != nil {
		return err
	}
	if err := sw.marker(1, markerFooter); err != nil {
		return err
	}
	if err := sw.write(header(capacity, gdOffset)); err != nil {
		return err
	}
	if err := sw.marker(0, markerEOS); err != nil {
		return err
	}
	return sw.w.Flush()
}

// grainJob is one grain on its way from the source to the stream.
type grainJob struct {
	grain   int64
	skipped int64 // bytes of holes between the previous candidate and this grain
	in      []byte
	sum     [32]byte     // SHA-256 of in (with Reuse or Record)
	z       []byte       // a zlib stream from Reuse
	out     bytes.Buffer // grain marker + zlib stream, padded to a sector
	zero    bool
	copied  bool // Reuse had the grain (out holds it only if reuse returned true)
	err     error
	done    chan struct{}
}

var zeroGrain = make([]byte, GrainSize)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// read reads the grain (zero-padded past the end of the disk) and notes
// whether it is all zero; it returns false on error (j.err).
func (j *grainJob) read(src io.ReaderAt, size int64) bool {
	off := j.grain * GrainSize
	n := min(GrainSize, size-off)
	if m, err := src.ReadAt(j.in[:n], off); int64(m) < n {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the source is shorter than the disk
		}
		j.err = fmt.Errorf("vmdkstream: reading the disk at %d: %w", off, err)
		return false
	}
	clear(j.in[n:])
	j.zero = bytes.Equal(j.in, zeroGrain)
	return true
}

// reuse puts the grain's zlib stream from r behind its grain marker, if r
// has one that is what r recorded (CRC-32C), whose zlib header is sound
// and whose Adler-32 (the stream's last four bytes) is the grain's;
// j.copied tells whether r had one at all.
func (j *grainJob) reuse(r Reuse) bool {
	z, crc, ok := r.Grain(&j.sum, j.z[:0])
	j.z, j.copied = z, ok
	if !ok || crc32.Checksum(z, castagnoli) != crc || !zlibMatches(z, j.in) {
		return false
	}
	j.out.Reset()
	j.marker(len(z))
	j.out.Write(z)
	j.pad()
	return true
}

// zlibMatches reports whether z is plausibly the zlib stream of data: a
// deflate header without preset dictionary, room for a body, and data's
// Adler-32 as its trailer.
func zlibMatches(z, data []byte) bool {
	n := len(z)
	if n < 2+1+4 || n > math.MaxUint32 || z[0]&0x0f != 8 || z[0]>>4 > 7 || z[1]&0x20 != 0 || (uint16(z[0])<<8|uint16(z[1]))%31 != 0 {
		return false
	}
	return binary.BigEndian.Uint32(z[n-4:]) == adler32.Checksum(data)
}

// compress deflates the grain behind its grain marker.
func (j *grainJob) compress(zw *zlib.Writer) {
	j.out.Reset()
	j.marker(0)
	zw.Reset(&j.out)
	if _, err := zw.Write(j.in); err != nil {
		j.err = err
		return
	}
	if err := zw.Close(); err != nil {
		j.err = err
		return
	}
	b := j.out.Bytes()
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)-grainMarkerLen))
	j.pad()
}

// marker writes the grain marker: the grain's LBA and n, the size of its
// zlib stream (compress fills it in afterwards).
func (j *grainJob) marker(n int) {
	var m [grainMarkerLen]byte
	binary.LittleEndian.PutUint64(m[0:], uint64(j.grain*GrainSectors))
	binary.LittleEndian.PutUint32(m[8:], uint32(n))
	j.out.Write(m[:])
}

// pad pads the marker and stream to a whole sector.
func (j *grainJob) pad() {
	n := int64(j.out.Len())
	j.out.Write(zeroGrain[:roundUp(n, SectorSize)-n])
}

// streamWriter counts the sectors written.
type streamWriter struct {
	w      *bufio.Writer
	sector uint64 // next sector of the stream
}

func (s *streamWriter) write(b []byte) error {
	if len(b)%SectorSize != 0 {
		panic("vmdkstream: unaligned write")
	}
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	s.sector += uint64(len(b) / SectorSize)
	return nil
}

// marker writes a metadata marker: the size of what follows in sectors,
// then (after the 4-byte size field that is 0 for metadata) its type.
func (s *streamWriter) marker(sectors uint64, typ uint32) error {
	var m [SectorSize]byte
	binary.LittleEndian.PutUint64(m[0:], sectors)
	binary.LittleEndian.PutUint32(m[12:], typ)
	return s.write(m[:])
}

// header is the sparse extent header (one sector, little endian).
func header(capacity, gdOffset uint64) []byte {
	h := make([]byte, SectorSize)
	le := binary.LittleEndian
	le.PutUint32(h[0:], magic)
	le.PutUint32(h[4:], version)
	le.PutUint32(h[8:], flagNewlineTest|flagCompressed|flagMarkers)
	le.PutUint64(h[12:], capacity)
	le.PutUint64(h[20:], GrainSectors)
	le.PutUint64(h[28:], 1) // descriptor offset
	le.PutUint64(h[36:], descSectors)
	le.PutUint32(h[44:], GTEntries)
	le.PutUint64(h[48:], 0) // no redundant grain directory in a stream
	le.PutUint64(h[56:], gdOffset)
	le.PutUint64(h[64:], overhead)
	h[72] = 0                                          // clean shutdown
	h[73], h[74], h[75], h[76] = '\n', ' ', '\r', '\n' // newline detection characters
	le.PutUint16(h[77:], compressDeflate)
	return h
}

// Descriptor is the embedded descriptor of a disk of size bytes. Like
// qemu-img's, it gives a BIOS geometry of 255 heads (16 for IDE) and 63
// sectors, and ddb.toolsVersion 2147483647 ("tools not managed"), which
// vSphere expects in imported disks.
func Descriptor(size int64, opts Options) ([]byte, error) {
	for _, v := range []string{opts.AdapterType, opts.HWVersion, opts.ExtentName} {
		if v == "" || len(v) > 256 || bytes.ContainsAny([]byte(v), "\"\n\r\x00") {
			return nil, fmt.Errorf("vmdkstream: descriptor value %q is empty or has quotes or control characters", v)
		}
	}
	switch opts.AdapterType {
	case "ide", "lsilogic", "buslogic", "legacyESX":
	default:
		return nil, fmt.Errorf("vmdkstream: adapter type %q (want ide, lsilogic, buslogic or legacyESX)", opts.AdapterType)
	}
	heads := int64(255)
	if opts.AdapterType == "ide" {
		heads = 16
	}
	sectors := size / SectorSize
	d := fmt.Sprintf(`# Disk DescriptorFile
version=1
CID=%08x
parentCID=ffffffff
createType="streamOptimized"

# Extent description
RW %d SPARSE "%s"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "%s"
ddb.geometry.cylinders = "%d"
ddb.geometry.heads = "%d"
ddb.geometry.sectors = "63"
ddb.adapterType = "%s"
ddb.toolsVersion = "2147483647"
`, opts.CID, sectors, opts.ExtentName, opts.HWVersion, sectors/(heads*63), heads, opts.AdapterType)
	if len(d) > descSectors*SectorSize {
		return nil, errors.New("vmdkstream: descriptor too long")
	}
	return []byte(d), nil
}

func checkRegions(rs []Region, size int64) error {
	end := int64(0)
	for _, r := range rs {
		if r.Off < end || r.Len <= 0 || r.Off+r.Len > size {
			return fmt.Errorf("vmdkstream: data region [%d, +%d) is out of order, empty or past the disk's %d bytes", r.Off, r.Len, size)
		}
		end = r.Off + r.Len
	}
	return nil
}

func roundUp(n, align int64) int64 { return (n + align - 1) / align * align }
