// Package atomicfile writes files so that readers (and a crash) never see a
// half-written one: the data goes to a temporary file in the target's
// directory, which is given its mode, fsynced and then renamed over the
// target. It also copies and hashes files.
//
// It imports nothing from this module, so any package (the in-VM agent
// included) may use it.
package atomicfile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Option changes how Write, Create and Copy put a file in place.
type Option func(*options)

type options struct {
	keepOwner bool
	noClobber bool
	mkdir     fs.FileMode // 0: parent directories must exist
	pattern   string      // os.CreateTemp pattern; "" means "."+base+".tmp-*"
	noSync    bool
}

// KeepOwner makes a replaced file keep the owner and group of the file it
// replaces (following a symlink at the path). The new file appears with
// them already set. Changing the owner needs the privilege to do so.
func KeepOwner() Option { return func(o *options) { o.keepOwner = true } }

// NoClobber refuses to replace an existing path: Write, Copy and Commit
// then fail with an error for which errors.Is(err, fs.ErrExist) holds. The
// check is made before writing and again, race-free, when the file is put
// in place (a hard link, which fails if the path appeared meanwhile).
func NoClobber() Option { return func(o *options) { o.noClobber = true } }

// MkdirAll creates missing parent directories with perm.
func MkdirAll(perm fs.FileMode) Option { return func(o *options) { o.mkdir = perm } }

// NoSync puts the file in place without fsyncing it (nor the directory):
// after a crash the path may hold the old file, or the new one with
// blocks missing. For caches whose readers check what they read, where a
// sync of a large file would cost more than it saves.
func NoSync() Option { return func(o *options) { o.noSync = true } }

// TempPattern names the temporary file: an os.CreateTemp pattern in the
// target's directory (e.g. one a caller's clean-up of leftovers knows).
func TempPattern(pattern string) Option { return func(o *options) { o.pattern = pattern } }

// File is a file being written in place of path. Write to it, then Commit
// to put it in place or Abort to discard it (not Close: Commit closes it). Until Commit, path is
// untouched; a crash leaves at most a temporary file beside it.
type File struct {
	*os.File
	path string
	mode fs.FileMode
	o    options
	done bool
}

// Create starts a file that will replace path with mode (exactly: the umask
// does not apply) once committed.
func Create(path string, mode fs.FileMode, opts ...Option) (*File, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dir := filepath.Dir(path)
	if o.mkdir != 0 {
		if err := os.MkdirAll(dir, o.mkdir); err != nil {
			return nil, err
		}
	}
	if o.noClobber {
		if _, err := os.Lstat(path); err == nil {
			return nil, existsError(path)
		}
	}
	if err := CheckTarget(path); err != nil {
		return nil, err
	}
	pattern := o.pattern
	if pattern == "" {
		pattern = "." + filepath.Base(path) + ".tmp-*"
	}
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &File{File: f, path: path, mode: mode, o: o}, nil
}

// Path is the path the file is put at by Commit. Name is the temporary
// file's.
func (f *File) Path() string { return f.path }

// Commit sets the mode (and owner, with KeepOwner), syncs, closes and
// renames the file into place. On error the temporary file is removed and
// path is left as it was.
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("atomicfile: %s: already committed or aborted", f.path)
	}
	err := f.commit()
	if err != nil {
		f.Abort()
	}
	f.done = true
	return err
}

func (f *File) commit() error {
	if f.o.keepOwner {
		if err := f.chownLike(f.path); err != nil {
			return err
		}
	}
	// After Chown, which may clear set-id bits.
	if err := f.Chmod(f.mode); err != nil {
		return err
	}
	if !f.o.noSync {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	tmp := f.Name()
	if err := CheckTarget(f.path); err != nil {
		return err
	}
	if f.o.noClobber {
		err := os.Link(tmp, f.path)
		switch {
		case err == nil:
			os.Remove(tmp)
		case errors.Is(err, fs.ErrExist):
			return existsError(f.path)
		default:
			if _, serr := os.Lstat(f.path); serr == nil {
				return existsError(f.path)
			}
			// A file system without hard links: rename, not race-free.
			if err := os.Rename(tmp, f.path); err != nil {
				return err
			}
		}
	} else if err := os.Rename(tmp, f.path); err != nil {
		return err
	}
	if !f.o.noSync {
		syncDir(filepath.Dir(f.path))
	}
	return nil
}

// chownLike gives the temporary file the owner and group of the file at
// path, if there is one and they differ.
func (f *File) chownLike(path string) error {
	old, err := os.Stat(path)
	if err != nil {
		return nil
	}
	cur, err := f.Stat()
	if err != nil {
		return err
	}
	o, ok1 := old.Sys().(*syscall.Stat_t)
	c, ok2 := cur.Sys().(*syscall.Stat_t)
	if !ok1 || !ok2 || (o.Uid == c.Uid && o.Gid == c.Gid) {
		return nil
	}
	return f.Chown(int(o.Uid), int(o.Gid))
}

// Abort discards the file; path is left as it was. It may be called after
// Commit (it then does nothing), so `defer f.Abort()` is fine.
func (f *File) Abort() error {
	if f.done {
		return nil
	}
	f.done = true
	f.Close()
	return os.Remove(f.Name())
}

// Write puts data at path with mode (exactly: the umask does not apply),
// through a temporary file in the same directory, fsynced and renamed.
func Write(path string, data []byte, mode fs.FileMode, opts ...Option) error {
	f, err := Create(path, mode, opts...)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Abort()
		return err
	}
	return f.Commit()
}

// Copy copies the contents of src to dst with mode, the same way as Write.
func Copy(src, dst string, mode fs.FileMode, opts ...Option) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := Create(dst, mode, opts...)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, in); err != nil {
		f.Abort()
		return err
	}
	return f.Commit()
}

// SHA256File returns the hex SHA-256 and the size of the file at path. It
// stops early when ctx is cancelled.
func SHA256File(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return SHA256(ctx, f)
}

// SHA256 returns the hex SHA-256 of what r yields and its length. It stops
// early when ctx is cancelled.
func SHA256(ctx context.Context, r io.Reader) (string, int64, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var size int64
	for {
		if err := ctx.Err(); err != nil {
			return "", 0, err
		}
		n, err := r.Read(buf)
		h.Write(buf[:n])
		size += int64(n)
		if err == io.EOF {
			return hex.EncodeToString(h.Sum(nil)), size, nil
		}
		if err != nil {
			return "", 0, err
		}
	}
}

// ErrNotRegular is wrapped by the error for an output path that exists and
// is not a regular file (a device node, a fifo, a socket, a directory):
// writing "to" /dev/sdb must not replace the device node with a file.
var ErrNotRegular = errors.New("exists and is not a regular file; refusing to replace it")

// CheckTarget returns an error wrapping ErrNotRegular if path exists and is
// not a regular file, following symlinks (a symlink to a regular file is
// fine: it is replaced as before). A missing path, or a dangling symlink,
// is fine too.
func CheckTarget(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if !st.Mode().IsRegular() {
		return &fs.PathError{Op: "write", Path: path, Err: ErrNotRegular}
	}
	return nil
}

func existsError(path string) error {
	return &fs.PathError{Op: "write", Path: path, Err: fs.ErrExist}
}

// syncDir makes a rename in dir durable. Best effort: some file systems
// cannot sync a directory, and the rename itself has already happened.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// MkdirAllUndo creates dir and any missing parents with perm (exactly: the
// umask does not apply to the directories it creates) and returns a function
// that removes again, deepest first, the directories it created, as long as
// they are empty; call it when the outputs meant for dir could not be
// written, so that a failure leaves nothing behind. An existing dir is
// accepted as it is (undo then does nothing); an existing non-directory is
// an error.
func MkdirAllUndo(dir string, perm fs.FileMode) (undo func(), err error) {
	var created []string
	for p := filepath.Clean(dir); ; {
		st, err := os.Stat(p)
		if err == nil {
			if !st.IsDir() {
				return func() {}, &fs.PathError{Op: "mkdir", Path: p, Err: syscall.ENOTDIR}
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return func() {}, err
		}
		created = append(created, p)
		parent := filepath.Dir(p)
		if parent == p {
			break
		}
		p = parent
	}
	undo = func() {
		for _, p := range created {
			os.Remove(p) // fails, as it should, when not empty
		}
	}
	for i := len(created) - 1; i >= 0; i-- {
		if err := os.Mkdir(created[i], perm); err != nil && !errors.Is(err, fs.ErrExist) {
			undo()
			return func() {}, err
		}
		if err := os.Chmod(created[i], perm); err != nil {
			undo()
			return func() {}, err
		}
	}
	return undo, nil
}
