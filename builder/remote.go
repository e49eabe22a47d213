package builder

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// RemoteStore is an object store holding stage objects (release's
// S3Target is one). PutMeta makes an object visible only when it is whole,
// with user metadata (meta: "sha256" and the stage's IDs); with ifAbsent it
// writes nothing when the object exists (the error wraps fs.ErrExist).
// Head and Open (a download, streamed) return that metadata.
type RemoteStore interface {
	Head(ctx context.Context, key string) (meta map[string]string, size int64, found bool, err error)
	PutMeta(ctx context.Context, key, file string, size int64, meta map[string]string, ifAbsent bool) error
	Open(ctx context.Context, key string) (body io.ReadCloser, meta map[string]string, found bool, err error)
	String() string
}

// Object metadata of a stage object: its sha256, and the StageEntry's ID
// and ParentID (so that a HEAD tells which build of a stage and of its
// parent an object is).
const (
	metaSHA256   = "sha256"
	metaID       = "stage-id"
	metaParentID = "parent-id"
)

// Remote cache modes (--cache-remote-mode).
const (
	RemoteRead      = "read"
	RemoteWrite     = "write"
	RemoteReadWrite = "readwrite"
)

// RemoteModes are the valid remote cache modes.
var RemoteModes = []string{RemoteRead, RemoteWrite, RemoteReadWrite}

// RemoteObject is the object key of a stage in a remote store: one
// zstd-compressed tar of stage.json (first), disk.qcow2 and boot/.
func RemoteObject(key string) string { return "stages/" + key + ".tar.zst" }

// remoteCache is a build's view of the remote store.
type remoteCache struct {
	store RemoteStore
	read  bool
	write bool
	log   logrus.FieldLogger
	// down: the store failed once (warned); it is not asked again.
	down bool
	// bad are keys whose remote object was refused: replaced by the
	// rebuilt stage.
	bad map[string]bool
	// ids are the IDs (StageEntry.ID) of the remote objects seen in this
	// build, by key: a stage is uploaded only on the remote copy of its
	// parent, so that the objects of the shared cache always form chains
	// of overlays built on each other.
	ids map[string]string
}

func newRemoteCache(store RemoteStore, mode string, log logrus.FieldLogger) *remoteCache {
	if store == nil {
		return nil
	}
	return &remoteCache{store: store, read: mode != RemoteWrite, write: mode != RemoteRead, log: log, bad: map[string]bool{}, ids: map[string]string{}}
}

// head asks for key's object (bounded: a remote that does not answer
// stops the build for remoteTimeout at most) and records its ID.
func (r *remoteCache) head(ctx context.Context, key string) (meta map[string]string, found bool, err error) {
	hctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	meta, _, found, err = r.store.Head(hctx, RemoteObject(key))
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			r.fail(err)
		}
		return nil, false, err
	}
	if found {
		r.ids[key] = meta[metaID]
	} else {
		delete(r.ids, key)
	}
	return meta, found, nil
}

// onRemoteParent tells whether a stage built on parentKey/parentID may go
// to the remote: its parent is the base, or the remote's object of the
// parent is that very build of it.
func (r *remoteCache) onRemoteParent(parentKey, parentID string) bool {
	return onBase(parentKey) || (parentID != "" && r.ids[parentKey] == parentID)
}

// remoteTimeout bounds one request that should be quick (HEAD).
const remoteTimeout = 30 * time.Second

func (r *remoteCache) fail(err error) {
	if !r.down {
		r.log.Warnf("remote cache %s unreachable, building with the local cache only: %v", r.store, err)
	}
	r.down = true
}

// fetch looks key up in the remote store and, on a hit, downloads it,
// verifies it (digest, names, its parent key and the ID of the parent
// build it was made on, the disk with qemuimg.Inspect), rebases its disk
// onto parentDisk and commits it to c. parentID is the ID of the local
// parent entry (the disk parentDisk). It returns the local entry, or nil (a
// miss, a refused object, the store unreachable).
func (r *remoteCache) fetch(ctx context.Context, c *StageCache, work, key, parentKey, parentID, parentDisk, parentFormat string) *StageEntry {
	if r == nil || !r.read || r.down {
		return nil
	}
	// A HEAD first: a miss costs no more, and the metadata tells on which
	// build of the parent the object was made.
	meta, ok, err := r.head(ctx, key)
	if err != nil || !ok {
		return nil
	}
	if !onBase(parentKey) && meta[metaParentID] != parentID {
		// Built on another build of the parent stage than ours: its
		// overlay is not valid on our parent's disk.
		if r.onRemoteParent(parentKey, parentID) {
			// The remote's parent is ours: the object is stale (its
			// parent object was replaced); the rebuilt stage replaces it.
			r.bad[key] = true
			r.log.Warnf("remote cache: object %s was built on a parent no longer in the remote, rebuilding the stage", RemoteObject(key))
		} else {
			r.log.Infof("remote cache: %s was built on another build of stage %s than the local one, building it here", key[:min(12, len(key))], parentKey[:min(12, len(parentKey))])
		}
		return nil
	}
	dir, err := os.MkdirTemp(work, "remote-")
	if err != nil {
		r.log.Warnf("remote cache: %v", err)
		return nil
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	body, meta, found, err := r.store.Open(ctx, RemoteObject(key))
	if err != nil {
		if ctx.Err() == nil {
			r.fail(err)
		}
		return nil
	}
	if !found {
		return nil
	}
	r.ids[key] = meta[metaID]
	// Streamed: hashed and extracted as it arrives (into the work
	// directory; nothing is used before the digest is checked).
	size, err := r.download(body, meta, filepath.Join(dir, "stage"))
	body.Close()
	var be *bodyError
	if errors.As(err, &be) {
		if ctx.Err() == nil {
			r.fail(be.err)
		}
		return nil
	}
	var e *StageEntry
	if err == nil {
		e, err = r.unpack(ctx, c, meta, filepath.Join(dir, "stage"), key, parentKey, parentID, parentDisk, parentFormat)
	}
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warnf("remote cache: object %s refused, rebuilding the stage: %v", RemoteObject(key), err)
			if r.onRemoteParent(parentKey, parentID) {
				r.bad[key] = true
			}
		}
		return nil
	}
	r.log.Infof("remote cache: %s downloaded and verified (%.0f MiB in %.1fs)", key[:12], float64(size)/(1<<20), time.Since(start).Seconds())
	return e
}

// bodyError is a failure to read the object from the store (the network),
// not a fault of its content.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }

// bodyReader keeps the store's read errors apart from the content's.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// download extracts the object read from body into dir while hashing it,
// and checks its sha256 against meta. It returns the object's size. A
// content that does not extract is read to its end first, so that a
// corrupt or truncated object is reported as such.
func (r *remoteCache) download(body io.Reader, meta map[string]string, dir string) (int64, error) {
	br := &bodyReader{r: body}
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(br, h)}
	uerr := untarStage(cr, dir)
	if _, err := io.Copy(io.Discard, cr); err != nil && br.err == nil && uerr == nil {
		uerr = err
	}
	if br.err != nil {
		return cr.n, &bodyError{br.err}
	}
	got := hex.EncodeToString(h.Sum(nil))
	if sum := meta[metaSHA256]; sum == "" || got != sum {
		return cr.n, fmt.Errorf("sha256 %s, its metadata says %q (corrupt or truncated)", got, sum)
	}
	return cr.n, uerr
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// unpack checks the extracted object in dir and commits it.
func (r *remoteCache) unpack(ctx context.Context, c *StageCache, meta map[string]string, dir, key, parentKey, parentID, parentDisk, parentFormat string) (*StageEntry, error) {
	data, err := os.ReadFile(filepath.Join(dir, "stage.json"))
	if err != nil {
		return nil, errors.New("no stage.json")
	}
	var e StageEntry
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("stage.json: %v", err)
	}
	if e.Key != key {
		return nil, fmt.Errorf("stage.json: key %q, want %s", e.Key, key)
	}
	if e.Parent != parentKey {
		return nil, fmt.Errorf("stage.json: parent %q, want %s (chain broken)", e.Parent, parentKey)
	}
	if e.ID == "" || e.ID != meta[metaID] {
		return nil, fmt.Errorf("stage.json: id %q, the object's metadata says %q", e.ID, meta[metaID])
	}
	if !onBase(parentKey) && e.ParentID != parentID {
		return nil, fmt.Errorf("stage.json: built on build %q of its parent, want %q (chain broken)", e.ParentID, parentID)
	}
	if e.BootFrom != "" && e.BootFrom != key && c.Lookup(e.BootFrom) == nil {
		return nil, fmt.Errorf("stage.json: boot files of %s, not in the local cache", e.BootFrom)
	}
	if e.BootFrom == key {
		if _, err := os.Stat(filepath.Join(dir, "boot")); err != nil {
			return nil, errors.New("boot/ missing")
		}
	}
	disk := filepath.Join(dir, "disk.qcow2")
	if _, err := os.Stat(disk); err != nil {
		return nil, errors.New("no disk.qcow2")
	}
	// Drop the uploader's backing path (-u: nothing else is opened), check
	// the disk on its own as any untrusted image, then put it on our parent.
	if _, err := qemuimg.Run(ctx, "rebase", "-u", "-f", "qcow2", "-b", "", disk); err != nil {
		return nil, err
	}
	if _, err := qemuimg.Inspect(ctx, disk, qemuimg.Policy{Formats: []string{"qcow2"}, Format: "qcow2"}); err != nil {
		return nil, err
	}
	if _, err := qemuimg.Run(ctx, "rebase", "-u", "-f", "qcow2", "-b", parentDisk, "-F", parentFormat, disk); err != nil {
		return nil, err
	}
	e.Backing = parentDisk
	if err := c.Commit(dir, &e); err != nil {
		return nil, err
	}
	return c.Lookup(key), nil
}

// push uploads the local entry key unless the store already holds an
// object for it that was not refused, or holds another build of its parent
// (the entry's overlay would not be valid on the remote's parent: the
// remote keeps chains whole). The upload is a conditional create, except
// when it replaces a refused object: of two builders racing on one key the
// first completed upload wins, and the other learns the winner's ID.
func (r *remoteCache) push(ctx context.Context, c *StageCache, work, key string) {
	if r == nil || !r.write || r.down {
		return
	}
	e := c.Lookup(key)
	if e == nil {
		return
	}
	if !r.bad[key] {
		if _, ok, err := r.head(ctx, key); err != nil || ok {
			return
		}
	}
	if !r.onRemoteParent(e.Parent, e.ParentID) {
		r.log.Infof("remote cache: %s not uploaded: the remote holds another build of its parent stage %s", key[:min(12, len(key))], e.Parent[:min(12, len(e.Parent))])
		return
	}
	f, err := os.CreateTemp(work, "upload-*.tar")
	if err != nil {
		r.log.Warnf("remote cache: %v", err)
		return
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	err = tarStage(io.MultiWriter(f, h), c.Path(key))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		r.log.Warnf("remote cache: packing %s: %v", key[:12], err)
		return
	}
	fi, err := os.Stat(f.Name())
	if err != nil {
		return
	}
	start := time.Now()
	meta := map[string]string{metaSHA256: hex.EncodeToString(h.Sum(nil)), metaID: e.ID}
	if e.ParentID != "" {
		meta[metaParentID] = e.ParentID
	}
	replace := r.bad[key]
	if err := r.store.PutMeta(ctx, RemoteObject(key), f.Name(), fi.Size(), meta, !replace); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another builder's upload of this key completed first.
			r.log.Infof("remote cache: %s uploaded by another builder meanwhile", key[:12])
			r.head(ctx, key)
			return
		}
		if ctx.Err() == nil {
			r.log.Warnf("remote cache: uploading %s failed (nothing left half-written; the next build uploads it): %v", key[:12], err)
		}
		return
	}
	delete(r.bad, key)
	took := time.Since(start)
	// Read it back: a server whose conditional writes are not atomic may
	// have let a racing upload complete over ours.
	if meta, ok, err := r.head(ctx, key); err == nil && ok && meta[metaID] != e.ID {
		r.log.Infof("remote cache: %s uploaded, then replaced by another builder's upload", key[:12])
		return
	}
	r.log.Infof("remote cache: %s uploaded (%.0f MiB in %.1fs)", key[:12], float64(fi.Size())/(1<<20), took.Seconds())
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// tarStage writes stage.json, disk.qcow2 and boot/* of a cache entry as a
// zstd-compressed tar.
func tarStage(w io.Writer, dir string) (err error) {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return err
	}
	defer func() {
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
	}()
	tw := tar.NewWriter(zw)
	names := []string{"stage.json", "disk.qcow2"}
	if ents, err := os.ReadDir(filepath.Join(dir, "boot")); err == nil {
		names = append(names, "boot/")
		for _, d := range ents {
			if d.Type().IsRegular() {
				names = append(names, "boot/"+d.Name())
			}
		}
	}
	for _, n := range names {
		if n == "boot/" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: 0o755}); err != nil {
				return err
			}
			continue
		}
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		fi, err := f.Stat()
		if err == nil {
			err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: int64(fi.Mode().Perm()), Size: fi.Size(), ModTime: fi.ModTime()})
		}
		if err == nil {
			_, err = io.Copy(tw, f)
		}
		f.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// untarStage extracts a stage object read from r into dir, refusing
// anything but stage.json, disk.qcow2, boot/ and regular files directly in
// boot/.
func untarStage(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	zr, err := zstd.NewReader(r)
	if err != nil {
		return fmt.Errorf("zstd: %v", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("tar: %v", err)
		}
		name := h.Name
		switch {
		case name == "boot/" && h.Typeflag == tar.TypeDir:
			if err := os.Mkdir(filepath.Join(dir, "boot"), 0o755); err != nil {
				return err
			}
			continue
		case h.Typeflag != tar.TypeReg:
			return fmt.Errorf("tar: %q is not a regular file", name)
		case name == "stage.json" || name == "disk.qcow2":
		case strings.HasPrefix(name, "boot/") && path.Dir(name) == "boot" && path.Base(name) != ".." && path.Base(name) != "." && !strings.Contains(name[5:], "/"):
		default:
			return fmt.Errorf("tar: unexpected entry %q", name)
		}
		out, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(name)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("tar: %q: %v", name, err)
		}
		_, err = io.Copy(out, tr)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("tar: %q: %v", name, err)
		}
	}
}
