package boottest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// TestDataDisk: a raw volume (an ext4 file system without a partition
// table) is attached as raw, a self-contained qcow2 as qcow2; a qcow2 with
// a backing file, an empty file and a directory are refused.
func TestDataDisk(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	ctx := context.Background()
	dir := t.TempDir()
	raw := filepath.Join(dir, "ecs-data.raw")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if d, err := dataDisk(ctx, raw); err != nil || d.Format != "raw" || d.File != raw {
		t.Errorf("raw: %+v %v", d, err)
	}
	q := filepath.Join(dir, "vol.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", q, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if d, err := dataDisk(ctx, q); err != nil || d.Format != "qcow2" {
		t.Errorf("qcow2: %+v %v", d, err)
	}
	backed := filepath.Join(dir, "backed.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", backed).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	var ie *qemuimg.ImageError
	if _, err := dataDisk(ctx, backed); !errors.As(err, &ie) || !strings.Contains(err.Error(), "backing") {
		t.Errorf("qcow2 with a backing file: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{empty, dir, filepath.Join(dir, "missing")} {
		if _, err := dataDisk(ctx, p); err == nil {
			t.Errorf("%s: accepted", p)
		}
	}
}

// TestStartRefusesBadDisks: a disk given twice, or one that is refused,
// is bad input (exit 2), reported before QEMU starts.
func TestStartRefusesBadDisks(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	dir := t.TempDir()
	art := filepath.Join(dir, "a.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", art, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	raw := filepath.Join(dir, "v.raw")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, disks := range [][]string{{raw, raw}, {art}, {filepath.Join(dir, "missing")}} {
		v, err := Start(context.Background(), Options{Artifact: art, Disks: disks, Timeout: 1})
		if err == nil {
			v.Close()
			t.Fatalf("disks %q: started", disks)
		}
		if !IsBadInput(err) || !strings.Contains(err.Error(), "disk ") {
			t.Errorf("disks %q: %v, want bad input naming the disk", disks, err)
		}
	}
}
