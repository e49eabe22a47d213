package formats

import (
	"bufio"
	"compress/gzip"
	"context"
	"io"
	"os"
)

// gzipWriter compresses gce tarballs: BestSpeed, since most of a raw
// disk's data is either empty or cheap to squeeze, and higher levels cost
// minutes for a few percent.
func gzipWriter(w io.Writer) io.WriteCloser {
	z, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // error only for a bad level
	return z
}

// boxGzipWriter compresses Vagrant boxes, whose payload (compressed qcow2,
// stream VMDK) is already deflated: Huffman-only keeps a valid .box (tar.gz)
// at a fraction of the CPU time of re-deflating it.
func boxGzipWriter(w io.Writer) io.WriteCloser {
	z, _ := gzip.NewWriterLevel(w, gzip.HuffmanOnly)
	return z
}

// writeGCE writes what `gcloud compute images create --source-uri` imports:
// a gzipped tar holding one file, disk.raw, whose size is a whole number of
// GiB, in the old-GNU sparse format Google's guide uses
// (tar --format=oldgnu -S): only the disk's data regions are stored.
func writeGCE(ctx context.Context, j *job) error {
	raw, _, err := j.rawDisk(ctx, gib)
	if err != nil {
		return err
	}
	fh, err := os.Create(j.out)
	if err != nil {
		return err
	}
	defer fh.Close()
	bw := bufio.NewWriterSize(fh, 1<<20)
	z := gzipWriter(bw)
	if err := writeSparseTar(ctx, z, "disk.raw", raw, j); err != nil {
		return err
	}
	if err := z.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := fh.Sync(); err != nil {
		return err
	}
	return fh.Close()
}
