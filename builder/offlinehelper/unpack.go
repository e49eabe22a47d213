package offlinehelper

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// openJob finds the job disk (a raw disk holding a tar archive whose first
// entry is the job) and returns the job and the archive positioned after it.
func openJob() (*Job, *tar.Reader, *os.File, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ents, _ := os.ReadDir("/sys/class/block")
		for _, e := range ents {
			f, err := os.Open("/dev/" + e.Name())
			if err != nil {
				continue
			}
			tr := tar.NewReader(bufio.NewReaderSize(f, 1<<20))
			h, err := tr.Next()
			if err != nil || h.Name != JobEntryName {
				f.Close()
				continue
			}
			var job Job
			if err := json.NewDecoder(tr).Decode(&job); err != nil {
				f.Close()
				return nil, nil, nil, fmt.Errorf("job: %v", err)
			}
			return &job, tr, f, nil
		}
		if time.Now().After(deadline) {
			return nil, nil, nil, errors.New("job disk not found")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// unpackChrooted unpacks the archive inside root as if it were "/": the
// process changes its root directory to root for the unpacking, so that
// absolute symlinks in the image (/app/etc → /data/etc) resolve inside it,
// and returns to the real root afterwards.
func unpackChrooted(tr *tar.Reader, root string) (int, error) {
	real, err := os.Open("/")
	if err != nil {
		return 0, err
	}
	defer real.Close()
	cwd, _ := os.Getwd()
	if err := syscall.Chroot(root); err != nil {
		return 0, fmt.Errorf("chroot %s: %v", root, err)
	}
	n, uerr := func() (int, error) {
		if err := os.Chdir("/"); err != nil {
			return 0, err
		}
		users, groups := readIDs("/")
		return unpack(tr, "/", users, groups)
	}()
	// Back to the real root: fchdir to it, then chroot(".").
	if err := syscall.Fchdir(int(real.Fd())); err != nil {
		return n, fmt.Errorf("leave chroot: %v", err)
	}
	if err := syscall.Chroot("."); err != nil {
		return n, fmt.Errorf("leave chroot: %v", err)
	}
	if cwd != "" {
		os.Chdir(cwd)
	}
	return n, uerr
}

// readIDs reads user and group names from the image's passwd and group.
func readIDs(root string) (users, groups map[string]int) {
	parse := func(p string) map[string]int {
		m := map[string]int{}
		data, _ := os.ReadFile(filepath.Join(root, p))
		for _, l := range strings.Split(string(data), "\n") {
			f := strings.Split(l, ":")
			if len(f) >= 3 {
				if id, err := strconv.Atoi(f[2]); err == nil {
					m[f[0]] = id
				}
			}
		}
		return m
	}
	return parse("etc/passwd"), parse("etc/group")
}

// unpack extracts the archive under root like `tar --same-owner -p
// --keep-directory-symlink`: owners by name (resolved in the image), modes
// as archived; an existing symlink to a directory is kept. Paths may not
// leave root.
func unpack(tr *tar.Reader, root string, users, groups map[string]int) (int, error) {
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("job archive: %v", err)
		}
		name := filepath.Clean("/" + h.Name)
		if name == "/" {
			continue
		}
		dst := filepath.Join(root, name)
		if err := safeParent(root, dst); err != nil {
			return n, err
		}
		uid, gid := h.Uid, h.Gid
		if id, ok := users[h.Uname]; ok && h.Uname != "" {
			uid = id
		} else if h.Uname != "" && h.Uname != "root" {
			return n, fmt.Errorf("%s: no user %q in the image", name, h.Uname)
		}
		if id, ok := groups[h.Gname]; ok && h.Gname != "" {
			gid = id
		} else if h.Gname != "" && h.Gname != "root" {
			return n, fmt.Errorf("%s: no group %q in the image", name, h.Gname)
		}
		mode := os.FileMode(h.Mode & 0o777)
		special := uint32(h.Mode & 0o7000)
		switch h.Typeflag {
		case tar.TypeDir:
			if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
				if lfi, _ := os.Lstat(dst); lfi != nil && lfi.Mode()&os.ModeSymlink != 0 {
					n++
					continue // keep directory symlinks (e.g. /app/etc → /data/etc)
				}
			} else if err := os.MkdirAll(dst, 0o755); err != nil {
				return n, err
			}
			if err := os.Lchown(dst, uid, gid); err != nil {
				return n, err
			}
			if err := syscall.Chmod(dst, uint32(mode)|special); err != nil {
				return n, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return n, err
			}
			tmp := filepath.Join(filepath.Dir(dst), ".ecs-tmp-"+filepath.Base(dst))
			f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return n, err
			}
			_, err = io.Copy(f, tr)
			if err == nil {
				err = f.Chown(uid, gid)
			}
			if err == nil {
				err = syscall.Fchmod(int(f.Fd()), uint32(mode)|special)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(tmp, dst)
			}
			if err != nil {
				os.Remove(tmp)
				return n, fmt.Errorf("%s: %v", name, err)
			}
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return n, err
			}
			os.Remove(dst)
			if err := os.Symlink(h.Linkname, dst); err != nil {
				return n, err
			}
			if err := os.Lchown(dst, uid, gid); err != nil {
				return n, err
			}
		default:
			return n, fmt.Errorf("%s: unsupported archive entry type %q", name, h.Typeflag)
		}
		n++
	}
}

// safeParent refuses a destination whose parent resolves (through symlinks
// in the image) outside root.
func safeParent(root, dst string) error {
	rel, err := filepath.Rel(root, dst)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("%s: outside the image", dst)
	}
	return nil
}
