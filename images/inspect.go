package images

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// MaxVirtualSize is the largest virtual disk size Inspect accepts (2 TiB).
var MaxVirtualSize int64 = 2 << 40

// Formats Inspect accepts for bases. Others (vmdk with extent files, ...) can
// reference host files and are refused.
var Formats = []string{"qcow2", "raw"}

// Info is what Inspect found out about an image file.
type Info struct {
	Path        string `json:"path"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size"`
	ClusterSize int64  `json:"cluster-size,omitempty"`
	Compat      string `json:"compat,omitempty"`
}

// ImageError is an image file refused by Inspect (bad input: exit 2).
type ImageError struct {
	Path string
	Msg  string
}

func (e *ImageError) Error() string { return e.Path + ": " + e.Msg }

type qemuImgInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	ActualSize      int64  `json:"actual-size"`
	ClusterSize     int64  `json:"cluster-size"`
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	DirtyFlag       bool   `json:"dirty-flag"`
	FormatSpecific  *struct {
		Type string `json:"type"`
		Data struct {
			Compat   string `json:"compat"`
			DataFile string `json:"data-file"`
			Corrupt  bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

// Inspect checks that path is a disk image of format wantFormat ("" means
// any of Formats) that is safe to boot: no backing file, no external data
// file, not marked corrupt, a sane virtual size. It reads the qcow2 header
// itself before running qemu-img info --output=json, so a crafted image
// never makes qemu-img open another file.
func Inspect(ctx context.Context, path, wantFormat string) (*Info, error) {
	if wantFormat != "" && !knownFormat(wantFormat) {
		return nil, &ImageError{path, fmt.Sprintf("format %q not supported for bases (want one of %s)", wantFormat, strings.Join(Formats, ", "))}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &ImageError{path, "not a regular file"}
	}
	probed, err := probeHeader(path)
	if err != nil {
		return nil, err
	}
	if wantFormat != "" && probed != wantFormat {
		return nil, &ImageError{path, fmt.Sprintf("declared format %s, but the file is %s", wantFormat, describeProbe(probed))}
	}
	if probed != "qcow2" && probed != "raw" {
		msg := describeProbe(probed)
		if !strings.HasPrefix(msg, "not a disk image") {
			msg = "not a disk image: " + msg
		}
		return nil, &ImageError{path, msg}
	}
	return qemuInfo(ctx, path, probed)
}

// qemuInfo runs qemu-img info on path (opened as format) and applies the
// same refusals as the header probe, from qemu's point of view.
func qemuInfo(ctx context.Context, path, probed string) (*Info, error) {
	cmd := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", "-f", probed, path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, &ImageError{path, "qemu-img info: " + strings.TrimSpace(stderr.String())}
		}
		return nil, fmt.Errorf("qemu-img info (apt-get install qemu-utils): %w", err)
	}
	var qi qemuImgInfo
	if err := json.Unmarshal(out, &qi); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: bad JSON: %w", path, err)
	}
	if qi.Format != probed {
		return nil, &ImageError{path, fmt.Sprintf("qemu-img reports format %s, expected %s", qi.Format, probed)}
	}
	if qi.BackingFilename != "" || qi.FullBacking != "" {
		return nil, &ImageError{path, fmt.Sprintf("has a backing file (%s); bases must be self-contained", qi.BackingFilename)}
	}
	info := &Info{Path: path, Format: qi.Format, VirtualSize: qi.VirtualSize, ActualSize: qi.ActualSize, ClusterSize: qi.ClusterSize}
	if fs := qi.FormatSpecific; fs != nil {
		if fs.Data.DataFile != "" {
			return nil, &ImageError{path, fmt.Sprintf("has an external data file (%s); bases must be self-contained", fs.Data.DataFile)}
		}
		if fs.Data.Corrupt {
			return nil, &ImageError{path, "qcow2 image is marked corrupt"}
		}
		info.Compat = fs.Data.Compat
	}
	if info.VirtualSize <= 0 {
		return nil, &ImageError{path, "virtual size is 0"}
	}
	if info.VirtualSize > MaxVirtualSize {
		return nil, &ImageError{path, fmt.Sprintf("virtual size %d bytes exceeds the limit of %d bytes", info.VirtualSize, MaxVirtualSize)}
	}
	return info, nil
}

func knownFormat(f string) bool {
	for _, k := range Formats {
		if k == f {
			return true
		}
	}
	return false
}

// qcow2 header fields (big endian), see qemu's docs/interop/qcow2.txt.
const (
	qcow2Magic             = 0x514649fb // "QFI\xfb"
	qcow2IncompatDataFile  = 1 << 2
	qcow2HeaderV3Length    = 104
	qcow2BackingOffsetAt   = 8
	qcow2IncompatFeatureAt = 72
)

// probeHeader classifies a file by its first bytes: "qcow2", "raw" (a disk
// with an MBR or GPT protective MBR boot signature), or a description of
// what else it is ("vmdk", "iso9660", "text", "unknown").
func probeHeader(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", err
	}
	buf = buf[:n]
	switch {
	case n >= 4 && binary.BigEndian.Uint32(buf) == qcow2Magic:
		if n < 72 {
			return "", &ImageError{path, "truncated qcow2 header"}
		}
		version := binary.BigEndian.Uint32(buf[4:])
		if binary.BigEndian.Uint64(buf[qcow2BackingOffsetAt:]) != 0 {
			return "", &ImageError{path, "has a backing file; bases must be self-contained"}
		}
		if version >= 3 {
			if n < qcow2HeaderV3Length {
				return "", &ImageError{path, "truncated qcow2 header"}
			}
			if binary.BigEndian.Uint64(buf[qcow2IncompatFeatureAt:])&qcow2IncompatDataFile != 0 {
				return "", &ImageError{path, "has an external data file; bases must be self-contained"}
			}
		}
		return "qcow2", nil
	case n >= 4 && string(buf[:4]) == "KDMV", n >= 21 && bytes.Contains(buf[:min(n, 1024)], []byte("# Disk DescriptorFile")):
		return "vmdk", nil
	case n >= 8 && string(buf[:8]) == "vhdxfile":
		return "vhdx", nil
	case n >= 8 && string(buf[:8]) == "conectix":
		return "vpc", nil
	case n >= 0x40 && bytes.Contains(buf[:0x40], []byte("<<< Oracle VM VirtualBox Disk Image >>>")):
		return "vdi", nil
	case n >= 6 && (bytes.HasPrefix(buf, []byte{0xfd, '7', 'z', 'X', 'Z', 0}) || bytes.HasPrefix(buf, []byte{0x1f, 0x8b}) || bytes.HasPrefix(buf, []byte("BZh"))):
		return "compressed", nil
	case n >= 512 && buf[510] == 0x55 && buf[511] == 0xaa:
		return "raw", nil
	}
	fi, _ := f.Stat()
	if fi != nil && fi.Size() >= 0x8006 {
		var id [5]byte
		if _, err := f.ReadAt(id[:], 0x8001); err == nil && string(id[:]) == "CD001" {
			return "iso9660", nil
		}
	}
	if n == 0 {
		return "empty", nil
	}
	return "unknown", nil
}

func describeProbe(p string) string {
	switch p {
	case "qcow2", "raw":
		return p
	case "empty":
		return "an empty file"
	case "unknown":
		return "not a disk image (no qcow2 header, no MBR/GPT boot signature)"
	case "compressed":
		return "a compressed file (xz/gzip/bzip2), not a disk image"
	case "iso9660":
		return "an ISO 9660 CD image"
	}
	return "a " + p + " image"
}
