package boottest

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ecs-image/ecs-image/qemu"
	"github.com/ecs-image/ecs-image/qemuimg"
)

// policy: the artifacts a boot test boots, inspected like every
// image a user hands in (no backing, data or extent files).
var policy = qemuimg.Policy{
	Formats: []string{"qcow2", "raw", "vmdk", "vhdx", "vpc"},
	Hint:    "(want qcow2, raw, vmdk, vhdx, vhd or an OVA)",
}

// artifactDisk returns the disk to put the overlay on, its format and the
// format's label for reports: the artifact itself, or the first disk of an
// OVA extracted into work.
func artifactDisk(ctx context.Context, artifact, work string) (disk, format, label string, err error) {
	if isTar(artifact) {
		disk, err := extractOVA(artifact, work)
		if err != nil {
			return "", "", "", &InputError{err}
		}
		info, err := qemuimg.Inspect(ctx, disk, policy)
		if err != nil {
			return "", "", "", &InputError{fmt.Errorf("%s: %w", artifact, err)}
		}
		return disk, info.Format, "ova/" + info.Format, nil
	}
	info, err := qemuimg.Inspect(ctx, artifact, policy)
	if err != nil {
		return "", "", "", &InputError{err}
	}
	return artifact, info.Format, info.Format, nil
}

// isTar reports whether path is a tar archive (an OVA).
func isTar(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 262)
	if _, err := io.ReadFull(f, buf); err != nil {
		return false
	}
	return string(buf[257:262]) == "ustar"
}

// extractOVA copies the first .vmdk of an OVA into dir.
func extractOVA(ova, dir string) (string, error) {
	f, err := os.Open(ova)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s: an OVA without a .vmdk disk", ova)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", ova, err)
		}
		if h.Typeflag != tar.TypeReg || !strings.HasSuffix(strings.ToLower(h.Name), ".vmdk") {
			continue
		}
		out := filepath.Join(dir, "ova-disk.vmdk")
		w, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", err
		}
		if _, err := io.Copy(w, tr); err != nil {
			w.Close()
			return "", fmt.Errorf("%s: %s: %w", ova, h.Name, err)
		}
		return out, w.Close()
	}
}

// dataDisk checks a further disk for the guest (Options.Disks): a qcow2
// must be self-contained (qemuimg.Inspect: no backing or data file); any
// other regular, non-empty file is attached as raw, which makes QEMU open
// nothing else (a raw ext4 volume has no partition table to probe).
func dataDisk(ctx context.Context, path string) (qemu.DataDisk, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return qemu.DataDisk{}, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return qemu.DataDisk{}, err
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return qemu.DataDisk{}, fmt.Errorf("%s: not a regular, non-empty file", path)
	}
	f, err := os.Open(abs)
	if err != nil {
		return qemu.DataDisk{}, err
	}
	magic := make([]byte, 4)
	_, err = io.ReadFull(f, magic)
	f.Close()
	if err == nil && string(magic) == "QFI\xfb" {
		if _, err := qemuimg.Inspect(ctx, abs, qemuimg.Policy{Formats: []string{"qcow2"}, Format: "qcow2"}); err != nil {
			return qemu.DataDisk{}, err
		}
		return qemu.DataDisk{File: abs, Format: "qcow2"}, nil
	}
	return qemu.DataDisk{File: abs, Format: "raw"}, nil
}
