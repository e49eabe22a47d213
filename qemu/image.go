package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// Overlay creates out as a qcow2 overlay whose backing file is base (of
// format, referenced by absolute path), so writes go to out and base is
// never modified. A size > 0 grows the virtual disk to size bytes;
// shrinking below base's size is refused. out is created under a temporary
// name in its directory and renamed at the end. An image a user handed in
// must have passed qemuimg.Inspect first.
func Overlay(ctx context.Context, base, format, out string, size int64) error {
	abs, err := filepath.Abs(base)
	if err != nil {
		return err
	}
	info, err := qemuimg.ReadInfo(ctx, abs, format)
	if err != nil {
		return fmt.Errorf("overlay on %s: %w", base, err)
	}
	if size > 0 && size < info.VirtualSize {
		return fmt.Errorf("overlay on %s: size %d bytes is smaller than the base's %d bytes (disks cannot shrink)", base, size, info.VirtualSize)
	}
	if size <= 0 {
		size = info.VirtualSize
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if _, err := qemuimg.Run(ctx, "create", "-q", "-f", "qcow2", "-F", format, "-b", abs,
		"-o", "lazy_refcounts=on", tmp.Name(), strconv.FormatInt(size, 10)); err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	return nil
}

// ConvertRaw writes the disk image src (of format) as a sparse raw image to
// out: zero and unallocated blocks are holes, so only the data is written
// (4 parallel coroutines, out of order).
func ConvertRaw(ctx context.Context, src, format, out string) error {
	abs, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if _, err := qemuimg.Run(ctx, "convert", "-m", "4", "-W", "-f", format, "-O", "raw", abs, out); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}
