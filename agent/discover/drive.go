package discover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/kdomanski/iso9660"
)

// Filesystem types a config drive can have.
const (
	FSISO9660 = "iso9660"
	FSVFAT    = "vfat"
)

// candidates lists the devices (host paths) worth probing for label.
func candidates(cfg Config, label string) []string {
	if len(cfg.Devices) > 0 {
		return cfg.Devices
	}
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, l := range []string{label, strings.ToUpper(label)} {
		p := cfg.Host.Path("/dev/disk/by-label/" + l)
		if _, err := os.Stat(p); err == nil {
			add(p)
		}
	}
	entries, err := os.ReadDir(cfg.Host.Path("/sys/class/block"))
	if err == nil {
		names := make([]string, 0, len(entries))
		for _, e := range entries {
			n := e.Name()
			if strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") {
				continue
			}
			names = append(names, n)
		}
		// CD-ROMs first: that is where seeds usually are.
		sort.SliceStable(names, func(i, j int) bool {
			return strings.HasPrefix(names[i], "sr") && !strings.HasPrefix(names[j], "sr")
		})
		for _, n := range names {
			add(cfg.Host.Path("/dev/" + n))
		}
	}
	return out
}

// findDrive looks for a drive with one of labels and reads file from it.
func findDrive(ctx context.Context, cfg Config, labels []string, file, prefix string) ([]byte, string, error) {
	var probeErrs []string
	for _, dev := range candidates(cfg, labels[0]) {
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		fstype, label, err := ProbeLabel(dev)
		if err != nil {
			if !errors.Is(err, errUnknownFS) && !errors.Is(err, fs.ErrNotExist) {
				probeErrs = append(probeErrs, err.Error())
			}
			continue
		}
		if !matchLabel(label, labels) {
			continue
		}
		data, err := ReadFile(dev, fstype, file)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("%w (%s has no %s)", errEmpty, dev, file)
		}
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", dev, err)
		}
		return data, fmt.Sprintf("%s%s (%s)", prefix, devName(cfg, dev), fstype), nil
	}
	if len(probeErrs) > 0 && len(cfg.Devices) > 0 {
		return nil, "", errors.New(strings.Join(probeErrs, "; "))
	}
	return nil, "", errAbsent
}

func devName(cfg Config, dev string) string {
	if len(cfg.Devices) > 0 || cfg.Host.IsRealRoot() {
		return dev
	}
	return "/" + strings.TrimPrefix(strings.TrimPrefix(dev, cfg.Host.Root), "/")
}

func matchLabel(label string, labels []string) bool {
	for _, l := range labels {
		if strings.EqualFold(strings.TrimSpace(label), l) {
			return true
		}
	}
	return false
}

var errUnknownFS = errors.New("no ISO9660 or FAT filesystem")

// ProbeLabel reads the filesystem type and label of a device or image file
// from its superblock: the ISO9660 primary volume descriptor or the FAT
// boot sector.
func ProbeLabel(dev string) (fstype, label string, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	// ISO9660: volume descriptors start at sector 16 (byte 32768).
	pvd := make([]byte, 2048)
	if n, _ := f.ReadAt(pvd, 32768); n == len(pvd) && pvd[0] == 1 && string(pvd[1:6]) == "CD001" {
		return FSISO9660, strings.TrimRight(string(pvd[40:72]), " \x00"), nil
	}
	boot := make([]byte, 512)
	if n, err := f.ReadAt(boot, 0); n < len(boot) {
		if err == nil || err == io.EOF {
			err = errUnknownFS
		}
		return "", "", err
	}
	if boot[510] == 0x55 && boot[511] == 0xAA {
		switch {
		case strings.HasPrefix(string(boot[82:90]), "FAT32"):
			return FSVFAT, strings.TrimRight(string(boot[71:82]), " \x00"), nil
		case strings.HasPrefix(string(boot[54:62]), "FAT1"):
			return FSVFAT, strings.TrimRight(string(boot[43:54]), " \x00"), nil
		}
	}
	return "", "", errUnknownFS
}

// ReadFile reads one file (a slash-separated path) from an ISO9660 or FAT
// filesystem on dev without mounting it. A missing file yields an error
// matching fs.ErrNotExist.
func ReadFile(dev, fstype, file string) ([]byte, error) {
	switch fstype {
	case FSISO9660:
		return readISO(dev, file)
	case FSVFAT:
		return readFAT(dev, file)
	}
	return nil, fmt.Errorf("unsupported filesystem %q", fstype)
}

// isoName normalises an ISO9660 name: Rock Ridge and Joliet names come
// through as written; plain level-1 names are upper case with a ";1"
// version and "_" for "-".
func isoName(n string) string {
	n = strings.ToLower(n)
	if i := strings.IndexByte(n, ';'); i >= 0 {
		n = n[:i]
	}
	n = strings.TrimSuffix(n, ".")
	return strings.ReplaceAll(n, "_", "-")
}

func readISO(dev, file string) ([]byte, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := iso9660.OpenImage(f)
	if err != nil {
		return nil, fmt.Errorf("iso9660: %w", err)
	}
	cur, err := img.RootDir()
	if err != nil {
		return nil, fmt.Errorf("iso9660: %w", err)
	}
	for _, part := range strings.Split(strings.Trim(file, "/"), "/") {
		children, err := cur.GetChildren()
		if err != nil {
			return nil, fmt.Errorf("iso9660: %w", err)
		}
		want := isoName(part)
		var next *iso9660.File
		for _, c := range children {
			if isoName(c.Name()) == want {
				next = c
				break
			}
		}
		if next == nil {
			return nil, fmt.Errorf("%s: %w", file, fs.ErrNotExist)
		}
		cur = next
	}
	if cur.IsDir() {
		return nil, fmt.Errorf("%s is a directory", file)
	}
	if cur.Size() > MaxSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, MaxSize)
	}
	return io.ReadAll(io.LimitReader(cur.Reader(), MaxSize+1))
}

func readFAT(dev, file string) ([]byte, error) {
	d, err := diskfs.Open(dev, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		return nil, fmt.Errorf("fat: %w", err)
	}
	// FAT names are case-insensitive; find the entry to get its stored name.
	// ReadDir takes io/fs paths ("." is the root); OpenFile absolute ones.
	dir := "."
	parts := strings.Split(strings.Trim(file, "/"), "/")
	for _, part := range parts {
		entries, err := fsys.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("fat: %s: %w", dir, err)
		}
		found := ""
		for _, e := range entries {
			if strings.EqualFold(e.Name(), part) {
				found = e.Name()
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("%s: %w", file, fs.ErrNotExist)
		}
		dir = path.Join(dir, found)
	}
	fh, err := fsys.OpenFile("/"+dir, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("fat: %s: %w", dir, err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("fat: %s: %w", dir, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, MaxSize)
	}
	return data, nil
}
