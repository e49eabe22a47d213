package builder

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/images"
)

// Version is the builder's cache-format version, part of every stage key:
// bump it when what a stage produces for the same input changes.
const Version = 1

// StageCache is the on-disk stage cache (normally CacheDir()/stages):
//
//	<key>/disk.qcow2   the stage's disk: a qcow2 overlay on its parent's
//	<key>/stage.json   StageEntry
//	<key>/boot/        kernel, initrd and root= of booted stages (used by
//	                   the offline helper for later stages)
//	tmp/<build>/       work directories of running builds, each with a
//	                   pid file; those of dead processes are removed
type StageCache struct {
	Dir string
}

// grainStoreDir is where the stream VMDKs of the last builds are kept
// with their grains' index (package grainstore), beside the stage cache's
// directory: a build copies the compressed grains its VMDK shares with
// the last one of the same output instead of deflating them again.
const grainStoreDir = "vmdk-grains"

// GrainStores is the directory of the stream VMDK grain stores beside the
// stage cache's directory.
func (c *StageCache) GrainStores() string { return filepath.Join(filepath.Dir(c.Dir), grainStoreDir) }

// DefaultStageCache is the stage cache under images.CacheDir().
func DefaultStageCache() *StageCache {
	return &StageCache{Dir: filepath.Join(images.CacheDir(), "stages")}
}

// StageEntry describes a cached stage.
type StageEntry struct {
	Key    string `json:"key"`
	Parent string `json:"parent"` // parent stage key, or "base:<digest>"
	Name   string `json:"name"`
	// Template is the template's name (for humans).
	Template string `json:"template"`
	// Mode is how the stage was built: ModeBoot, ModeChroot or
	// ModeOffline (the generalised disk too).
	Mode template.Mode `json:"mode"`
	// BootFrom is the key of the entry whose boot/ directory holds the
	// kernel and initrd for this disk.
	BootFrom string `json:"boot_from,omitempty"`
	// Backing is the disk's backing file (the parent's disk or the base);
	// an entry whose backing file is gone is a miss.
	Backing string    `json:"backing,omitempty"`
	Created time.Time `json:"created"`
	Seconds float64   `json:"seconds"`
	// Packages is the guest's package list (generalise entries only).
	Packages []string `json:"packages,omitempty"`
	// Kernel is the image's kernel and its drivers (generalise entries).
	Kernel   *KernelInfo `json:"kernel,omitempty"`
	Size     int64       `json:"size"` // disk file size, filled by List
	LastUsed time.Time   `json:"-"`
	// ID names this build of the stage (random, given at commit; copies
	// of the entry through the shared cache keep it). Two builds of one
	// key are not the same bytes, and an overlay is only valid on the very
	// disk it was written on: ParentID is the ID of the parent entry the
	// disk was built on ("" on the base, which its digest names).
	ID       string `json:"id,omitempty"`
	ParentID string `json:"parent_id,omitempty"`
}

// onBase tells whether a parent key is the base image (not a stage).
func onBase(parentKey string) bool { return strings.HasPrefix(parentKey, "base:") }

// newEntryID is a fresh StageEntry.ID.
func newEntryID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// ensureIDs gives an entry committed before entries had IDs (an older
// ecs-image) its ID, and its ParentID from parentID (the local parent
// entry's: a local entry was built on the local parent), and rewrites its
// stage.json. It returns e's ID.
func (c *StageCache) ensureIDs(e *StageEntry, parentID string) string {
	if e.ID != "" && (e.ParentID != "" || onBase(e.Parent)) {
		return e.ID
	}
	if e.ID == "" {
		e.ID = newEntryID()
	}
	if e.ParentID == "" && !onBase(e.Parent) {
		e.ParentID = parentID
	}
	if data, err := json.MarshalIndent(e, "", "  "); err == nil {
		atomicfile.Write(filepath.Join(c.Path(e.Key), "stage.json"), append(data, '\n'), 0o644)
	}
	return e.ID
}

// UnmarshalJSON reads a stage.json; one written before the mode was
// recorded gets it from its booted and chroot fields.
func (e *StageEntry) UnmarshalJSON(data []byte) error {
	type entry StageEntry // without this method
	var v struct {
		entry
		Booted bool `json:"booted"`
		Chroot bool `json:"chroot"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*e = StageEntry(v.entry)
	if e.Mode == template.ModeAuto {
		e.Mode = legacyMode(v.Booted, v.Chroot)
	}
	return nil
}

// legacyMode is the mode recorded as booted/offline and chroot flags.
func legacyMode(booted, chroot bool) template.Mode {
	switch {
	case booted:
		return template.ModeBoot
	case chroot:
		return template.ModeChroot
	}
	return template.ModeOffline
}

// Path is the directory of key.
func (c *StageCache) Path(key string) string { return filepath.Join(c.Dir, key) }

// Disk is the disk image of key.
func (c *StageCache) Disk(key string) string { return filepath.Join(c.Dir, key, "disk.qcow2") }

// BootDir is the boot/ directory of key.
func (c *StageCache) BootDir(key string) string { return filepath.Join(c.Dir, key, "boot") }

// Lookup returns the entry of key, or nil when it is not cached. A hit
// marks the entry as used (for prune).
func (c *StageCache) Lookup(key string) *StageEntry {
	meta := filepath.Join(c.Path(key), "stage.json")
	data, err := os.ReadFile(meta)
	if err != nil {
		return nil
	}
	var e StageEntry
	if json.Unmarshal(data, &e) != nil || e.Key != key {
		return nil
	}
	if _, err := os.Stat(c.Disk(key)); err != nil {
		return nil
	}
	if e.Backing != "" {
		if _, err := os.Stat(e.Backing); err != nil {
			return nil
		}
	}
	now := time.Now()
	os.Chtimes(meta, now, now)
	return &e
}

// Commit moves a finished stage directory (with disk.qcow2) into the cache
// as key, writing its stage.json. An existing entry of the same key (a
// concurrent build) wins; dir is then removed.
func (c *StageCache) Commit(dir string, e *StageEntry) error {
	if e.ID == "" {
		e.ID = newEntryID()
	}
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "stage.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	if err := os.Rename(dir, c.Path(e.Key)); err != nil {
		if c.Lookup(e.Key) != nil {
			return os.RemoveAll(dir)
		}
		return err
	}
	return nil
}

// List returns the cached entries, newest first.
func (c *StageCache) List() ([]*StageEntry, error) {
	ents, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*StageEntry
	for _, d := range ents {
		if !d.IsDir() || d.Name() == "tmp" {
			continue
		}
		meta := filepath.Join(c.Dir, d.Name(), "stage.json")
		data, err := os.ReadFile(meta)
		if err != nil {
			continue
		}
		var e StageEntry
		if json.Unmarshal(data, &e) != nil {
			continue
		}
		if fi, err := os.Stat(meta); err == nil {
			e.LastUsed = fi.ModTime()
		}
		e.Size = dirSize(c.Path(d.Name()))
		out = append(out, &e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					n += st.Blocks * 512 // allocated, qcow2 files are sparse
				} else {
					n += fi.Size()
				}
			}
		}
		return nil
	})
	return n
}

// Prune removes entries not used since before (and every entry built on
// them, whose backing files they are), and work directories of builds
// that are no longer running. It returns the removed entries.
func (c *StageCache) Prune(before time.Time) ([]*StageEntry, error) {
	c.CleanStale()
	ents, err := c.List()
	if err != nil {
		return nil, err
	}
	dead := map[string]bool{}
	for _, e := range ents {
		if e.LastUsed.Before(before) {
			dead[e.Key] = true
		}
	}
	// Children of removed entries lose their backing file: remove them too.
	for changed := true; changed; {
		changed = false
		for _, e := range ents {
			if !dead[e.Key] && (dead[e.Parent] || dead[e.BootFrom]) {
				dead[e.Key] = true
				changed = true
			}
		}
	}
	var removed []*StageEntry
	for _, e := range ents {
		if dead[e.Key] {
			if err := os.RemoveAll(c.Path(e.Key)); err != nil {
				return removed, err
			}
			removed = append(removed, e)
		}
	}
	return removed, nil
}

// Remove removes key and every entry built on it.
func (c *StageCache) Remove(key string) error {
	ents, err := c.List()
	if err != nil {
		return err
	}
	dead := map[string]bool{key: true}
	for changed := true; changed; {
		changed = false
		for _, e := range ents {
			if !dead[e.Key] && (dead[e.Parent] || dead[e.BootFrom]) {
				dead[e.Key] = true
				changed = true
			}
		}
	}
	for k := range dead {
		if err := os.RemoveAll(c.Path(k)); err != nil {
			return err
		}
	}
	return nil
}

// WorkDir makes a work directory for a running build under tmp/, with a pid
// file, after removing those of builds that died (crash, kill -9).
func (c *StageCache) WorkDir() (string, error) {
	c.CleanStale()
	tmp := filepath.Join(c.Dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(tmp, "build-")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// CleanStale removes work directories whose build process is gone, and
// returns their paths.
func (c *StageCache) CleanStale() []string {
	tmp := filepath.Join(c.Dir, "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return nil
	}
	var removed []string
	for _, d := range ents {
		dir := filepath.Join(tmp, d.Name())
		data, err := os.ReadFile(filepath.Join(dir, "pid"))
		if err != nil {
			// No pid file: a build that crashed before writing it, if old.
			if fi, err := d.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
				os.RemoveAll(dir)
				removed = append(removed, dir)
			}
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err == nil && pid > 0 && processAlive(pid) {
			continue
		}
		os.RemoveAll(dir)
		removed = append(removed, dir)
	}
	return removed
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Stage keys.

// RootKey is the key the first stage builds on: the base's digest and the
// disk size.
func RootKey(baseDigest string, diskSize int64) string {
	return hashJSON(map[string]any{"v": Version, "base": baseDigest, "disk_size": diskSize})
}

// StageKey is hash(parent key, stage definition, content of every file the
// stage uploads, variables its shell provisioners see, and how it is built:
// mode is ModeBoot, ModeChroot or ModeOffline).
func StageKey(parent string, s *template.Stage, vars map[string]string, mode template.Mode) (string, error) {
	var provs []string
	var inputs []string
	for _, p := range s.Provisioners {
		provs = append(provs, p.Canonical())
		if p.P == nil {
			continue
		}
		for _, in := range p.P.Inputs() {
			h, err := hashInput(in)
			if err != nil {
				return "", fmt.Errorf("stage %s: %w", s.Name, err)
			}
			inputs = append(inputs, h)
		}
	}
	if !s.NeedsBoot() {
		vars = nil // placing files does not see variables
	}
	k := map[string]any{
		"v": Version, "parent": parent, "name": s.Name, "provisioners": provs,
		"inputs": inputs, "vars": vars, "offline": mode == template.ModeOffline,
	}
	if mode == template.ModeChroot {
		k["chroot"] = true // services enabled but never started: not the booted result
	}
	return hashJSON(k), nil
}

// GeneraliseKey is the key of the generalised disk built on parent, in
// the offline helper (ModeOffline) or a chroot on the build host
// (ModeChroot).
func GeneraliseKey(parent string, g template.Generalise, mode template.Mode) string {
	k := map[string]any{"v": Version, "parent": parent, "generalise": g.On(), "keep_logs": g.KeepLogs, "fstrim": g.Trim(), "commands": g.Commands, "helper": offlinehelper.Version}
	if mode == template.ModeChroot {
		k["chroot"] = true
	}
	return hashJSON(k)
}

func hashJSON(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:16])
}

// hashInput hashes a local file or directory tree: names, modes, symlink
// targets and contents (not times, not its absolute location).
func hashInput(p string) (string, error) {
	h := sha256.New()
	root := filepath.Clean(p)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%o\x00", rel, info.Mode())
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(path)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "->%s\x00", t)
		case d.Type().IsRegular():
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return filepath.Base(root) + ":" + hex.EncodeToString(h.Sum(nil)), nil
}
