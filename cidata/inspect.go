package cidata

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat12"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/kdomanski/iso9660"
	"go.yaml.in/yaml/v3"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// Info describes a seed image read back from disk.
type Info struct {
	FS     string // FSISO9660 or FSVFAT
	Label  string // volume label
	Format Format // nocloud, config-2 or vfat; "" when the label and files fit none
	Files  []FileInfo
	// InstanceID and Hostname are read from meta-data (NoCloud) or
	// meta_data.json (config-2) when present.
	InstanceID string
	Hostname   string
}

// FileInfo is one regular file of a seed image.
type FileInfo struct {
	Path string // slash-separated, relative to the image root
	Size int64
}

// Limits for reading images of unknown origin.
const (
	maxEntries = 10000
	maxDepth   = 16
)

// seedImage is an opened seed image of either file system.
type seedImage struct {
	info *Info
	open func(p string) (io.Reader, error)
}

// Inspect reads the seed image at path (ISO9660 through
// github.com/kdomanski/iso9660, FAT through go-diskfs) and returns its
// label, files and sizes, and the instance-id and hostname it carries.
func Inspect(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := openSeed(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return img.info, nil
}

// Extract copies every file of the seed image at path into dir (created
// mode 0700 if missing), each file mode 0600. Names are checked to stay
// inside dir (no absolute paths, no "..", no symlink escapes: writes go
// through os.Root), and existing files are not overwritten. Every file
// must be read whole: one whose recorded extent runs past the image's end
// fails the extraction (an *InputError). On failure, the files and
// directories Extract created are removed again.
func Extract(path, dir string) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	img, err := openSeed(f)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	undoDir, err := atomicfile.MkdirAllUndo(dir, 0o700)
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		undoDir()
		return err
	}
	defer root.Close()
	var created []string // files and directories, in creation order
	defer func() {
		if err == nil {
			return
		}
		for i := len(created) - 1; i >= 0; i-- {
			root.Remove(created[i])
		}
		undoDir()
	}()
	for _, fi := range img.info.Files {
		name := filepath.FromSlash(fi.Path)
		if !safeName(fi.Path) || !filepath.IsLocal(name) {
			return &InputError{File: path, Msg: fmt.Sprintf("refusing to extract unsafe name %q", fi.Path)}
		}
		// The missing parents, one by one, to remove them again on failure.
		var parents []string
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if err := root.Mkdir(d, 0o700); err == nil {
				created = append(created, d)
			} else if !errors.Is(err, fs.ErrExist) {
				return err
			}
		}
		r, err := img.open(fi.Path)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", path, fi.Path, err)
		}
		out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		created = append(created, name)
		n, err := io.Copy(out, io.LimitReader(r, fi.Size))
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %s: %w", path, fi.Path, err)
		}
		if n != fi.Size {
			return &InputError{File: path, Msg: fmt.Sprintf("%s: recorded as %d bytes, but only %d could be read (its extent runs past the end of the image)", fi.Path, fi.Size, n)}
		}
	}
	return nil
}

// safeName reports whether a slash-separated image path is a plain
// relative name: no empty, "." or ".." element, no backslash or NUL.
func safeName(p string) bool {
	if p == "" || strings.ContainsAny(p, "\\\x00") {
		return false
	}
	for _, e := range strings.Split(p, "/") {
		if e == "" || e == "." || e == ".." {
			return false
		}
	}
	return true
}

func openSeed(f *os.File) (img *seedImage, err error) {
	// The readers below index into on-disk structures; turn a panic on a
	// corrupt image into an error.
	defer func() {
		if r := recover(); r != nil {
			img, err = nil, fmt.Errorf("corrupt image: %v", r)
		}
	}()
	// The size by seeking: Stat says 0 for a block device.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	fstype, _, err := probe(f)
	if err != nil {
		return nil, err
	}
	switch {
	case fstype == FSISO9660:
		img, err = openISO(f)
	case size >= 64<<10:
		img, err = openFAT(f, size)
	default:
		return nil, fmt.Errorf("FAT file system of %d bytes: too small for a seed", size)
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(img.info.Files, func(i, j int) bool { return img.info.Files[i].Path < img.info.Files[j].Path })
	img.info.Format = detectFormat(img.info)
	img.readMetaData()
	return img, nil
}

func openISO(f *os.File) (*seedImage, error) {
	if err := checkISO(f); err != nil {
		return nil, fmt.Errorf("iso9660: %w", err)
	}
	im, err := iso9660.OpenImage(f)
	if err != nil {
		return nil, fmt.Errorf("iso9660: %w", err)
	}
	label, err := im.Label()
	if err != nil {
		return nil, fmt.Errorf("iso9660: no primary volume descriptor")
	}
	root, err := im.RootDir()
	if err != nil {
		return nil, fmt.Errorf("iso9660: %w", err)
	}
	info := &Info{FS: FSISO9660, Label: strings.TrimRight(label, " \x00")}
	files := map[string]*iso9660.File{}
	var walk func(d *iso9660.File, prefix string, depth int) error
	walk = func(d *iso9660.File, prefix string, depth int) error {
		if depth > maxDepth {
			return errors.New("iso9660: directories nested too deep")
		}
		children, err := d.GetChildren()
		if err != nil {
			return fmt.Errorf("iso9660: %s: %w", prefix, err)
		}
		for _, c := range children {
			p := path.Join(prefix, c.Name())
			if c.IsDir() {
				if err := walk(c, p, depth+1); err != nil {
					return err
				}
				continue
			}
			if !c.Mode().IsRegular() {
				continue // symlinks, devices: not part of a seed
			}
			files[p] = c
			info.Files = append(info.Files, FileInfo{Path: p, Size: c.Size()})
		}
		return nil
	}
	if err := walk(root, "", 0); err != nil {
		return nil, err
	}
	return &seedImage{info: info, open: func(p string) (io.Reader, error) {
		c, ok := files[p]
		if !ok {
			return nil, fs.ErrNotExist
		}
		return c.Reader(), nil
	}}, nil
}

func openFAT(f *os.File, size int64) (*seedImage, error) {
	var b backend.Storage = file.New(f, true)
	var fsys filesystem.FileSystem
	var errs []error
	if fs12, err := fat12.Read(b, size, 0, 0); err == nil {
		fsys = fs12
	} else if fs16, err16 := fat16.Read(b, size, 0, 0); err16 == nil {
		fsys = fs16
	} else if fs32, err32 := fat32.Read(b, size, 0, 0); err32 == nil {
		fsys = fs32
	} else {
		errs = append(errs, err, err16, err32)
		return nil, fmt.Errorf("not a FAT12/16/32 file system: %w", errors.Join(errs...))
	}
	info := &Info{FS: FSVFAT, Label: strings.TrimRight(fsys.Label(), " \x00")}
	var walk func(dir string, depth int) error
	walk = func(dir string, depth int) error {
		if depth > maxDepth {
			return errors.New("fat: directories nested too deep")
		}
		entries, err := fsys.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("fat: %s: %w", dir, err)
		}
		for _, e := range entries {
			name := e.Name()
			if name == "." || name == ".." {
				continue
			}
			if len(info.Files) >= maxEntries {
				return errors.New("fat: too many files")
			}
			p := name
			if dir != "." {
				p = dir + "/" + name
			}
			if e.IsDir() {
				if err := walk(p, depth+1); err != nil {
					return err
				}
				continue
			}
			fi, err := e.Info()
			if err != nil {
				return fmt.Errorf("fat: %s: %w", p, err)
			}
			info.Files = append(info.Files, FileInfo{Path: p, Size: fi.Size()})
		}
		return nil
	}
	if err := walk(".", 0); err != nil {
		return nil, err
	}
	return &seedImage{info: info, open: func(p string) (io.Reader, error) {
		return fsys.OpenFile("/"+p, os.O_RDONLY)
	}}, nil
}

// detectFormat names the seed format an image's label and files fit.
func detectFormat(info *Info) Format {
	has := func(p string) bool {
		for _, f := range info.Files {
			if f.Path == p {
				return true
			}
		}
		return false
	}
	switch strings.ToLower(info.Label) {
	case "cidata":
		if has("user-data") && has("meta-data") {
			if info.FS == FSVFAT {
				return VFAT
			}
			return NoCloud
		}
	case "config-2":
		if has("openstack/latest/meta_data.json") {
			return ConfigDrive
		}
	}
	return ""
}

// readMetaData fills InstanceID and Hostname from the seed's meta-data.
func (img *seedImage) readMetaData() {
	var name string
	switch img.info.Format {
	case NoCloud, VFAT:
		name = "meta-data"
	case ConfigDrive:
		name = "openstack/latest/meta_data.json"
	default:
		return
	}
	r, err := img.open(name)
	if err != nil {
		return
	}
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize))
	if err != nil {
		return
	}
	var md map[string]any
	if yaml.NewDecoder(bytes.NewReader(data)).Decode(&md) != nil {
		return
	}
	str := func(k string) string {
		s, _ := md[k].(string)
		return s
	}
	if img.info.Format == ConfigDrive {
		img.info.InstanceID, img.info.Hostname = str("uuid"), str("hostname")
	} else {
		img.info.InstanceID, img.info.Hostname = str("instance-id"), str("local-hostname")
	}
}

// checkISO walks the primary directory tree of an ISO9660 image and
// rejects what github.com/kdomanski/iso9660 does not survive: a System Use
// entry of length 0 makes it loop forever, a continuation area that points
// back at itself recurses until the stack overflows, and a huge one is
// allocated whole. Directory loops and oversized trees are refused too.
func checkISO(r io.ReaderAt) error {
	var pvd []byte
	for sector := 16; sector < 16+32 && pvd == nil; sector++ {
		vd := make([]byte, isoBlock)
		if _, err := r.ReadAt(vd, int64(sector)*isoBlock); err != nil {
			return fmt.Errorf("volume descriptor %d: %w", sector, err)
		}
		if string(vd[1:6]) != "CD001" || vd[0] == 255 {
			break
		}
		if vd[0] == 1 {
			pvd = vd
		}
	}
	if pvd == nil {
		return errors.New("no primary volume descriptor")
	}
	readExtent := func(loc, size uint32) ([]byte, error) {
		if size > 1<<20 {
			return nil, fmt.Errorf("directory of %d bytes", size)
		}
		b := make([]byte, size)
		if _, err := r.ReadAt(b, int64(loc)*isoBlock); err != nil {
			return nil, fmt.Errorf("directory at block %d: %w", loc, err)
		}
		return b, nil
	}
	var checkSUSP func(area []byte, hops int) error
	checkSUSP = func(area []byte, hops int) error {
		if hops > 8 {
			return errors.New("continuation chain of System Use areas too long")
		}
		for len(area) >= 4 {
			n := int(area[2])
			if n < 4 || n > len(area) {
				return fmt.Errorf("system use entry of bad length %d", n)
			}
			if string(area[0:2]) == "CE" {
				if n < 28 {
					return errors.New("short continuation entry")
				}
				blk := binary.LittleEndian.Uint32(area[4:8])
				off := binary.LittleEndian.Uint32(area[12:16])
				ln := binary.LittleEndian.Uint32(area[20:24])
				if ln > isoBlock || off >= isoBlock {
					return errors.New("continuation area larger than a block")
				}
				ce := make([]byte, ln)
				if _, err := r.ReadAt(ce, int64(blk)*isoBlock+int64(off)); err != nil {
					return fmt.Errorf("continuation area: %w", err)
				}
				if err := checkSUSP(ce, hops+1); err != nil {
					return err
				}
			}
			area = area[n:]
		}
		return nil
	}
	root := pvd[156 : 156+34]
	seen := map[uint32]bool{}
	records, skip := 0, -1
	var walk func(loc, size uint32, depth int) error
	walk = func(loc, size uint32, depth int) error {
		if depth > maxDepth {
			return errors.New("directories nested too deep")
		}
		if seen[loc] {
			return fmt.Errorf("directory loop at block %d", loc)
		}
		seen[loc] = true
		ext, err := readExtent(loc, size)
		if err != nil {
			return err
		}
		for off := 0; off < len(ext); {
			n := int(ext[off])
			if n == 0 {
				off = (off/isoBlock + 1) * isoBlock
				continue
			}
			if n < 34 || off+n > len(ext) || off/isoBlock != (off+n-1)/isoBlock {
				return fmt.Errorf("bad directory record at block %d", loc)
			}
			if records++; records > maxEntries {
				return errors.New("too many directory records")
			}
			rec := ext[off : off+n]
			nameLen := int(rec[32])
			su := 33 + nameLen + (1 - nameLen%2)
			if 33+nameLen > n {
				return fmt.Errorf("bad directory record at block %d", loc)
			}
			if su < n {
				area := rec[su:]
				if skip < 0 { // the root's "." record: SP gives the skip length
					skip = 0
					if len(area) >= 7 && string(area[0:2]) == "SP" {
						skip = int(area[6])
					}
				} else if skip > len(area) {
					area = nil
				} else {
					area = area[skip:]
				}
				if err := checkSUSP(area, 0); err != nil {
					return fmt.Errorf("directory record at block %d: %w", loc, err)
				}
			}
			if rec[25]&2 != 0 && !isDotRecord(rec) {
				if err := walk(binary.LittleEndian.Uint32(rec[2:6]), binary.LittleEndian.Uint32(rec[10:14]), depth+1); err != nil {
					return err
				}
			}
			off += n
		}
		return nil
	}
	return walk(binary.LittleEndian.Uint32(root[2:6]), binary.LittleEndian.Uint32(root[10:14]), 0)
}
