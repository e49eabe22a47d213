package builder

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

func TestBuildAppend(t *testing.T) {
	for _, c := range []struct{ cmdline, root, want string }{
		{"BOOT_IMAGE=/vmlinuz root=UUID=abc ro console=tty0 console=ttyS0,115200n8 net.ifnames=0", "UUID=abc",
			"root=UUID=abc net.ifnames=0 rw console=ttyS0,115200n8 mitigations=off systemd.mask=cloud-config.service systemd.mask=cloud-final.service"},
		// Idempotent: a recorded direct-boot command line gives itself.
		{"rdinit=/ecs-offline-helper ecs.boot=switch root=UUID=abc net.ifnames=0 rw console=ttyS0,115200n8 mitigations=off systemd.mask=cloud-config.service systemd.mask=cloud-final.service", "",
			"root=UUID=abc net.ifnames=0 rw console=ttyS0,115200n8 mitigations=off systemd.mask=cloud-config.service systemd.mask=cloud-final.service"},
		// Unknown command line: root= and ro from the recorded root.
		{"", "/dev/vda1", "root=/dev/vda1 rw console=ttyS0,115200n8 mitigations=off systemd.mask=cloud-config.service systemd.mask=cloud-final.service"},
		// GRUB variables cannot be expanded: dropped.
		{"root=PARTUUID=x ro $vt_handoff quiet splash", "", "root=PARTUUID=x rw console=ttyS0,115200n8 mitigations=off systemd.mask=cloud-config.service systemd.mask=cloud-final.service"},
	} {
		if got := buildAppend(c.cmdline, c.root); got != c.want {
			t.Errorf("buildAppend(%q, %q)\n got %q\nwant %q", c.cmdline, c.root, got, c.want)
		}
	}
}

func TestGrubArgsFstabVersions(t *testing.T) {
	cfg := "set timeout=0\nmenuentry 'Debian' {\n\tlinux /boot/vmlinuz-6.1.0-28-cloud-amd64 root=PARTUUID=p1 ro console=ttyS0\n\tinitrd /boot/initrd.img\n}\nmenuentry 'old' {\n\tlinux /vmlinuz.old root=/dev/sda1\n}\n"
	if got := grubArgs(cfg); got != "root=PARTUUID=p1 ro console=ttyS0" {
		t.Errorf("grubArgs: %q", got)
	}
	if got := argValue(grubArgs(cfg), "root"); got != "PARTUUID=p1" {
		t.Errorf("argValue: %q", got)
	}
	if got := fstabRoot("# / comment\nUUID=u1 /boot ext4 defaults 0 2\nUUID=u2\t/\text4\terrors=remount-ro 0 1\n"); got != "UUID=u2" {
		t.Errorf("fstabRoot: %q", got)
	}
	for _, c := range [][2]string{{"6.1.0-9-amd64", "6.1.0-10-amd64"}, {"5.10.0-28-amd64", "6.1.0-1-amd64"}, {"6.1.0-10", "6.1.0-10-cloud"}} {
		if !versionLess(c[0], c[1]) || versionLess(c[1], c[0]) {
			t.Errorf("versionLess(%s, %s) is wrong", c[0], c[1])
		}
	}
}

func TestPartitionsGPT(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gpt.raw")
	disk := make([]byte, 64*1024)
	disk[446+4] = 0xee
	disk[510], disk[511] = 0x55, 0xaa
	hdr := disk[512:]
	copy(hdr, "EFI PART")
	binary.LittleEndian.PutUint64(hdr[72:], 2)   // entries at LBA 2
	binary.LittleEndian.PutUint32(hdr[80:], 4)   // 4 entries
	binary.LittleEndian.PutUint32(hdr[84:], 128) // of 128 bytes
	entry := func(i int, first, last uint64) {
		e := disk[1024+128*i:]
		e[0] = 1 // a type GUID
		binary.LittleEndian.PutUint64(e[32:], first)
		binary.LittleEndian.PutUint64(e[40:], last)
	}
	entry(0, 2048, 4095)  // 1 MiB (ESP-sized)
	entry(2, 4096, 24575) // 10 MiB root
	if err := os.WriteFile(p, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	parts, err := partitions(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 2 || parts[0] != (partition{4096 * 512, 20480 * 512}) || parts[1] != (partition{2048 * 512, 2048 * 512}) {
		t.Errorf("partitions: %+v", parts)
	}
}

// TestExtractBaseBootFiles builds a real partitioned qcow2 disk with an
// ext4 root (mkfs.ext4 -d, sfdisk, qemu-img) and reads its kernel back.
func TestExtractBaseBootFiles(t *testing.T) {
	testenv.Tools(t, "mkfs.ext4", "sfdisk", "qemu-img", "debugfs")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	files := map[string]string{
		"boot/vmlinuz-6.1.0-9-amd64":     "old kernel",
		"boot/initrd.img-6.1.0-9-amd64":  "old initrd",
		"boot/vmlinuz-6.1.0-10-amd64":    "new kernel",
		"boot/initrd.img-6.1.0-10-amd64": "new initrd",
		"boot/vmlinuz-6.2.0-1-amd64":     "kernel without initrd",
		"boot/grub/grub.cfg":             "menuentry 'x' {\n  linux /vmlinuz root=UUID=1234 ro console=tty0 net.ifnames=0\n}\n",
		"etc/fstab":                      "UUID=1234 / ext4 defaults 0 1\n",
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fs := filepath.Join(dir, "fs.raw")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run("mkfs.ext4", "-q", "-F", "-d", root, fs, "16M")
	raw := filepath.Join(dir, "disk.raw")
	run("truncate", "-s", "18M", raw)
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw)
	cmd.Stdin = strings.NewReader("label: dos\nstart=2048, size=32768, type=83\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	run("dd", "if="+fs, "of="+raw, "bs=1M", "seek=1", "conv=notrunc", "status=none")
	img := filepath.Join(dir, "disk.qcow2")
	run("qemu-img", "convert", "-O", "qcow2", raw, img)

	out := filepath.Join(dir, "boot")
	if err := extractBaseBootFiles(context.Background(), img, "qcow2", dir, out); err != nil {
		t.Fatal(err)
	}
	bf := bootFiles{Dir: out}
	for p, want := range map[string]string{bf.kernel(): "new kernel", bf.initrd(): "new initrd"} {
		if got, _ := os.ReadFile(p); string(got) != want {
			t.Errorf("%s: %q, want %q", p, got, want)
		}
	}
	if bf.root() != "UUID=1234" || bf.cmdline() != "root=UUID=1234 ro console=tty0 net.ifnames=0" || !directBootOK(bf) {
		t.Errorf("root %q, cmdline %q", bf.root(), bf.cmdline())
	}
	if _, err := os.Stat(filepath.Join(dir, "base.raw")); err == nil {
		t.Error("the raw copy was left behind")
	}

	// A disk without a kernel: a clear error.
	os.RemoveAll(filepath.Join(root, "boot"))
	run("mkfs.ext4", "-q", "-F", "-d", root, fs, "16M")
	run("qemu-img", "convert", "-O", "qcow2", fs, img)
	if err := extractBaseBootFiles(context.Background(), img, "qcow2", dir, filepath.Join(dir, "boot2")); err == nil || !strings.Contains(err.Error(), "vmlinuz") {
		t.Errorf("no kernel: %v", err)
	}
}
