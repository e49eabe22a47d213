package formats

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// inputPolicy: the formats' input is one standalone qcow2 image.
var inputPolicy = qemuimg.Policy{
	Formats: []string{"qcow2"},
	Hint:    "(convert it first: qemu-img convert -O qcow2 IN OUT.qcow2)",
}

// Inspect checks that path is a standalone, safe qcow2 image
// (qemuimg.Inspect: no backing or external data file, not dirty or
// corrupt, qemu-img check passes) and describes it.
func Inspect(ctx context.Context, path string) (*qemuimg.Info, error) {
	info, err := qemuimg.Inspect(ctx, path, inputPolicy)
	if err != nil {
		var ie *qemuimg.ImageError
		if errors.As(err, &ie) {
			return nil, &InputError{Path: ie.Path, Msg: ie.Msg}
		}
		return nil, err
	}
	return info, nil
}

// resized returns a source for conversions whose virtual size is in's
// rounded up to a multiple of align: in itself when already aligned, else a
// thin qcow2 overlay (in as its backing file) in dir.
func resized(ctx context.Context, in *qemuimg.Info, dir string, align int64) (path, format string, size int64, err error) {
	size = roundUp(in.VirtualSize, align)
	if size == in.VirtualSize {
		return in.Path, in.Format, size, nil
	}
	abs, err := filepath.Abs(in.Path)
	if err != nil {
		return "", "", 0, err
	}
	f, err := os.CreateTemp(dir, fmt.Sprintf("resized-%d-*.qcow2", size))
	if err != nil {
		return "", "", 0, err
	}
	f.Close()
	ov, err := filepath.Abs(f.Name())
	if err != nil {
		return "", "", 0, err
	}
	if _, err := qemuimg.Run(ctx, "create", "-q", "-f", "qcow2", "-F", in.Format, "-b", abs, ov, strconv.FormatInt(size, 10)); err != nil {
		return "", "", 0, err
	}
	return ov, "qcow2", size, nil
}

func roundUp(n, align int64) int64 {
	return (n + align - 1) / align * align
}

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)
