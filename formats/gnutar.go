package formats

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Old-GNU sparse tar ('S' members), the format of `tar --format=oldgnu -S`,
// which Google documents for image import. archive/tar reads it but cannot
// write it; only the data regions of the file are stored, so a mostly empty
// raw disk is not read and compressed in full.

const (
	blockSize        = 512
	seekData         = 3 // SEEK_DATA (Linux)
	seekHole         = 4 // SEEK_HOLE
	sparseInHeader   = 4
	sparseInExtBlock = 21
)

// region is a run of data in a sparse file.
type region struct{ off, len int64 }

// dataRegions lists f's data regions with SEEK_DATA/SEEK_HOLE; where the
// file system cannot tell, the whole file is one region.
func dataRegions(f *os.File, size int64) ([]region, error) {
	var rs []region
	off := int64(0)
	for off < size {
		data, err := f.Seek(off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) { // no data after off
				break
			}
			if errors.Is(err, syscall.EINVAL) && off == 0 { // unsupported
				return []region{{0, size}}, nil
			}
			return nil, err
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return nil, err
		}
		if hole > size {
			hole = size
		}
		rs = append(rs, region{data, hole - data})
		off = hole
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return rs, nil
}

// putNumeric writes n into a tar numeric field: octal with a NUL
// terminator, or GNU base-256 when it does not fit.
func putNumeric(b []byte, n int64) {
	if n < 1<<(3*(len(b)-1)) {
		s := fmt.Sprintf("%0*o", len(b)-1, n)
		copy(b, s)
		b[len(b)-1] = 0
		return
	}
	for i := len(b) - 1; i > 0; i-- {
		b[i] = byte(n)
		n >>= 8
	}
	b[0] = 0x80
}

func putSparse(b []byte, r region) {
	putNumeric(b[0:12], r.off)
	putNumeric(b[12:24], r.len)
}

// gnuSparseHeader builds the member header and extension blocks.
func gnuSparseHeader(name string, realSize int64, rs []region, mtime time.Time) ([]byte, error) {
	if len(name) >= 100 {
		return nil, fmt.Errorf("tar member name %q too long", name)
	}
	var stored int64
	for _, r := range rs {
		stored += r.len
	}
	// GNU tar ends the map with the file's end when it is a hole.
	if len(rs) == 0 || rs[len(rs)-1].off+rs[len(rs)-1].len < realSize {
		rs = append(rs, region{realSize, 0})
	}
	h := make([]byte, blockSize)
	copy(h[0:100], name)
	putNumeric(h[100:108], 0o644)
	putNumeric(h[108:116], 0)
	putNumeric(h[116:124], 0)
	putNumeric(h[124:136], stored)
	putNumeric(h[136:148], mtime.Unix())
	h[156] = 'S'
	copy(h[257:265], "ustar  \x00")
	copy(h[265:297], "root")
	copy(h[297:329], "root")
	for i := 0; i < sparseInHeader && i < len(rs); i++ {
		putSparse(h[386+24*i:], rs[i])
	}
	putNumeric(h[483:495], realSize)
	rest := rs[min(sparseInHeader, len(rs)):]
	if len(rest) > 0 {
		h[482] = 1
	}
	// Checksum: header bytes summed with the checksum field as spaces.
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))

	out := h
	for len(rest) > 0 {
		ext := make([]byte, blockSize)
		n := min(sparseInExtBlock, len(rest))
		for i := 0; i < n; i++ {
			putSparse(ext[24*i:], rest[i])
		}
		rest = rest[n:]
		if len(rest) > 0 {
			ext[504] = 1
		}
		out = append(out, ext...)
	}
	return out, nil
}

// writeSparseTar writes an old-GNU tar holding the file at path as a
// sparse member called name, then the end-of-archive blocks.
func writeSparseTar(ctx context.Context, w io.Writer, name, path string, j *job) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	rs, err := dataRegions(f, st.Size())
	if err != nil {
		return fmt.Errorf("%s: finding data regions: %w", path, err)
	}
	hdr, err := gnuSparseHeader(name, st.Size(), rs, st.ModTime())
	if err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	var data int64
	for _, r := range rs {
		data += r.len
	}
	tr := j.tracker("pack", data)
	defer tr.Done()
	var stored int64
	for _, r := range rs {
		n, err := io.Copy(w, tr.Reader(ctxReader{ctx, io.NewSectionReader(f, r.off, r.len)}))
		if err != nil {
			return err
		}
		if n != r.len {
			return fmt.Errorf("%s changed while archiving it", path)
		}
		stored += n
	}
	pad := (blockSize - stored%blockSize) % blockSize
	_, err = w.Write(make([]byte, pad+2*blockSize))
	return err
}
