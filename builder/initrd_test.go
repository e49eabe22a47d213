package builder

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// testInitrd writes an initrd like initramfs-tools makes: an uncompressed
// early archive, then a gzip-compressed main archive with modules.
func testInitrd(t *testing.T, dep string, mods map[string]string) string {
	t.Helper()
	var early bytes.Buffer
	w := newCpio(&early)
	w.entry("kernel", 0o040755, nil)
	w.file("kernel/x86/microcode/AuthenticAMD.bin", 0o644, []byte("ucode"))
	w.trailer()
	var main bytes.Buffer
	w = newCpio(&main)
	dir := "usr/lib/modules/6.1.0-9-amd64"
	w.file("init", 0o755, []byte("#!/bin/sh\n"))
	for name, content := range mods {
		w.file(dir+"/"+name, 0o644, []byte(content))
	}
	w.file(dir+"/modules.dep", 0o644, []byte(dep))
	w.file(dir+"/modules.builtin", 0o644, []byte("kernel/lib/crc16.ko\n"))
	w.trailer()
	var out bytes.Buffer
	out.Write(early.Bytes())
	out.Write(make([]byte, 512)) // padding between the archives
	zw := gzip.NewWriter(&out)
	zw.Write(main.Bytes())
	zw.Close()
	p := filepath.Join(t.TempDir(), "initrd.img")
	if err := os.WriteFile(p, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSlimInitrd(t *testing.T) {
	dep := "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n" +
		"kernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n" +
		"kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n" +
		"kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n" +
		"kernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_ring.ko:\n" +
		"kernel/arch/x86/crypto/crc32c-intel.ko:\nkernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko\n"
	mods := map[string]string{}
	for _, l := range strings.Split(dep, "\n") {
		if m, _, ok := strings.Cut(l, ":"); ok {
			mods[m] = "ELF " + m
		}
	}
	base := testInitrd(t, dep, mods)
	exe := filepath.Join(t.TempDir(), "helper")
	os.WriteFile(exe, []byte("helper binary"), 0o755)
	out := filepath.Join(t.TempDir(), "slim.img")
	if err := writeSlimInitrd(out, base, &helperProgram{Exe: exe}, false); err != nil {
		t.Fatal(err)
	}
	files, err := readInitrd(out, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	d := "usr/lib/modules/6.1.0-9-amd64/"
	if files.has(d + "kernel/drivers/net/virtio_net.ko") {
		t.Error("virtio_net is not needed but was copied")
	}
	if got, err := files.get(d + "kernel/fs/ext4/ext4.ko"); string(got) != "ELF kernel/fs/ext4/ext4.ko" {
		t.Errorf("ext4.ko: %q (%v)", got, err)
	}
	// The list and the helper are not modules: read the archive raw.
	data, _ := os.ReadFile(out)
	list := ""
	if i := bytes.Index(data, []byte("ecs-modules\x00")); i >= 0 {
		rest := data[i+len("ecs-modules\x00"):]
		rest = bytes.TrimLeft(rest, "\x00")
		list = string(rest[:bytes.IndexByte(rest, 0)])
	}
	order := strings.Fields(list)
	want := []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_pci.ko",
		"kernel/drivers/block/virtio_blk.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko", "kernel/arch/x86/crypto/crc32c-intel.ko"}
	if len(order) != len(want) {
		t.Fatalf("load order %q, want %q", order, want)
	}
	for i := range want {
		if order[i] != "/"+d+want[i] {
			t.Errorf("load order[%d] = %s, want %s", i, order[i], want[i])
		}
	}
	if !bytes.Contains(data, []byte("ecs-offline-helper\x00")) || !bytes.Contains(data, []byte("helper binary")) || !bytes.Contains(data, []byte("dev/console\x00")) {
		t.Error("helper or /dev/console missing")
	}

	// A module the VMs need is missing: the caller must fall back.
	delete(mods, "kernel/fs/ext4/ext4.ko")
	if err := writeSlimInitrd(out, testInitrd(t, dep, mods), &helperProgram{Exe: exe}, false); err == nil || !strings.Contains(err.Error(), "ext4.ko is not in the initrd") {
		t.Errorf("missing module: %v", err)
	}
}

// TestSlimInitrdReal reads a real initrd (ECS_IMAGE_TEST_INITRD, e.g. a
// cached stage's boot/initrd.img) and checks the drivers are found.
func TestSlimInitrdReal(t *testing.T) {
	p := os.Getenv("ECS_IMAGE_TEST_INITRD")
	if p == "" {
		t.Skip("ECS_IMAGE_TEST_INITRD not set")
	}
	files, err := readInitrd(p, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	order, err := moduleOrder(files, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d modules read (%d MiB, spilled), load order %v", len(files.spans), files.size>>20, order)
	for _, m := range []string{"virtio_blk", "ext4"} {
		found := false
		for _, o := range order {
			found = found || moduleName(o) == m
		}
		if !found {
			t.Errorf("%s not in the load order", m)
		}
	}
	// The slim initrd holds the modules as plain ELF objects.
	exe := filepath.Join(t.TempDir(), "helper")
	os.WriteFile(exe, []byte("helper binary"), 0o755)
	out := filepath.Join(t.TempDir(), "slim.img")
	if err := writeSlimInitrd(out, p, &helperProgram{Exe: exe}, true); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(out)
	slim := map[string][]byte{}
	if err := readCpio(&countReader{r: bytes.NewReader(data)}, mapStore(slim), func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	n := 0
	for name, b := range slim {
		if strings.HasSuffix(name, ".ko") {
			n++
			if !bytes.HasPrefix(b, []byte("\x7fELF")) {
				t.Errorf("%s is not an ELF object", name)
			}
		}
	}
	t.Logf("slim initrd: %d KiB, %d modules", len(data)>>10, n)
}

// TestSlimInitrdCompressedModules: Debian 13 compresses modules (.ko.xz);
// the slim initrd stores them decompressed, listed without the suffix.
func TestSlimInitrdCompressedModules(t *testing.T) {
	xzed := func(s string) string {
		var b bytes.Buffer
		w, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(s))
		w.Close()
		return b.String()
	}
	zsted := func(s string) string {
		enc, _ := zstd.NewWriter(nil)
		return string(enc.EncodeAll([]byte(s), nil))
	}
	dep := "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.zst\nkernel/fs/jbd2/jbd2.ko.zst:\n" +
		"kernel/drivers/block/virtio_blk.ko.xz:\nkernel/drivers/virtio/virtio_pci.ko.xz:\n"
	mods := map[string]string{
		"kernel/fs/ext4/ext4.ko.xz":              xzed("ELF ext4"),
		"kernel/fs/jbd2/jbd2.ko.zst":             zsted("ELF jbd2"),
		"kernel/drivers/block/virtio_blk.ko.xz":  xzed("ELF virtio_blk"),
		"kernel/drivers/virtio/virtio_pci.ko.xz": xzed("ELF virtio_pci"),
	}
	exe := filepath.Join(t.TempDir(), "helper")
	os.WriteFile(exe, []byte("helper binary"), 0o755)
	out := filepath.Join(t.TempDir(), "slim.img")
	if err := writeSlimInitrd(out, testInitrd(t, dep, mods), &helperProgram{Exe: exe}, false); !errors.Is(err, errUnsupportedInitrd) {
		t.Errorf("compressed modules not allowed: %v", err)
	}
	if err := writeSlimInitrd(out, testInitrd(t, dep, mods), &helperProgram{Exe: exe}, true); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(out)
	files := map[string][]byte{}
	if err := readCpio(&countReader{r: bytes.NewReader(data)}, mapStore(files), func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	d := "usr/lib/modules/6.1.0-9-amd64/"
	for name, want := range map[string]string{"kernel/fs/ext4/ext4.ko": "ELF ext4", "kernel/fs/jbd2/jbd2.ko": "ELF jbd2", "kernel/drivers/block/virtio_blk.ko": "ELF virtio_blk"} {
		if got := string(files[d+name]); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	list := string(files["ecs-modules"])
	if strings.Contains(list, ".xz") || strings.Contains(list, ".zst") || !strings.Contains(list, "/"+d+"kernel/fs/jbd2/jbd2.ko\n/"+d+"kernel/fs/ext4/ext4.ko\n") {
		t.Errorf("module list:\n%s", list)
	}

	// A corrupt compressed module: the caller falls back.
	mods["kernel/fs/ext4/ext4.ko.xz"] = "not xz"
	if err := writeSlimInitrd(out, testInitrd(t, dep, mods), &helperProgram{Exe: exe}, true); !errors.Is(err, errUnsupportedInitrd) {
		t.Errorf("corrupt module: %v", err)
	}
}

// TestInitrdsStreamTheHelper: the helper binary (ecs-image, tens of MiB) and
// a whole base initrd are copied into the initrd file through small
// buffers, not read into memory (issue 19: a build's peak memory was
// ≈225 MiB, most of it ecs-image and the initrd held twice over). The
// process allocates well under the helper's size, and the copy is exact.
func TestInitrdsStreamTheHelper(t *testing.T) {
	dep := "kernel/fs/ext4/ext4.ko:\nkernel/drivers/block/virtio_blk.ko:\nkernel/drivers/virtio/virtio_pci.ko:\n"
	mods := map[string]string{}
	for _, l := range strings.Split(dep, "\n") {
		if m, _, ok := strings.Cut(l, ":"); ok {
			mods[m] = "ELF " + m
		}
	}
	base := testInitrd(t, dep, mods)
	const size = 48 << 20
	exe := filepath.Join(t.TempDir(), "helper")
	f, err := os.Create(exe)
	if err != nil {
		t.Fatal(err)
	}
	tail := []byte("the helper's last bytes")
	if _, err := f.WriteAt(tail, size-int64(len(tail))); err != nil { // sparse: cheap to write
		t.Fatal(err)
	}
	f.Close()
	for _, tc := range []struct {
		name  string
		write func(out string) error
	}{
		{"slim", func(out string) error { return writeSlimInitrd(out, base, &helperProgram{Exe: exe}, false) }},
		{"whole initrd + helper", func(out string) error { return writeHelperInitrd(out, exe, &helperProgram{Exe: exe}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "initrd.img")
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			if err := tc.write(out); err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&after)
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/4 {
				t.Errorf("allocated %d MiB writing an initrd with a %d MiB helper: the helper is held in memory", alloc>>20, size>>20)
			}
			data, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(data, []byte("ecs-offline-helper\x00"))
			if i < 0 {
				t.Fatal("no helper in the initrd")
			}
			start := (i + len("ecs-offline-helper\x00") + 3) &^ 3
			if got := data[start : start+size]; !bytes.HasSuffix(got, tail) || bytes.IndexByte(got[:size-len(tail)], 1) >= 0 {
				t.Error("the helper's content differs in the initrd")
			}
			if !bytes.HasSuffix(data, []byte("TRAILER!!!\x00\x00\x00\x00")) || len(data)%4 != 0 {
				t.Errorf("the archive does not end with its trailer, 4-byte aligned (%d bytes)", len(data))
			}
		})
	}
}

// TestInitrdWriteFailureLeavesNothing: an initrd that cannot be written
// whole (the helper is gone) is not left half-written.
func TestInitrdWriteFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "initrd")
	os.WriteFile(base, []byte("BASE"), 0o644)
	out := filepath.Join(dir, "out")
	err := writeHelperInitrd(out, base, &helperProgram{Exe: filepath.Join(dir, "missing")})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("err = %v, want one naming the missing helper", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a half-written initrd is left: %v", err)
	}
}

// TestReadInitrdSpillsModules: the modules of a distribution initrd (Debian
// 12's generic kernel: ≈750, 110 MiB) are not held in memory while the
// dozen the slim initrd needs are picked: they go to an unlinked file in
// the given directory, which leaves nothing behind.
func TestReadInitrdSpillsModules(t *testing.T) {
	const big = 32 << 20
	dep := "kernel/fs/ext4/ext4.ko:\nkernel/drivers/block/virtio_blk.ko:\nkernel/drivers/virtio/virtio_pci.ko:\nkernel/drivers/gpu/huge.ko:\n"
	mods := map[string]string{"kernel/fs/ext4/ext4.ko": "e", "kernel/drivers/block/virtio_blk.ko": "b", "kernel/drivers/virtio/virtio_pci.ko": "p",
		"kernel/drivers/gpu/huge.ko": strings.Repeat("\x7fELF big module ", big/16)}
	base := testInitrd(t, dep, mods)
	spill := t.TempDir()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	files, err := readInitrd(base, spill)
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > big/4 {
		t.Errorf("reading an initrd with a %d MiB module allocated %d MiB: the modules are held in memory", big>>20, alloc>>20)
	}
	d := "usr/lib/modules/6.1.0-9-amd64/"
	for name, want := range mods {
		if got, err := files.get(d + name); string(got) != want {
			t.Errorf("%s: %d bytes read back (%v), want %d", name, len(got), err, len(want))
		}
	}
	if _, err := files.get(d + "kernel/none.ko"); err == nil {
		t.Error("a module not in the initrd was returned")
	}
	if ents, _ := os.ReadDir(spill); len(ents) != 0 {
		t.Errorf("the spill file is visible in %s: %v", spill, ents)
	}
}
