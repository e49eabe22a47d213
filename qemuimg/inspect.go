package qemuimg

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
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/ecs-image/ecs-image/childproc"
)

// DefaultMaxVirtualSize is the largest virtual disk size Inspect accepts
// unless the policy says otherwise (2 TiB).
const DefaultMaxVirtualSize int64 = 2 << 40

// ImageError is an image refused by Inspect: bad input (exit 2).
type ImageError struct {
	Path string
	Msg  string
}

func (e *ImageError) Error() string { return e.Path + ": " + e.Msg }

// Policy says which images Inspect accepts.
type Policy struct {
	// Formats are the accepted formats (qemu-img names: qcow2, raw, vmdk,
	// vhdx, vpc).
	Formats []string
	// Format is the declared format ("" = probed from the header); the file
	// must be of this format.
	Format string
	// MaxVirtualSize bounds the virtual size (0: DefaultMaxVirtualSize).
	MaxVirtualSize int64
	// Hint is appended to the refusal of a format not in Formats.
	Hint string
}

// Inspect checks that path is a self-contained disk image that is safe to
// read, convert or boot, and describes it. Refused, as *ImageError:
//
//   - a file that is not a regular file, not a disk image (an HTML page, an
//     ISO, a compressed file) or not of the declared or accepted formats;
//   - anything that would make qemu-img or QEMU open another file: a
//     backing file, a qcow2 external data file, a VMDK descriptor file
//     (its extents are other files; only monolithicSparse and
//     streamOptimized VMDKs, whose one extent is the file itself, pass), a
//     VMDK parent;
//   - images marked dirty or corrupt, a qcow2 whose structure does not pass
//     `qemu-img check` (a truncated download), and virtual sizes of 0 or
//     above the limit.
//
// The header is read by Inspect itself before qemu-img runs, so a crafted
// image never makes qemu-img open a host file; qemu-img's own report (info,
// then check) is the second line of defence.
func Inspect(ctx context.Context, path string, p Policy) (*Info, error) {
	if p.Format != "" && !slices.Contains(p.Formats, p.Format) {
		return nil, &ImageError{path, fmt.Sprintf("format %q not supported here (want %s)", p.Format, strings.Join(p.Formats, " or "))}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, &ImageError{path, "cannot read image: " + errText(err)}
	}
	if !fi.Mode().IsRegular() {
		return nil, &ImageError{path, "not a regular file"}
	}
	probed, err := probe(path, abs)
	if err != nil {
		return nil, err
	}
	if p.Format != "" && probed != p.Format {
		return nil, &ImageError{path, fmt.Sprintf("declared format %s, but the file is %s", p.Format, describeProbe(probed))}
	}
	if !slices.Contains(p.Formats, probed) {
		msg := describeProbe(probed)
		if !isImageFormat(probed) && !strings.HasPrefix(msg, "not a disk image") {
			msg = "not a disk image: " + msg
		}
		if isImageFormat(probed) {
			msg = fmt.Sprintf("the file is %s; want %s", msg, strings.Join(p.Formats, " or "))
		}
		if p.Hint != "" {
			msg += " " + p.Hint
		}
		return nil, &ImageError{path, msg}
	}
	out, err := Run(ctx, "info", "--output=json", "-U", "-f", probed, abs)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &ImageError{path, err.Error()}
	}
	info, err := parseInfo(path, out)
	if err != nil {
		return nil, err
	}
	if err := judge(info, probed, abs, p); err != nil {
		return nil, err
	}
	if probed == "qcow2" {
		if err := check(ctx, path, abs, probed); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// judge applies Inspect's refusals to qemu-img's report.
func judge(info *Info, format, abs string, p Policy) error {
	path := info.Path
	max := p.MaxVirtualSize
	if max <= 0 {
		max = DefaultMaxVirtualSize
	}
	switch {
	case info.Format != format:
		return &ImageError{path, fmt.Sprintf("qemu-img reports format %s, expected %s", info.Format, format)}
	case info.BackingFile != "":
		return &ImageError{path, fmt.Sprintf("has a backing file (%s); the image must be self-contained (flatten it: qemu-img convert -O qcow2 IN flat.qcow2)", info.BackingFile)}
	case info.DataFile != "":
		return &ImageError{path, fmt.Sprintf("has an external data file (%s); the image must be self-contained", info.DataFile)}
	case format == "vmdk" && info.CreateType != "monolithicSparse" && info.CreateType != "streamOptimized":
		return &ImageError{path, fmt.Sprintf("VMDK subformat %q refused (only monolithicSparse and streamOptimized, whose data is in the file itself)", info.CreateType)}
	case info.Corrupt:
		return &ImageError{path, "image is marked corrupt"}
	case info.Dirty:
		return &ImageError{path, "image is marked dirty (not cleanly closed); run qemu-img check -r all on it first"}
	case info.VirtualSize <= 0:
		return &ImageError{path, "virtual size is 0"}
	case info.VirtualSize > max:
		return &ImageError{path, fmt.Sprintf("virtual size %d bytes exceeds the limit of %d bytes", info.VirtualSize, max)}
	}
	for _, e := range info.Extents {
		if e != abs {
			return &ImageError{path, fmt.Sprintf("VMDK extent %q is another file; the image must be self-contained", e)}
		}
	}
	return nil
}

// checkReport is `qemu-img check --output=json`.
type checkReport struct {
	Corruptions int `json:"corruptions"`
	CheckErrors int `json:"check-errors"`
}

// check runs `qemu-img check` on a qcow2: its tables must be consistent and
// inside the file (a truncated download fails here). Leaked clusters
// (exit 3) are harmless and pass.
func check(ctx context.Context, path, abs, format string) error {
	cmd := command(ctx, "check", "--output=json", "-U", "-f", format, abs)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := childproc.Run(cmd, syscall.SIGKILL)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ee *exec.ExitError
	if err == nil || (errors.As(err, &ee) && ee.ExitCode() == 3) {
		return nil
	}
	if !errors.As(err, &ee) {
		return runError([]string{"check"}, err, stderr.String())
	}
	var r checkReport
	json.Unmarshal(stdout.Bytes(), &r)
	switch {
	case r.Corruptions > 0:
		return &ImageError{path, fmt.Sprintf("qemu-img check found %d corruptions (a truncated or damaged image)", r.Corruptions)}
	case r.CheckErrors > 0:
		return &ImageError{path, fmt.Sprintf("qemu-img check could not check %d clusters (a truncated or damaged image)", r.CheckErrors)}
	}
	return &ImageError{path, runError([]string{"check"}, err, stderr.String()).Error()}
}

func isImageFormat(p string) bool {
	switch p {
	case "qcow2", "raw", "vmdk", "vhdx", "vpc", "vdi":
		return true
	}
	return false
}

func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// qcow2 header fields (big endian), see qemu's docs/interop/qcow2.txt.
const (
	qcow2Magic             = 0x514649fb // "QFI\xfb"
	qcow2IncompatDataFile  = 1 << 2
	qcow2HeaderV3Length    = 104
	qcow2BackingOffsetAt   = 8
	qcow2IncompatFeatureAt = 72
	qcow2HeaderLengthAt    = 100
	qcow2ExtDataFile       = 0x44415441
)

// VMDK4 sparse header fields (little endian).
const (
	vmdkDescOffsetAt = 28 // in sectors
	vmdkDescSizeAt   = 36 // in sectors
	vmdkMaxDesc      = 1 << 20
)

// probe classifies a file by its first bytes: "qcow2", "vmdk" (a sparse
// VMDK whose data is in the file), "vhdx", "vpc" (a dynamic VHD), "raw" (a
// disk with an MBR or GPT protective MBR boot signature), or a description
// of what else it is ("iso9660", "compressed", "empty", "unknown"). Headers
// that name other files are refused here, before qemu-img ever opens them.
func probe(path, abs string) (string, error) {
	f, err := os.Open(abs)
	if err != nil {
		return "", &ImageError{path, "cannot read image: " + errText(err)}
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", &ImageError{path, "cannot read image: " + errText(err)}
	}
	buf = buf[:n]
	switch {
	case n >= 4 && binary.BigEndian.Uint32(buf) == qcow2Magic:
		return "qcow2", probeQcow2(path, buf)
	case n >= 4 && string(buf[:4]) == "KDMV":
		return "vmdk", probeVMDK(path, f, buf)
	case n >= 4 && string(buf[:4]) == "COWD":
		return "", &ImageError{path, "a VMDK3 (COWD) image; only monolithicSparse and streamOptimized VMDKs are accepted"}
	case bytes.Contains(buf[:min(n, 1024)], []byte("# Disk DescriptorFile")):
		return "", &ImageError{path, "a VMDK descriptor file: its extents are other files (" + vmdkExtentSummary(buf) + "); only monolithicSparse and streamOptimized VMDKs, whose data is in the file itself, are accepted"}
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

func probeQcow2(path string, buf []byte) error {
	n := len(buf)
	if n < 72 {
		return &ImageError{path, "truncated qcow2 header"}
	}
	version := binary.BigEndian.Uint32(buf[4:])
	if binary.BigEndian.Uint64(buf[qcow2BackingOffsetAt:]) != 0 {
		return &ImageError{path, "has a backing file; the image must be self-contained"}
	}
	if version < 3 {
		return nil
	}
	if n < qcow2HeaderV3Length {
		return &ImageError{path, "truncated qcow2 header"}
	}
	if binary.BigEndian.Uint64(buf[qcow2IncompatFeatureAt:])&qcow2IncompatDataFile != 0 {
		return &ImageError{path, "has an external data file; the image must be self-contained"}
	}
	// Header extensions: an external data file name without the feature
	// bit is refused too.
	off := int(binary.BigEndian.Uint32(buf[qcow2HeaderLengthAt:]))
	for off >= qcow2HeaderV3Length && off+8 <= n {
		typ := binary.BigEndian.Uint32(buf[off:])
		l := int(binary.BigEndian.Uint32(buf[off+4:]))
		if typ == 0 {
			break
		}
		if typ == qcow2ExtDataFile {
			return &ImageError{path, "has an external data file; the image must be self-contained"}
		}
		off += 8 + (l+7)/8*8
	}
	return nil
}

// probeVMDK reads the descriptor embedded in a sparse VMDK: its subformat
// must keep all data in the file, and it must have no parent.
func probeVMDK(path string, f *os.File, buf []byte) error {
	if len(buf) < 44 {
		return &ImageError{path, "truncated VMDK header"}
	}
	off := int64(binary.LittleEndian.Uint64(buf[vmdkDescOffsetAt:])) * 512
	size := int64(binary.LittleEndian.Uint64(buf[vmdkDescSizeAt:])) * 512
	if off <= 0 || size <= 0 {
		return &ImageError{path, "a sparse VMDK without an embedded descriptor"}
	}
	desc := make([]byte, min(size, vmdkMaxDesc))
	n, err := f.ReadAt(desc, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return &ImageError{path, "cannot read the VMDK descriptor: " + errText(err)}
	}
	desc = desc[:n]
	if i := bytes.IndexByte(desc, 0); i >= 0 {
		desc = desc[:i]
	}
	createType := ""
	for _, line := range strings.Split(string(desc), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), `"`)
		switch strings.ToLower(k) {
		case "createtype":
			createType = v
		case "parentfilenamehint":
			if v != "" {
				return &ImageError{path, fmt.Sprintf("a VMDK with a parent (%s); the image must be self-contained", v)}
			}
		}
	}
	if createType != "monolithicSparse" && createType != "streamOptimized" {
		return &ImageError{path, fmt.Sprintf("VMDK subformat %q refused (only monolithicSparse and streamOptimized, whose data is in the file itself)", createType)}
	}
	return nil
}

// vmdkExtentSummary lists a descriptor's extent lines for the refusal.
func vmdkExtentSummary(buf []byte) string {
	var ext []string
	for _, line := range strings.Split(string(buf), "\n") {
		line = strings.TrimSpace(line)
		for _, a := range []string{"RW ", "RDONLY ", "NOACCESS "} {
			if strings.HasPrefix(line, a) && len(ext) < 3 {
				ext = append(ext, line)
			}
		}
	}
	if len(ext) == 0 {
		return "no extent lines"
	}
	return strings.Join(ext, "; ")
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
	case "vpc":
		return "a vhd image"
	}
	return "a " + p + " image"
}
