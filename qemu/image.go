package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// ImageInfo is what qemu-img reports about a disk image.
type ImageInfo struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size"`
	BackingFile string `json:"backing-filename"`
	// BackingFormat is the backing file's format as recorded in the image.
	BackingFormat string `json:"backing-filename-format"`
}

// QemuImg is the qemu-img binary.
var QemuImg = "qemu-img"

// Info runs `qemu-img info` on path. The format is probed by qemu-img
// (qcow2, raw, vmdk, vhdx, vpc, …).
func Info(ctx context.Context, path string) (*ImageInfo, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	out, err := qemuImg(ctx, "info", "--output=json", "--", path)
	if err != nil {
		return nil, err
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	if info.Format == "" {
		return nil, fmt.Errorf("qemu-img info %s: no format reported", path)
	}
	return &info, nil
}

// Overlay creates out as a qcow2 overlay whose backing file is base (its
// format detected with qemu-img info, referenced by absolute path), so
// writes go to out and base is never modified. A size > 0 grows the virtual
// disk to size bytes; shrinking below base's size is refused. out is
// created under a temporary name in its directory and renamed at the end.
func Overlay(ctx context.Context, base, out string, size int64) error {
	abs, err := filepath.Abs(base)
	if err != nil {
		return err
	}
	info, err := Info(ctx, abs)
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
	if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", info.Format, "-b", abs,
		"-o", "lazy_refcounts=on", tmp.Name(), strconv.FormatInt(size, 10)); err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	return nil
}

func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, QemuImg, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("qemu-img %s: %s", args[0], msg)
	}
	return stdout.Bytes(), nil
}

// ConvertRaw writes the disk image src (of format, "" to probe) as a sparse
// raw image to out: zero and unallocated blocks are holes, so only the
// data is written (4 parallel coroutines, out of order).
func ConvertRaw(ctx context.Context, src, format, out string) error {
	args := []string{"convert", "-m", "4", "-W"}
	if format != "" {
		args = append(args, "-f", format)
	}
	if _, err := qemuImg(ctx, append(args, "-O", "raw", "--", src, out)...); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}
