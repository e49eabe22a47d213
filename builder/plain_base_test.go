package builder

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/qemuimg"
)

// testBase writes a 64 MiB qcow2 with 4 MiB of data (compressed with -c
// when compress) and returns it as a resolved base.
func testBase(t *testing.T, dir string, compress bool) *images.Base {
	t.Helper()
	raw := filepath.Join(dir, "raw.img")
	data := make([]byte, 4<<20)
	rand.Read(data[:2<<20]) // half random, half zeros-then-text
	copy(data[3<<20:], "ecs-image plain base test")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(data, 8<<20)
	f.Truncate(64 << 20)
	f.Close()
	img := filepath.Join(dir, "base.qcow2")
	args := []string{"convert", "-f", "raw", "-O", "qcow2"}
	if compress {
		args = append(args, "-c")
	}
	if out, err := exec.Command("qemu-img", append(args, raw, img)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	ctx := context.Background()
	info, err := qemuimg.Inspect(ctx, img, qemuimg.Policy{Formats: []string{"qcow2"}})
	if err != nil {
		t.Fatal(err)
	}
	sum, _, err := atomicfile.SHA256File(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	return &images.Base{Path: img, Format: "qcow2", Digest: "sha256:" + sum, Info: info}
}

func TestPlainBaseCopiesACompressedBaseOnce(t *testing.T) {
	ctx := context.Background()
	dir, cache := t.TempDir(), t.TempDir()
	base := testBase(t, dir, true)
	if n, err := compressedClusters(ctx, base.Path); err != nil || n == 0 {
		t.Fatalf("test base: %d compressed clusters, %v", n, err)
	}
	log := logrus.New()
	p := plainBase(ctx, base, cache, log)
	if p == base.Path || filepath.Dir(p) != filepath.Join(cache, plainBaseDir) {
		t.Fatalf("plainBase = %s, want a copy in %s", p, filepath.Join(cache, plainBaseDir))
	}
	if n, err := compressedClusters(ctx, p); err != nil || n != 0 {
		t.Fatalf("copy: %d compressed clusters, %v", n, err)
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", base.Path, p).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare base copy: %v\n%s", err, out)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("plain-bases holds %d files, want the copy alone", len(ents))
	}

	// Used again as it is, not made again.
	st, _ := os.Stat(p)
	if again := plainBase(ctx, base, cache, log); again != p {
		t.Fatalf("second plainBase = %s, want %s", again, p)
	}
	if st2, _ := os.Stat(p); !os.SameFile(st, st2) {
		t.Error("the copy was made again")
	}

	// A damaged copy is made again.
	if err := os.Truncate(p, 4096); err != nil {
		t.Fatal(err)
	}
	if again := plainBase(ctx, base, cache, log); again != p {
		t.Fatalf("plainBase after damage = %s, want %s", again, p)
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", base.Path, p).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare of the remade copy: %v\n%s", err, out)
	}
}

func TestPlainBaseKeepsAnUncompressedBase(t *testing.T) {
	ctx := context.Background()
	dir, cache := t.TempDir(), t.TempDir()
	base := testBase(t, dir, false)
	if p := plainBase(ctx, base, cache, logrus.New()); p != base.Path {
		t.Errorf("plainBase = %s, want the base itself", p)
	}
	raw := &images.Base{Path: filepath.Join(dir, "raw.img"), Format: "raw", Digest: base.Digest}
	if p := plainBase(ctx, raw, cache, logrus.New()); p != raw.Path {
		t.Errorf("plainBase of a raw base = %s, want the base itself", p)
	}
	if _, err := os.Stat(filepath.Join(cache, plainBaseDir)); err == nil {
		t.Error("a copy was made of a base that needs none")
	}
}

// Prune's companion removes the base copies no cached stage is built on
// (and that are older than the cut-off), and keeps the one in use.
func TestPrunePlainBases(t *testing.T) {
	root := t.TempDir()
	c := &StageCache{Dir: filepath.Join(root, "stages")}
	plain := filepath.Join(root, plainBaseDir)
	os.MkdirAll(plain, 0o755)
	old := time.Now().Add(-48 * time.Hour)
	for _, n := range []string{"used.qcow2", "unused-old.qcow2", "unused-new.qcow2"} {
		writeFile(t, plain, n, "copy")
		if n != "unused-new.qcow2" {
			os.Chtimes(filepath.Join(plain, n), old, old)
		}
	}
	work, err := c.WorkDir()
	if err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(work, "stage")
	os.MkdirAll(d, 0o755)
	writeFile(t, d, "disk.qcow2", "disk")
	if err := c.Commit(d, &StageEntry{Key: "aaaa00000000", Parent: "base:x", Name: "s", Backing: filepath.Join(plain, "used.qcow2")}); err != nil {
		t.Fatal(err)
	}
	removed, freed, err := c.PrunePlainBases(time.Now().Add(-24 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != filepath.Join(plain, "unused-old.qcow2") || freed != 4 {
		t.Errorf("removed %v (%d bytes), want only unused-old.qcow2", removed, freed)
	}
	for _, n := range []string{"used.qcow2", "unused-new.qcow2"} {
		if _, err := os.Stat(filepath.Join(plain, n)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	// Without a plain-bases directory there is nothing to do.
	if r, _, err := (&StageCache{Dir: filepath.Join(t.TempDir(), "stages")}).PrunePlainBases(time.Now()); err != nil || r != nil {
		t.Errorf("no directory: %v %v", r, err)
	}
}
