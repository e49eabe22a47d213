package images

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

// A bootstrap interrupted mid-way can leave bind mounts in the chroot;
// removing the build directory must never delete through them.
func TestSafeRemoveAllUnmountsFirst(t *testing.T) {
	testenv.Root(t, "mounting")
	hostDir := t.TempDir()
	sentinel := filepath.Join(hostDir, "precious")
	if err := os.WriteFile(sentinel, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := t.TempDir()
	dev := filepath.Join(build, "root", "dev")
	proc := filepath.Join(build, "root", "proc")
	for _, d := range []string{dev, proc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("mount", "--bind", hostDir, dev).CombinedOutput(); err != nil {
		t.Fatalf("bind mount: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", dev).Run()
	if out, err := exec.Command("mount", "-t", "tmpfs", "tmpfs", proc).CombinedOutput(); err != nil {
		t.Fatalf("tmpfs mount: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", proc).Run()
	if m, _ := mountsUnder(build); len(m) != 2 {
		t.Fatalf("mountsUnder: %v", m)
	}
	if err := safeRemoveAll(build); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(build); !os.IsNotExist(err) {
		t.Errorf("build dir still there: %v", err)
	}
	if b, err := os.ReadFile(sentinel); err != nil || string(b) != "keep me" {
		t.Fatalf("file behind the bind mount was touched: %v", err)
	}
}

func TestExport(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", src, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	b := &Base{Path: src, Format: "qcow2"}
	for name, want := range map[string]string{"copy.qcow2": "qcow2", "copy.raw": "raw"} {
		got, err := Export(context.Background(), b, filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got != filepath.Join(dir, name) {
			t.Errorf("path %s", got)
		}
		out, err := exec.Command("qemu-img", "info", "--output=json", got).Output()
		if err != nil || !strings.Contains(string(out), `"format": "`+want+`"`) {
			t.Errorf("%s: %v %s", name, err, out)
		}
	}
	if _, err := Export(context.Background(), b, filepath.Join(dir, "missing", "x.qcow2")); err == nil {
		t.Error("export into a missing directory succeeded")
	}
	// An output that is a fifo (or a device node) is not replaced (issue 13).
	fifo := filepath.Join(dir, "fifo.raw")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	var ie *InputError
	if _, err := Export(context.Background(), b, fifo); !errors.As(err, &ie) || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("export to a fifo: %v", err)
	}
	if st, err := os.Lstat(fifo); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		t.Error("the fifo was replaced")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}
}
