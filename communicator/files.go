package communicator

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/ecs-image/ecs-image/progress"
	"github.com/pkg/sftp"
)

// UploadOptions configure Upload.
type UploadOptions struct {
	// Mode sets the permissions of an uploaded file, or of every regular
	// file of an uploaded directory. Zero keeps the local permissions.
	Mode os.FileMode
	// Owner ("user" or "user:group") owns the uploaded paths; it implies
	// Sudo. With Sudo and no Owner, the owner is root:root.
	Owner string
	// Sudo installs the upload as root: it is sent over SFTP to a private
	// temporary directory, given its owner there, and copied into place
	// with `sudo cp -a`, so root-owned destinations work.
	Sudo bool
}

// progressMin is the size from which a file upload or download reports progress.
const progressMin = 16 << 20

var ownerRE = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$`)
})

// Upload copies the local file or directory to the remote path. A
// directory becomes the remote directory (created, or merged into an
// existing one), with its subdirectories, files and symbolic links.
// Missing parent directories are created.
func (c *Client) Upload(ctx context.Context, local, remote string, opts UploadOptions) error {
	if opts.Owner != "" && !ownerRE().MatchString(opts.Owner) {
		return fmt.Errorf("upload %s: owner %q: want user or user:group", local, opts.Owner)
	}
	if remote == "" {
		return fmt.Errorf("upload %s: no remote path", local)
	}
	st, err := os.Stat(local)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	sc, err := c.SFTP()
	if err != nil {
		return err
	}
	if !opts.Sudo && opts.Owner == "" {
		if err := c.put(ctx, sc, local, st, remote, opts.Mode); err != nil {
			return fmt.Errorf("upload %s to %s: %w", local, remote, err)
		}
		return nil
	}

	out, err := c.Output(ctx, "mktemp -d /tmp/ecs-upload.XXXXXXXX", false)
	if err != nil {
		return fmt.Errorf("upload %s: staging directory: %w", local, err)
	}
	stage := strings.TrimSpace(out)
	defer c.Run(context.WithoutCancel(ctx), "rm -rf "+Quote(stage), RunOptions{Sudo: true})
	payload := stage + "/payload"
	if err := c.put(ctx, sc, local, st, payload, opts.Mode); err != nil {
		return fmt.Errorf("upload %s to %s: %w", local, remote, err)
	}
	owner := opts.Owner
	if owner == "" {
		owner = "root:root"
	}
	script := fmt.Sprintf("set -e\nchown -R -h %s %s\nmkdir -p \"$(dirname %s)\"\ncp -a -T %s %s",
		Quote(owner), Quote(payload), Quote(remote), Quote(payload), Quote(remote))
	if _, err := c.Output(ctx, script, true); err != nil {
		return fmt.Errorf("upload %s to %s: install: %w", local, remote, err)
	}
	return nil
}

// put sends local to remote over SFTP as the login user.
func (c *Client) put(ctx context.Context, sc *sftp.Client, local string, st fs.FileInfo, remote string, mode os.FileMode) error {
	if !st.IsDir() {
		if err := sc.MkdirAll(path.Dir(remote)); err != nil {
			return fmt.Errorf("mkdir %s: %w", path.Dir(remote), err)
		}
		m := st.Mode().Perm() | st.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		if mode != 0 {
			m = mode
		}
		return putFile(ctx, sc, local, remote, st.Size(), m)
	}
	return filepath.WalkDir(local, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(local, p)
		if err != nil {
			return err
		}
		dst := remote
		if rel != "." {
			dst = path.Join(remote, filepath.ToSlash(rel))
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := sc.MkdirAll(dst); err != nil {
				return fmt.Errorf("mkdir %s: %w", dst, err)
			}
			return sc.Chmod(dst, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			sc.Remove(dst)
			if err := sc.Symlink(target, dst); err != nil {
				return fmt.Errorf("symlink %s: %w", dst, err)
			}
			return nil
		case d.Type().IsRegular():
			m := info.Mode().Perm() | info.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
			if mode != 0 {
				m = mode
			}
			return putFile(ctx, sc, p, dst, info.Size(), m)
		default:
			return fmt.Errorf("%s: cannot upload a %s", p, d.Type())
		}
	})
}

func putFile(ctx context.Context, sc *sftp.Client, local, remote string, size int64, mode os.FileMode) error {
	in, err := os.Open(local)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := sc.OpenFile(remote, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create %s: %w", remote, err)
	}
	var r io.Reader = ctxReader{ctx, in}
	var t *progress.Tracker
	if size >= progressMin {
		t = progress.New("upload "+filepath.Base(local), size)
		r = t.Reader(r)
	}
	_, err = out.ReadFromWithConcurrency(r, 64)
	if t != nil {
		t.Done()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", remote, err)
	}
	if err := sc.Chmod(remote, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", remote, err)
	}
	return nil
}

// Download copies the remote file or directory to the local path, as the
// login user. A file is written under a temporary name and renamed; a
// directory is assembled in a temporary directory and renamed into place
// (local must not exist yet).
func (c *Client) Download(ctx context.Context, remote, local string) error {
	sc, err := c.SFTP()
	if err != nil {
		return err
	}
	st, err := sc.Stat(remote)
	if err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	dir := filepath.Dir(local)
	if !st.IsDir() {
		tmp, err := os.CreateTemp(dir, "."+filepath.Base(local)+".tmp-*")
		if err != nil {
			return fmt.Errorf("download %s: %w", remote, err)
		}
		tmp.Close()
		defer os.Remove(tmp.Name())
		if err := getFile(ctx, sc, remote, tmp.Name(), st.Size(), st.Mode().Perm()); err != nil {
			return fmt.Errorf("download %s: %w", remote, err)
		}
		if err := os.Rename(tmp.Name(), local); err != nil {
			return fmt.Errorf("download %s: %w", remote, err)
		}
		return nil
	}
	if _, err := os.Lstat(local); err == nil {
		return fmt.Errorf("download %s: %s already exists", remote, local)
	}
	tmp, err := os.MkdirTemp(dir, "."+filepath.Base(local)+".tmp-*")
	if err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	defer os.RemoveAll(tmp)
	w := sc.Walk(remote)
	for w.Step() {
		if err := w.Err(); err != nil {
			return fmt.Errorf("download %s: %w", remote, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(w.Path(), remote), "/")
		dst := filepath.Join(tmp, filepath.FromSlash(rel))
		info := w.Stat()
		switch {
		case info.IsDir():
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(dst, info.Mode().Perm()|0o700); err != nil {
				return err
			}
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := sc.ReadLink(w.Path())
			if err != nil {
				return fmt.Errorf("download %s: %w", w.Path(), err)
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			if err := getFile(ctx, sc, w.Path(), dst, info.Size(), info.Mode().Perm()); err != nil {
				return fmt.Errorf("download %s: %w", w.Path(), err)
			}
		}
	}
	if err := os.Rename(tmp, local); err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	return nil
}

func getFile(ctx context.Context, sc *sftp.Client, remote, local string, size int64, mode os.FileMode) error {
	in, err := sc.Open(remote)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	var w io.Writer = out
	var t *progress.Tracker
	if size >= progressMin {
		t = progress.New("download "+path.Base(remote), size)
		w = t.Writer(out)
	}
	_, err = in.WriteTo(ctxWriter{ctx, w})
	if t != nil {
		t.Done()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Chmod(local, mode)
}

// ctxReader and ctxWriter stop a transfer when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (w ctxWriter) Write(p []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	return w.w.Write(p)
}
