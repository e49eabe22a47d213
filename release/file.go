package release

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/progress"
)

// FileTarget publishes into a local directory (file:// URLs).
type FileTarget struct {
	root string
}

// NewFileTarget returns a target writing under root, created if missing.
func NewFileTarget(root string) (*FileTarget, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, &Error{Path: root, Msg: errText(err)}
	}
	return &FileTarget{root: root}, nil
}

func (t *FileTarget) String() string { return "file://" + t.root }

// Digest hashes the existing file at key.
func (t *FileTarget) Digest(ctx context.Context, key string) (string, int64, bool, error) {
	sum, size, err := HashFile(ctx, filepath.Join(t.root, key))
	if errors.Is(err, fs.ErrNotExist) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, err
	}
	return sum, size, true, nil
}

// Put copies file to key through a temporary name and renames it.
func (t *FileTarget) Put(ctx context.Context, key, file, sum string, size int64) error {
	dst := filepath.Join(t.root, key)
	src, err := os.Open(file)
	if err != nil {
		return err
	}
	defer src.Close()
	out, err := atomicfile.Create(dst, 0o644)
	if err != nil {
		return err
	}
	defer out.Abort()
	tr := progress.New("publish "+key, size)
	defer tr.Done()
	if _, err := io.Copy(out, tr.Reader(ctxReader{ctx, src})); err != nil {
		return err
	}
	return out.Commit()
}

// Delete removes key.
func (t *FileTarget) Delete(ctx context.Context, key string) error {
	err := os.Remove(filepath.Join(t.root, key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
