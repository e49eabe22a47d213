package provisioners

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Owner is a file owner in the guest: names (resolved in the guest when the
// archive is unpacked) or numeric ids.
type Owner struct {
	User, Group string
}

// ParseOwner parses "user", "user:group", "uid:gid"; empty means root:root.
func ParseOwner(s string) (Owner, error) {
	if s == "" {
		return Owner{"root", "root"}, nil
	}
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		g = u
	}
	for _, n := range []string{u, g} {
		if n == "" || strings.ContainsAny(n, " \t\n/:") || len(n) > 32 {
			return Owner{}, fmt.Errorf("owner %q: want user[:group]", s)
		}
	}
	return Owner{u, g}, nil
}

func (o Owner) apply(h *tar.Header) {
	if id, err := strconv.Atoi(o.User); err == nil {
		h.Uid = id
	} else {
		h.Uname = o.User
	}
	if id, err := strconv.Atoi(o.Group); err == nil {
		h.Gid = id
	} else {
		h.Gname = o.Group
	}
}

// ParseMode parses an octal mode such as "0644" or "755".
func ParseMode(s string) (fs.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o7777 {
		return 0, fmt.Errorf("mode %q: want an octal mode like 0644", s)
	}
	return fs.FileMode(v), nil
}

// Archive is a tar stream of files to place in the guest's root file
// system. Paths are absolute guest paths; entries are written relative to /.
type Archive struct {
	tw *tar.Writer
	// mtime is fixed so that identical inputs give identical archives.
	mtime time.Time
	dirs  map[string]bool
}

// NewArchive writes an archive to w.
func NewArchive(w io.Writer) *Archive {
	return &Archive{tw: tar.NewWriter(w), mtime: time.Unix(1700000000, 0), dirs: map[string]bool{}}
}

// Close finishes the archive (it does not close the underlying writer).
func (a *Archive) Close() error { return a.tw.Close() }

func rel(p string) string { return strings.TrimPrefix(path.Clean(p), "/") }

// Dir places a directory.
func (a *Archive) Dir(p string, mode fs.FileMode, o Owner) error {
	h := &tar.Header{Typeflag: tar.TypeDir, Name: rel(p) + "/", Mode: int64(modeBits(mode)), ModTime: a.mtime, Format: tar.FormatPAX}
	o.apply(h)
	a.dirs[rel(p)] = true
	return a.tw.WriteHeader(h)
}

// Parents places the missing parent directories of p (mode 0755, root) that
// this archive has not placed yet. Unpacking never changes existing
// directories' metadata for these (tar's --keep-directory-symlink and the
// helper both leave existing directories alone only when they are symlinks,
// so Parents is for new trees such as /app/images).
func (a *Archive) Parents(p string, o Owner) error {
	var todo []string
	for d := path.Dir(path.Clean(p)); d != "/" && d != "."; d = path.Dir(d) {
		if a.dirs[rel(d)] {
			break
		}
		todo = append(todo, d)
	}
	for i := len(todo) - 1; i >= 0; i-- {
		if err := a.Dir(todo[i], 0o755, o); err != nil {
			return err
		}
	}
	return nil
}

// File places a regular file with content from r (size bytes).
func (a *Archive) File(p string, r io.Reader, size int64, mode fs.FileMode, o Owner) error {
	h := &tar.Header{Typeflag: tar.TypeReg, Name: rel(p), Size: size, Mode: int64(modeBits(mode)), ModTime: a.mtime, Format: tar.FormatPAX}
	o.apply(h)
	if err := a.tw.WriteHeader(h); err != nil {
		return err
	}
	n, err := io.Copy(a.tw, r)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%s: size changed while reading (%d of %d bytes)", p, n, size)
	}
	return nil
}

// Bytes places a regular file with the given content.
func (a *Archive) Bytes(p string, data []byte, mode fs.FileMode, o Owner) error {
	return a.File(p, strings.NewReader(string(data)), int64(len(data)), mode, o)
}

// Symlink places a symbolic link p pointing to target.
func (a *Archive) Symlink(p, target string, o Owner) error {
	h := &tar.Header{Typeflag: tar.TypeSymlink, Name: rel(p), Linkname: target, Mode: 0o777, ModTime: a.mtime, Format: tar.FormatPAX}
	o.apply(h)
	return a.tw.WriteHeader(h)
}

// LocalFile places the local file src at p. A zero mode keeps src's mode.
func (a *Archive) LocalFile(src, p string, mode fs.FileMode, o Owner) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	if mode == 0 {
		mode = fi.Mode()
	}
	return a.File(p, f, fi.Size(), mode, o)
}

// LocalTree places the local directory src at p, recursively, in a stable
// order. Files keep their modes unless fileMode is set; directories get
// dirMode (default 0755). Symlinks are placed as symlinks.
func (a *Archive) LocalTree(src, p string, fileMode, dirMode fs.FileMode, o Owner) error {
	if dirMode == 0 {
		dirMode = 0o755
	}
	return walkSorted(src, func(relPath string, fi fs.FileInfo) error {
		dst := path.Join(p, filepath.ToSlash(relPath))
		full := filepath.Join(src, relPath)
		switch {
		case fi.IsDir():
			return a.Dir(dst, dirMode, o)
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(full)
			if err != nil {
				return err
			}
			return a.Symlink(dst, t, o)
		case fi.Mode().IsRegular():
			return a.LocalFile(full, dst, fileMode, o)
		}
		return fmt.Errorf("%s: unsupported file type %s", full, fi.Mode().Type())
	})
}

// walkSorted calls fn for root (relPath ".") and everything below it in
// lexical order, without following symlinks.
func walkSorted(root string, fn func(relPath string, fi fs.FileInfo) error) error {
	var walk func(rp string) error
	walk = func(rp string) error {
		full := filepath.Join(root, rp)
		fi, err := os.Lstat(full)
		if err != nil {
			return err
		}
		if err := fn(rp, fi); err != nil {
			return err
		}
		if !fi.IsDir() {
			return nil
		}
		ents, err := os.ReadDir(full)
		if err != nil {
			return err
		}
		names := make([]string, len(ents))
		for i, e := range ents {
			names[i] = e.Name()
		}
		sort.Strings(names)
		for _, n := range names {
			if err := walk(filepath.Join(rp, n)); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(".")
}

func modeBits(m fs.FileMode) uint32 {
	b := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	// ParseMode yields raw bits in the low 12 bits; keep them.
	return b | uint32(m)&0o7000
}
