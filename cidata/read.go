package cidata

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// File system types of a seed image (Info.FS, Probe).
const (
	FSISO9660 = "iso9660"
	FSVFAT    = "vfat"
)

// ErrNotSeed is returned by Probe (and wrapped by Open and Inspect) for a
// file or device that holds neither an ISO9660 nor a FAT file system.
var ErrNotSeed = errors.New("not a seed image: neither ISO9660 nor FAT")

// Probe reads the file system type (FSISO9660 or FSVFAT) and the volume
// label of the image file or block device at path from its superblock
// alone: the ISO9660 primary volume descriptor or the FAT boot sector. It
// is cheap enough to run on every block device of a machine; anything
// else (a partitioned disk, an ext4 file system) yields ErrNotSeed.
func Probe(path string) (fstype, label string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	return probe(f)
}

// probe is Probe on an open image; openSeed uses it to pick the reader.
func probe(r io.ReaderAt) (fstype, label string, err error) {
	// ISO9660: the volume descriptors start at block 16; the primary one
	// is normally the first.
	vd := make([]byte, isoBlock)
	for sector := 16; sector < 16+32; sector++ {
		if n, _ := r.ReadAt(vd, int64(sector)*isoBlock); n != len(vd) || string(vd[1:6]) != "CD001" || vd[0] == 255 {
			break
		}
		if vd[0] == 1 {
			return FSISO9660, strings.TrimRight(string(vd[40:72]), " \x00"), nil
		}
	}
	boot := make([]byte, fatSector)
	if n, err := r.ReadAt(boot, 0); n < len(boot) {
		if err == nil || err == io.EOF {
			err = ErrNotSeed
		}
		return "", "", err
	}
	// A FAT boot sector carries its type in the extended BIOS parameter
	// block (FAT12/16 at byte 54, FAT32 at byte 82); an MBR has the same
	// 0x55AA signature and no type.
	if boot[510] == 0x55 && boot[511] == 0xaa {
		switch {
		case strings.HasPrefix(string(boot[82:90]), "FAT32"):
			return FSVFAT, strings.TrimRight(string(boot[71:82]), " \x00"), nil
		case strings.HasPrefix(string(boot[54:62]), "FAT1"):
			return FSVFAT, strings.TrimRight(string(boot[43:54]), " \x00"), nil
		}
	}
	return "", "", ErrNotSeed
}

// Image is a seed image opened for reading single files: what the agent
// does with the seed drive it finds. Close releases it.
type Image struct {
	Info *Info
	f    *os.File
	seed *seedImage
}

// Open opens the seed image file or block device at path (read-only),
// checks it as Inspect does and lists its files in Info.
func Open(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	img, err := openSeed(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &Image{Info: img.info, f: f, seed: img}, nil
}

// Close closes the image.
func (im *Image) Close() error { return im.f.Close() }

// ReadFile reads the file name (slash-separated, relative to the root)
// whole. Names match as written; failing that, as the file system's
// readers see them: case-insensitively on FAT, and on ISO9660 also as
// plain level-1 names ("USER_DATA.;1" is user-data). A missing file
// yields an error matching fs.ErrNotExist; a file larger than MaxFileSize,
// or shorter than its directory entry says, an error.
func (im *Image) ReadFile(name string) (data []byte, err error) {
	// The readers index into on-disk structures; a corrupt image must not
	// crash the caller.
	defer func() {
		if r := recover(); r != nil {
			data, err = nil, fmt.Errorf("%s: corrupt image: %v", name, r)
		}
	}()
	fi, ok := im.lookup(name)
	if !ok {
		return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	if fi.Size > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, MaxFileSize)
	}
	r, err := im.seed.open(fi.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	data, err = io.ReadAll(io.LimitReader(r, fi.Size))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if int64(len(data)) != fi.Size {
		return nil, fmt.Errorf("%s: recorded as %d bytes, but only %d could be read", name, fi.Size, len(data))
	}
	return data, nil
}

// lookup finds the file name stands for (see ReadFile).
func (im *Image) lookup(name string) (FileInfo, bool) {
	name = strings.Trim(name, "/")
	for _, fi := range im.Info.Files {
		if fi.Path == name {
			return fi, true
		}
	}
	norm := strings.ToLower
	if im.Info.FS == FSISO9660 {
		norm = isoName
	}
	want := strings.Split(name, "/")
	for _, fi := range im.Info.Files {
		got := strings.Split(fi.Path, "/")
		if len(got) != len(want) {
			continue
		}
		match := true
		for i := range got {
			if norm(got[i]) != norm(want[i]) {
				match = false
				break
			}
		}
		if match {
			return fi, true
		}
	}
	return FileInfo{}, false
}

// isoName normalises an ISO9660 name element: Rock Ridge names come
// through as written; plain level-1 names are upper case, with a ";1"
// version, a trailing "." for no extension, and "_" for "-".
func isoName(n string) string {
	n = strings.ToLower(n)
	if i := strings.IndexByte(n, ';'); i >= 0 {
		n = n[:i]
	}
	n = strings.TrimSuffix(n, ".")
	return strings.ReplaceAll(n, "_", "-")
}
