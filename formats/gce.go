package formats

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"path/filepath"
)

// gzipLevel is used for gce tarballs and Vagrant boxes. BestSpeed: the
// payload is mostly zeros (raw) or already compressed (qcow2, stream VMDK),
// where higher levels cost minutes and save little.
const gzipLevel = gzip.BestSpeed

func gzipWriter(w io.Writer) io.WriteCloser {
	z, _ := gzip.NewWriterLevel(w, gzipLevel) // error only for a bad level
	return z
}

// writeGCE writes what `gcloud compute images create --source-uri` imports:
// a gzipped GNU tar holding one file, disk.raw, whose size is a whole number
// of GiB.
func writeGCE(ctx context.Context, j *job) error {
	src, format, size, err := resized(ctx, j.in, j.scratch, gib)
	if err != nil {
		return err
	}
	raw := filepath.Join(j.scratch, "disk.raw")
	if err := j.convert(ctx, src, format, size, raw, "-O", "raw", "-S", "4k"); err != nil {
		return err
	}
	return writeTar(ctx, j, j.out, tar.FormatGNU, []tarFile{{name: "disk.raw", path: raw}}, gzipWriter)
}
