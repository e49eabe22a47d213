package grainstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/testenv"
	"github.com/ecs-image/ecs-image/vmdkstream"
)

const mib = 1 << 20

// disk is 16 MiB of partly compressible data (holes between) from seed.
func disk(seed uint64) []byte {
	b := make([]byte, 16*mib)
	rng := rand.New(rand.NewPCG(seed, 7))
	for _, r := range [][2]int{{0, 3 * mib}, {6 * mib, 2 * mib}, {15 * mib, mib}} {
		for i := r[0]; i < r[0]+r[1]; i++ {
			if i%4 == 0 {
				b[i] = byte(rng.Uint32())
			} else {
				b[i] = byte(i >> 10)
			}
		}
	}
	return b
}

// write writes content as a VMDK at p (fixed CID, level 1) with the store's
// source, if any, and commits it to s; it returns the counts.
func write(t *testing.T, s *Store, p string, content []byte, reuse bool) vmdkstream.Stats {
	t.Helper()
	var st vmdkstream.Stats
	rec := &Recorder{}
	opts := vmdkstream.Options{CID: 0x42, Level: 1, Record: rec.Record, Stats: &st}
	if reuse {
		src, err := s.Source()
		if err != nil {
			t.Logf("no reuse: %v", err)
		}
		if src != nil {
			defer src.Close()
			opts.Reuse = src
		}
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := vmdkstream.Write(context.Background(), f, bytes.NewReader(content), int64(len(content)), nil, opts); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(p, rec); err != nil {
		t.Fatal(err)
	}
	return st
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(testenv.Tool(t, "qemu-img", "apt-get install qemu-utils"), args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// checkVMDK: qemu-img check passes and the VMDK holds content.
func checkVMDK(t *testing.T, p string, content []byte) {
	t.Helper()
	raw := p + ".raw"
	if err := os.WriteFile(raw, content, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuImg(t, "check", "-f", "vmdk", p)
	qemuImg(t, "compare", "-f", "raw", "-F", "vmdk", raw, p)
}

// TestStoreReusesTheLastVMDK: the second write of a changed disk copies
// every unchanged grain from the store, hard-linked from the first output,
// and is byte for byte the write without the store; the store then holds
// the second.
func TestStoreReusesTheLastVMDK(t *testing.T) {
	dir, stores := t.TempDir(), filepath.Join(t.TempDir(), "stores")
	s := New(stores, "app-dev vmdk-16777216 level 1")
	if src, err := s.Source(); src != nil || err != nil {
		t.Fatalf("empty store: Source = %v, %v", src, err)
	}
	a := disk(1)
	first := filepath.Join(dir, "a.vmdk")
	if st := write(t, s, first, a, true); st.Reused != 0 || st.Grains == 0 {
		t.Fatalf("first write: %+v", st)
	}
	if same(t, first, s.VMDK()) != true {
		t.Fatal("the store's VMDK is not a hard link of the output")
	}

	b := append([]byte(nil), a...)
	copy(b[6*mib:], bytes.Repeat([]byte("changed "), 1024)) // one grain
	second := filepath.Join(dir, "b.vmdk")
	st := write(t, s, second, b, true)
	if st.Reused != st.Grains-1 || st.Rejected != 0 {
		t.Fatalf("second write: %+v, want all but one grain reused", st)
	}
	plain := filepath.Join(dir, "plain.vmdk")
	write(t, New(filepath.Join(dir, "other"), "x"), plain, b, false)
	if !bytes.Equal(read(t, second), read(t, plain)) {
		t.Fatal("the write with reuse differs from the write without")
	}
	checkVMDK(t, second, b)
	if !same(t, second, s.VMDK()) {
		t.Fatal("the store does not hold the second VMDK")
	}

	// The first output gone, the store still serves the second.
	os.Remove(first)
	os.Remove(second)
	if st := write(t, s, filepath.Join(dir, "c.vmdk"), b, true); st.Reused != st.Grains {
		t.Fatalf("third write: %+v, want every grain reused", st)
	}
	if ls, _ := os.ReadDir(stores); len(ls) != 3 {
		t.Fatalf("store directory holds %v, want .vmdk, .idx and .lock", ls)
	}
}

// TestStoreRefusesWhatDoesNotMatch: a changed, truncated or replaced VMDK,
// a damaged or truncated index and another key's index all mean no reuse
// (an *IndexError), and a damaged grain behind an intact identity is
// refused by vmdkstream and deflated: the output is always right.
func TestStoreRefusesWhatDoesNotMatch(t *testing.T) {
	a := disk(2)
	for name, c := range map[string]struct {
		tamper  func(t *testing.T, s *Store)
		field   string // IndexError.Field expected from Source ("": usable)
		refused bool   // the grains come back and are refused
	}{
		"vmdk written": {tamper: func(t *testing.T, s *Store) { appendTo(t, s.VMDK(), []byte{0}) }, field: "identity"},
		"vmdk truncated": {tamper: func(t *testing.T, s *Store) {
			fi, _ := os.Stat(s.VMDK())
			os.Truncate(s.VMDK(), fi.Size()/2)
		}, field: "identity"},
		"vmdk replaced": {tamper: func(t *testing.T, s *Store) {
			data := read(t, s.VMDK())
			fi, _ := os.Stat(s.VMDK())
			os.Remove(s.VMDK())
			os.WriteFile(s.VMDK(), data, 0o644)
			os.Chtimes(s.VMDK(), fi.ModTime(), fi.ModTime())
		}, field: "identity"},
		"index byte":      {tamper: func(t *testing.T, s *Store) { flip(t, s.index(), 100) }, field: "checksum"},
		"index truncated": {tamper: func(t *testing.T, s *Store) { os.Truncate(s.index(), 1000) }, field: "checksum"},
		"index empty":     {tamper: func(t *testing.T, s *Store) { os.Truncate(s.index(), 0) }, field: "magic"},
		"other key": {tamper: func(t *testing.T, s *Store) {
			os.Rename(New(s.dir, "other").index(), s.index())
		}, field: "key"},
		"grain bytes, same identity": {tamper: func(t *testing.T, s *Store) {
			fi, _ := os.Stat(s.VMDK())
			data := read(t, s.VMDK())
			for off := 64 * 1024; off+512 < len(data)-4096; off += 4096 {
				data[off] ^= 0x55 // inside grains' streams, Adler-32 trailers among them
			}
			f, _ := os.OpenFile(s.VMDK(), os.O_WRONLY, 0)
			f.WriteAt(data, 0)
			f.Close()
			os.Chtimes(s.VMDK(), fi.ModTime(), fi.ModTime())
		}, refused: true},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := New(filepath.Join(dir, "stores"), "k")
			write(t, New(s.dir, "other"), filepath.Join(dir, "other.vmdk"), disk(3), false)
			write(t, s, filepath.Join(dir, "a.vmdk"), a, false)
			c.tamper(t, s)
			src, err := s.Source()
			var ie *IndexError
			if c.field != "" {
				if src != nil || !errors.As(err, &ie) || ie.Field != c.field || ie.Path != s.index() {
					t.Fatalf("Source = %v, %v; want an IndexError on %s", src, err, c.field)
				}
			} else if src == nil || err != nil {
				t.Fatalf("Source = %v, %v; want the store", src, err)
			} else {
				src.Close()
			}
			out := filepath.Join(dir, "b.vmdk")
			st := write(t, s, out, a, true)
			if c.refused && (st.Rejected == 0 || st.Reused+st.Rejected != st.Grains) {
				t.Fatalf("%+v: want the damaged grains refused", st)
			}
			if !c.refused && st.Reused != 0 {
				t.Fatalf("%+v: want no grain reused", st)
			}
			checkVMDK(t, out, a)
		})
	}
}

// TestStoreCopiesAcrossFileSystems: a VMDK on another file system than
// the store is copied into it, and served.
func TestStoreCopiesAcrossFileSystems(t *testing.T) {
	other, err := os.MkdirTemp("/dev/shm", "grainstore-test-")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	stores := filepath.Join(t.TempDir(), "stores")
	os.Mkdir(stores, 0o755)
	a, _ := os.Stat(other)
	b, _ := os.Stat(stores)
	if a.Sys().(*syscall.Stat_t).Dev == b.Sys().(*syscall.Stat_t).Dev {
		t.Skip("/dev/shm and the test's directory are one file system")
	}
	s := New(stores, "k")
	content := disk(6)
	out := filepath.Join(other, "a.vmdk")
	write(t, s, out, content, false)
	if same(t, out, s.VMDK()) || !bytes.Equal(read(t, out), read(t, s.VMDK())) {
		t.Fatal("the store's VMDK is not a copy of the output")
	}
	if st := write(t, s, filepath.Join(other, "b.vmdk"), content, true); st.Reused != st.Grains {
		t.Fatalf("%+v: want every grain reused", st)
	}
	if tmps, _ := filepath.Glob(filepath.Join(stores, ".*")); len(tmps) != 0 {
		t.Fatalf("temporary files left: %v", tmps)
	}
}

// TestStoreConcurrentCommits: commits of one store from several writers at
// once leave a store whose index describes its VMDK.
func TestStoreConcurrentCommits(t *testing.T) {
	dir := t.TempDir()
	s := New(filepath.Join(dir, "stores"), "k")
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			s := New(s.dir, "k") // as another build would
			write(t, s, filepath.Join(dir, string(rune('a'+i))+".vmdk"), disk(uint64(10+i)), true)
		})
	}
	wg.Wait()
	src, err := s.Source()
	if err != nil || src == nil {
		t.Fatalf("Source after concurrent commits = %v, %v", src, err)
	}
	src.Close()
	if tmps, _ := filepath.Glob(filepath.Join(s.dir, ".*")); len(tmps) != 0 {
		t.Fatalf("temporary files left: %v", tmps)
	}
}

// TestPruneAndList: List describes the stores; Prune removes those not
// used since the cutoff (and a damaged one's files), keeps the others.
func TestPruneAndList(t *testing.T) {
	dir := t.TempDir()
	stores := filepath.Join(dir, "stores")
	old, recent := New(stores, "old"), New(stores, "recent")
	write(t, old, filepath.Join(dir, "old.vmdk"), disk(4), false)
	write(t, recent, filepath.Join(dir, "recent.vmdk"), disk(5), false)
	past := time.Now().Add(-48 * time.Hour)
	os.Chtimes(old.index(), past, past)
	ls, err := List(stores)
	if err != nil || len(ls) != 2 || ls[0].Key != "recent" || ls[1].Key != "old" || ls[0].Grains == 0 || !ls[0].Shared || ls[0].Size == 0 || ls[0].Err != "" {
		t.Fatalf("List = %+v, %v", ls, err)
	}
	// Used again: not pruned.
	src, _ := recent.Source()
	src.Close()
	removed, err := Prune(stores, time.Now().Add(-time.Hour))
	if err != nil || len(removed) != 1 || removed[0].Key != "old" {
		t.Fatalf("Prune = %+v, %v", removed, err)
	}
	for _, p := range []string{old.VMDK(), old.index(), old.lock()} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed", p)
		}
	}
	if src, err := recent.Source(); src == nil || err != nil {
		t.Fatalf("recent store after prune: %v, %v", src, err)
	} else {
		src.Close()
	}
	if removed, err := Prune(filepath.Join(dir, "none"), time.Now()); removed != nil || err != nil {
		t.Fatalf("Prune of no directory = %v, %v", removed, err)
	}
	if removed, _ := Prune(stores, time.Now().Add(time.Hour)); len(removed) != 1 {
		t.Fatalf("Prune of everything removed %+v", removed)
	}
	if ls, _ := os.ReadDir(stores); len(ls) != 0 {
		t.Fatalf("left after pruning everything: %v", ls)
	}
}

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func same(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return os.SameFile(fa, fb)
}

func appendTo(t *testing.T, p string, b []byte) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(b)
	f.Close()
}

func flip(t *testing.T, p string, off int64) {
	b := read(t, p)
	b[off] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
