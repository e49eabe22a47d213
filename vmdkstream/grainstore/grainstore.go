// Package grainstore keeps, for each output, the last stream VMDK that
// package vmdkstream wrote and an index of its grains by the SHA-256 of
// their disk bytes, so that the next write of the same output copies the
// compressed grains it shares with the last one instead of deflating them
// again (vmdkstream.Options.Reuse and Record). Hashing a grain costs a
// tenth of deflating it.
//
// A store is three files in the stores' directory, named by a hash of the
// store's key:
//
//	<name>.vmdk   a hard link to the VMDK (a copy where the VMDK lies on
//	              another file system)
//	<name>.idx    the index: magic, key, the .vmdk's identity (device,
//	              inode, size, modification time), for each grain the
//	              SHA-256 of its disk bytes and its zlib stream's offset,
//	              length and CRC-32C, then the SHA-256 of all that
//	<name>.lock   locked (flock) while a commit replaces the other two,
//	              shared while a reader opens them
//
// Both are replaced by renames, the .vmdk first: an index that does not
// describe the .vmdk beside it (a concurrent commit, an output edited in
// place through the link, a damaged file) means no reuse, never a wrong
// grain; vmdkstream also checks each copied grain's CRC-32C against the
// index, and its zlib header and Adler-32 against the grain.
package grainstore

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/vmdkstream"
)

const (
	magic    = "ECSGRN01"
	entryLen = 32 + 8 + 4 + 4 // SHA-256, offset, length, CRC-32C
	// maxStream bounds a grain's zlib stream: deflate's stored blocks add
	// a few bytes per 64 KiB.
	maxStream = vmdkstream.GrainSize + 1024
)

// Store is the store of one key (e.g. an output's base name, size and
// deflate level) in a directory of stores.
type Store struct {
	dir, key, name string
}

// New returns the store of key in dir; nothing is read or made yet.
func New(dir, key string) *Store {
	s := sha256.Sum256([]byte(key))
	return &Store{dir: dir, key: key, name: hex.EncodeToString(s[:16])}
}

// VMDK is the path of the store's VMDK.
func (s *Store) VMDK() string { return filepath.Join(s.dir, s.name+".vmdk") }

func (s *Store) index() string { return filepath.Join(s.dir, s.name+".idx") }
func (s *Store) lock() string  { return filepath.Join(s.dir, s.name+".lock") }

// IndexError is an index that cannot be used: missing parts, a wrong
// checksum, another key, or a VMDK that is not the one it describes.
type IndexError struct {
	Path  string // the index file
	Field string // what is wrong
	Msg   string
}

func (e *IndexError) Error() string { return fmt.Sprintf("%s: %s: %s", e.Path, e.Field, e.Msg) }

// identity tells whether a file is still the one an index was written for.
type identity struct {
	Dev, Ino    uint64
	Size, Mtime int64
}

func identityOf(fi fs.FileInfo) (identity, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return identity{}, false
	}
	return identity{Dev: uint64(st.Dev), Ino: st.Ino, Size: fi.Size(), Mtime: fi.ModTime().UnixNano()}, true
}

type loc struct {
	off    int64
	n, crc uint32
}

// Source is a store's VMDK opened for reuse: a vmdkstream.Reuse.
type Source struct {
	f      *os.File
	grains map[[32]byte]loc
}

// Source opens the store's last VMDK for reuse. It returns nil and no
// error when the store has none, and an error (an *IndexError for a bad
// or mismatched index) when it cannot be used: either means no reuse.
// A usable store is marked as used (for Prune).
func (s *Store) Source() (*Source, error) {
	unlock, err := s.flock(syscall.LOCK_SH, false)
	if err != nil || unlock == nil {
		return nil, err
	}
	defer unlock()
	data, err := os.ReadFile(s.index())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	key, id, ents, err := parseIndex(s.index(), data)
	if err != nil {
		return nil, err
	}
	if key != s.key {
		return nil, &IndexError{s.index(), "key", fmt.Sprintf("%q, want %q", key, s.key)}
	}
	f, err := os.Open(s.VMDK())
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if got, ok := identityOf(fi); !ok || got != id {
		f.Close()
		return nil, &IndexError{s.index(), "identity", fmt.Sprintf("%s is %+v, the index describes %+v", s.VMDK(), got, id)}
	}
	src := &Source{f: f, grains: make(map[[32]byte]loc, len(ents))}
	for _, e := range ents {
		if e.Off < 0 || e.Len < 7 || e.Len > maxStream || e.Off+int64(e.Len) > id.Size {
			f.Close()
			return nil, &IndexError{s.index(), "grain", fmt.Sprintf("stream [%d, +%d) outside the %d bytes of %s", e.Off, e.Len, id.Size, s.VMDK())}
		}
		src.grains[e.Sum] = loc{e.Off, uint32(e.Len), e.CRC}
	}
	now := time.Now()
	os.Chtimes(s.index(), now, now)
	return src, nil
}

// Len is the number of distinct grains the source holds.
func (src *Source) Len() int { return len(src.grains) }

// Grain appends the zlib stream recorded for sum to dst, with its CRC-32C
// (vmdkstream.Reuse).
func (src *Source) Grain(sum *[32]byte, dst []byte) ([]byte, uint32, bool) {
	l, ok := src.grains[*sum]
	if !ok {
		return dst, 0, false
	}
	n := len(dst)
	dst = slices.Grow(dst, int(l.n))[:n+int(l.n)]
	if m, _ := src.f.ReadAt(dst[n:], l.off); m != int(l.n) {
		return dst[:n], 0, false // the file is shorter than its index says
	}
	return dst, l.crc, true
}

// Close closes the VMDK.
func (src *Source) Close() error { return src.f.Close() }

// Recorder collects the grains of a write (vmdkstream.Options.Record).
type Recorder struct {
	grains []vmdkstream.Grain
}

// Record notes a grain written.
func (r *Recorder) Record(g vmdkstream.Grain) { r.grains = append(r.grains, g) }

// Commit makes vmdk, just written completely with r recording its grains,
// the store's VMDK: hard-linked into the store (copied where that fails),
// then indexed. The index is renamed into place after the VMDK: in
// between, or if the commit fails there, the store is unusable (no
// reuse), never wrong.
func (s *Store) Commit(vmdk string, r *Recorder) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	unlock, err := s.flock(syscall.LOCK_EX, true)
	if err != nil {
		return err
	}
	defer unlock()
	s.removeTemps()
	tmp := filepath.Join(s.dir, "."+s.name+".vmdk.tmp-"+randomSuffix())
	if err := os.Link(vmdk, tmp); err != nil {
		// Another file system (or none with hard links): a copy, not
		// synced (the index and vmdkstream's checks catch a damaged one).
		if err := atomicfile.Copy(vmdk, s.VMDK(), 0o644, atomicfile.TempPattern("."+s.name+".vmdk.tmp-*"), atomicfile.NoSync()); err != nil {
			return err
		}
	} else if err := os.Rename(tmp, s.VMDK()); err != nil {
		os.Remove(tmp)
		return err
	}
	fi, err := os.Stat(s.VMDK()) // under the lock: no other commit replaces it
	if err != nil {
		return err
	}
	id, ok := identityOf(fi)
	if !ok {
		return fmt.Errorf("%s: no inode to record", s.VMDK())
	}
	data := marshalIndex(s.key, id, r.grains)
	// Not synced either: a build does not wait for the disk; after a crash
	// the index's checksum and the VMDK's identity tell what is left.
	return atomicfile.Write(s.index(), data, 0o644, atomicfile.TempPattern("."+s.name+".idx.tmp-*"), atomicfile.NoSync())
}

// flock locks the store's lock file (creating it if create); with create
// false and no lock file, it returns a nil unlock: there is no store. A
// lock file that Prune removed while this waited for it is not the lock
// any more: it is locked again (made anew if create).
func (s *Store) flock(how int, create bool) (unlock func(), err error) {
	flag := os.O_RDONLY
	if create {
		flag = os.O_RDWR | os.O_CREATE
	}
	for {
		f, err := os.OpenFile(s.lock(), flag, 0o644)
		if errors.Is(err, fs.ErrNotExist) && !create {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		for {
			err = syscall.Flock(int(f.Fd()), how)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", s.lock(), err)
		}
		held, err1 := f.Stat()
		now, err2 := os.Stat(s.lock())
		if err1 == nil && err2 == nil && os.SameFile(held, now) {
			return func() { f.Close() }, nil // closing releases the lock
		}
		f.Close()
		if err1 != nil {
			return nil, err1
		}
		if err2 != nil && !errors.Is(err2, fs.ErrNotExist) {
			return nil, err2
		}
	}
}

// removeTemps removes the temporary files of killed commits (under the
// exclusive lock: no commit of this store is running).
func (s *Store) removeTemps() {
	tmps, _ := filepath.Glob(filepath.Join(s.dir, "."+s.name+".*.tmp-*"))
	for _, p := range tmps {
		os.Remove(p)
	}
}

func randomSuffix() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// marshalIndex is the index file of the grains of the VMDK with id.
func marshalIndex(key string, id identity, grains []vmdkstream.Grain) []byte {
	le := binary.LittleEndian
	b := make([]byte, 0, len(magic)+2+len(key)+4*8+4+len(grains)*entryLen+sha256.Size)
	b = append(b, magic...)
	b = le.AppendUint16(b, uint16(len(key)))
	b = append(b, key...)
	b = le.AppendUint64(b, id.Dev)
	b = le.AppendUint64(b, id.Ino)
	b = le.AppendUint64(b, uint64(id.Size))
	b = le.AppendUint64(b, uint64(id.Mtime))
	b = le.AppendUint32(b, uint32(len(grains)))
	for _, g := range grains {
		b = append(b, g.Sum[:]...)
		b = le.AppendUint64(b, uint64(g.Off))
		b = le.AppendUint32(b, uint32(g.Len))
		b = le.AppendUint32(b, g.CRC)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// parseIndex reads an index file (path names it in errors).
func parseIndex(path string, b []byte) (key string, id identity, grains []vmdkstream.Grain, err error) {
	bad := func(field, msg string) error { return &IndexError{path, field, msg} }
	if len(b) < len(magic)+2+sha256.Size || string(b[:len(magic)]) != magic {
		return "", id, nil, bad("magic", fmt.Sprintf("not a grain index (%d bytes)", len(b)))
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return "", id, nil, bad("checksum", "the SHA-256 at its end does not match its content")
	}
	le := binary.LittleEndian
	p := body[len(magic):]
	kn := int(le.Uint16(p))
	if len(p) < 2+kn+4*8+4 {
		return "", id, nil, bad("header", "truncated")
	}
	key, p = string(p[2:2+kn]), p[2+kn:]
	id = identity{Dev: le.Uint64(p), Ino: le.Uint64(p[8:]), Size: int64(le.Uint64(p[16:])), Mtime: int64(le.Uint64(p[24:]))}
	n, p := int(le.Uint32(p[32:])), p[36:]
	if len(p) != n*entryLen {
		return "", id, nil, bad("grains", fmt.Sprintf("%d bytes for %d grains of %d bytes", len(p), n, entryLen))
	}
	grains = make([]vmdkstream.Grain, n)
	for i := range grains {
		e := p[i*entryLen:]
		copy(grains[i].Sum[:], e[:32])
		grains[i].Off = int64(le.Uint64(e[32:]))
		grains[i].Len = int(le.Uint32(e[40:]))
		grains[i].CRC = le.Uint32(e[44:])
	}
	return key, id, grains, nil
}

// Info describes a store, for listings.
type Info struct {
	Key      string
	VMDK     string    // its VMDK
	Size     int64     // the VMDK's size
	Shared   bool      // the VMDK is also linked elsewhere (an output)
	Grains   int       // grains indexed
	LastUsed time.Time // last commit or reuse
	// Err is why the store cannot be used ("" if it can, as far as its
	// index tells).
	Err string
}

// List describes the stores in dir, most recently used first.
func List(dir string) ([]Info, error) {
	idx, err := filepath.Glob(filepath.Join(dir, "*.idx"))
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, p := range idx {
		out = append(out, describe(p))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastUsed.After(out[j].LastUsed) })
	return out, nil
}

func describe(idx string) Info {
	in := Info{VMDK: strings.TrimSuffix(idx, ".idx") + ".vmdk"}
	if fi, err := os.Stat(idx); err == nil {
		in.LastUsed = fi.ModTime()
	}
	if fi, err := os.Stat(in.VMDK); err == nil {
		in.Size = fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			in.Shared = st.Nlink > 1
		}
	}
	data, err := os.ReadFile(idx)
	if err != nil {
		in.Err = err.Error()
		return in
	}
	key, _, grains, err := parseIndex(idx, data)
	in.Key, in.Grains = key, len(grains)
	if err != nil {
		in.Err = err.Error()
	}
	return in
}

// Prune removes the stores in dir not used since before, and files that
// belong to no store (leftovers of killed commits, indexes lost); it
// returns the removed stores.
func Prune(dir string, before time.Time) ([]Info, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []Info
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		s := &Store{dir: dir, name: name}
		unlock, err := s.flock(syscall.LOCK_EX, false)
		if err != nil {
			return removed, err
		}
		if unlock == nil {
			continue
		}
		in := describe(s.index())
		if in.LastUsed.Before(before) {
			s.removeTemps()
			for _, p := range []string{s.index(), s.VMDK(), s.lock()} {
				if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					unlock()
					return removed, err
				}
			}
			removed = append(removed, in)
		}
		unlock()
	}
	return removed, nil
}
