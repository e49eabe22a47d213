// Package images provides the base images every ECS build starts from: a
// catalog of known cloud images, a verified and cached fetch, a safety
// inspection of image files (qemu-img info), and a bootable Debian/Ubuntu
// base built from a package mirror (see Build).
package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// CacheDir is the root of ecs-image's cache: $ECS_IMAGE_CACHE if set, else
// $XDG_CACHE_HOME/ecs-image, else ~/.cache/ecs-image. Bases live in its
// "images" subdirectory, the builder's stages in "stages".
func CacheDir() string {
	if d := os.Getenv("ECS_IMAGE_CACHE"); d != "" {
		return absOr(d)
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "ecs-image")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".cache", "ecs-image")
	}
	return filepath.Join(os.TempDir(), "ecs-image-cache")
}

func absOr(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// Cache is the on-disk store of base images under a directory (normally
// CacheDir()/images):
//
//	sha256-<hex>.<format>   image files, named by the digest of their content
//	index/<key>.json        one entry per source (URL+checksum, or build recipe)
//	locks/<key>.lock        flock(2) files serialising work on one key
//	tmp/                    partial downloads and builds (same filesystem, so
//	                        the final rename is atomic)
type Cache struct {
	Dir string
}

// DefaultCache is the cache under CacheDir()/images.
func DefaultCache() *Cache { return &Cache{Dir: filepath.Join(CacheDir(), "images")} }

// Entry is an index entry: what a source resolved to.
type Entry struct {
	// Key is the index key (a hash of Source).
	Key string `json:"key"`
	// Source describes what was fetched or built (URL and checksum, or the
	// build recipe), for humans.
	Source string `json:"source"`
	// Digest is "sha256:<hex>" of the cached image file.
	Digest string `json:"digest"`
	// Format is the disk format ("qcow2" or "raw").
	Format string `json:"format"`
	// File is the image's file name inside the cache directory.
	File string `json:"file"`
	// Size is the file size in bytes.
	Size int64 `json:"size"`
	// Created is when the entry was made.
	Created time.Time `json:"created"`
}

// Key hashes a source description into an index key.
func Key(source string) string {
	s := sha256.Sum256([]byte(source))
	return hex.EncodeToString(s[:16])
}

func (c *Cache) indexPath(key string) string { return filepath.Join(c.Dir, "index", key+".json") }

// Path is the absolute path of an entry's image file.
func (c *Cache) Path(e *Entry) string { return filepath.Join(c.Dir, e.File) }

// Lookup returns the entry for key if it exists and its image file is still
// present with the recorded size; otherwise nil.
func (c *Cache) Lookup(key string) (*Entry, error) {
	data, err := os.ReadFile(c.indexPath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var e Entry
	if err := json.Unmarshal(data, &e); err != nil || e.File == "" || strings.ContainsAny(e.File, `/\`) {
		logrus.Warnf("ignoring corrupt cache index %s", c.indexPath(key))
		return nil, nil
	}
	fi, err := os.Stat(c.Path(&e))
	if err != nil || fi.Size() != e.Size {
		return nil, nil
	}
	return &e, nil
}

// TempDir makes a fresh directory under the cache's tmp/ for partial work.
func (c *Cache) TempDir(pattern string) (string, error) {
	dir := filepath.Join(c.Dir, "tmp")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	d, err := os.MkdirTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	// apt's sandbox user must be able to reach a bootstrap tree inside.
	return d, os.Chmod(d, 0o755)
}

// RemoveStale removes leftovers under tmp/ whose names start with prefix:
// work of a process that was killed (SIGKILL, power loss) while holding the
// key's lock. Call it only while holding that lock.
func (c *Cache) RemoveStale(prefix string) {
	old, _ := filepath.Glob(filepath.Join(c.Dir, "tmp", prefix+"*"))
	for _, d := range old {
		logrus.Infof("removing leftovers of an interrupted run: %s", d)
		if err := safeRemoveAll(d); err != nil {
			logrus.Warnf("removing %s: %v", d, err)
		}
	}
}

// Commit hashes the finished image at tmpPath, moves it into the cache
// under its digest (rename, same filesystem) and writes the index entry for
// key. If an identical file is already cached, tmpPath is removed.
func (c *Cache) Commit(key, source, format, tmpPath string) (*Entry, error) {
	sum, size, err := atomicfile.SHA256File(context.Background(), tmpPath)
	if err != nil {
		return nil, err
	}
	e := &Entry{
		Key: key, Source: source, Digest: "sha256:" + sum, Format: format,
		File: "sha256-" + sum + "." + format, Size: size, Created: time.Now().UTC(),
	}
	if err := os.Chmod(tmpPath, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmpPath, c.Path(e)); err != nil {
		return nil, err
	}
	if err := c.writeIndex(e); err != nil {
		return nil, err
	}
	return e, nil
}

func (c *Cache) writeIndex(e *Entry) error {
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(c.indexPath(e.Key), append(data, '\n'), 0o644, atomicfile.MkdirAll(0o755))
}

// Lock takes an exclusive lock on key, waiting for another process that
// holds it (a concurrent fetch or build of the same base). The returned
// function releases it. Waiting ends early when ctx is cancelled.
func (c *Cache) Lock(ctx context.Context, key string) (func(), error) {
	dir := filepath.Join(c.Dir, "locks")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, key+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for waited := false; ; waited = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if !waited {
			logrus.Infof("waiting for another ecs-image process working on the same base (lock %s)", f.Name())
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
