package builder

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/testenv"
)

// buildCLI builds cmd/ecs-image as a user's `go build` does where a C
// compiler is found: CGO_ENABLED=1, so dynamically linked against glibc.
func buildCLI(t *testing.T) string {
	t.Helper()
	testenv.Tool(t, "gcc", "a C compiler for cgo: make deps (gcc, libc6-dev)")
	bin := filepath.Join(t.TempDir(), "ecs-image")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/ecs-image")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if interp, _ := elfInterp(f); interp == "" {
		t.Fatal("a CGO_ENABLED=1 build is static here: the test proves nothing")
	}
	return bin
}

// initrdFiles lists the regular files of an uncompressed newc archive.
func initrdFiles(t *testing.T, p string) map[string][]byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	if err := readCpio(&countReader{r: bytes.NewReader(data)}, mapStore(files), func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	return files
}

// TestDynamicCLIAsHelper: a dynamically linked ecs-image (go build with
// cgo) serves as the helper; the slim initrd carries its loader and
// libraries, and the binary runs from the initrd's files alone.
func TestDynamicCLIAsHelper(t *testing.T) {
	bin := buildCLI(t)
	h, err := resolveHelper(bin)
	if err != nil {
		t.Fatalf("the helper refuses a go build binary: %v", err)
	}
	var names []string
	for _, l := range h.Libs {
		names = append(names, l.Name)
	}
	f, _ := elf.Open(bin)
	interp, _ := elfInterp(f)
	f.Close()
	if !slices.Contains(names, strings.TrimPrefix(interp, "/")) || !slices.ContainsFunc(names, func(n string) bool { return filepath.Base(n) == "libc.so.6" }) {
		t.Fatalf("libraries %v lack the interpreter %s or libc.so.6", names, interp)
	}

	dep := "kernel/fs/ext4/ext4.ko:\nkernel/drivers/block/virtio_blk.ko:\nkernel/drivers/virtio/virtio_pci.ko:\n"
	mods := map[string]string{"kernel/fs/ext4/ext4.ko": "e", "kernel/drivers/block/virtio_blk.ko": "b", "kernel/drivers/virtio/virtio_pci.ko": "p"}
	out := filepath.Join(t.TempDir(), "slim.img")
	if err := writeSlimInitrd(out, testInitrd(t, dep, mods), h, true); err != nil {
		t.Fatal(err)
	}
	files := initrdFiles(t, out)
	for _, n := range append(names, offlinehelper.Name) {
		if len(files[n]) == 0 {
			t.Errorf("%s is not in the slim initrd", n)
		}
	}
	// An initrd that cannot be slimmed takes only a static helper.
	r := &offlineRun{Disk: "unused", WorkDir: t.TempDir(), Log: logrus.StandardLogger(),
		Boot: bootFiles{Dir: t.TempDir()}}
	os.WriteFile(filepath.Join(r.Boot.Dir, "initrd.img"), []byte("not a cpio archive"), 0o644)
	if err := r.runWith(context.Background(), h); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("whole-initrd fallback with a dynamic helper: %v", err)
	}

	// Run the helper binary with nothing but the initrd's files as its
	// root, as the kernel would start it (root only: chroot).
	testenv.Root(t, "running the helper chrooted into the initrd's files")
	root := t.TempDir()
	for n, data := range files {
		p := filepath.Join(root, n)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("/" + offlinehelper.Name)
	cmd.Args = []string{"ecs-image", "version"} // not the helper's name: the CLI
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	cmd.Dir = "/"
	got, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(got), "CGO_ENABLED=1") {
		t.Fatalf("the dynamic helper does not run from the initrd: %v\n%s", err, got)
	}
}

// TestResolveHelperStatic: a static binary needs nothing besides; a
// library the loader cannot find is a clear error.
func TestResolveHelperStatic(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h, err := resolveHelper(exe)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := elf.Open(exe)
	interp, _ := elfInterp(f)
	f.Close()
	if interp == "" && len(h.Libs) != 0 {
		t.Errorf("static test binary: libraries %v", h.Libs)
	}
	if p := findLib("libdoes-not-exist.so.9", nil); p != "" {
		t.Errorf("found %s", p)
	}
	if _, err := resolveHelper("/etc/passwd"); err == nil {
		t.Error("a text file accepted as the helper")
	}
}
