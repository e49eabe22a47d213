package images

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// partitionStart is the first sector of the root partition (1 MiB); GRUB's
// core.img lives in the gap after the MBR.
const partitionStart = 2048

// grubModules are built into core.img: enough to find the root file system
// by UUID and read /boot/grub/grub.cfg and the modules next to it.
var grubModules = []string{"biosdisk", "part_msdos", "ext2", "search", "search_fs_uuid", "configfile", "normal", "echo"}

func (b *builder) bootFiles(ctx context.Context) error {
	libDir := filepath.Join(b.root, "usr/lib/grub/i386-pc")
	if _, err := os.Stat(filepath.Join(libDir, "boot.img")); err != nil {
		return fmt.Errorf("the root file system has no GRUB i386-pc files (package grub-pc-bin): %w", err)
	}
	grubDir := filepath.Join(b.root, "boot/grub")
	if err := os.MkdirAll(filepath.Join(grubDir, "i386-pc"), 0o755); err != nil {
		return err
	}
	mods, _ := filepath.Glob(filepath.Join(libDir, "*"))
	for _, m := range mods {
		if !strings.HasSuffix(m, ".mod") && !strings.HasSuffix(m, ".lst") {
			continue
		}
		if err := atomicfile.Copy(m, filepath.Join(grubDir, "i386-pc", filepath.Base(m)), 0o644); err != nil {
			return err
		}
	}
	cmdline := "root=UUID=" + b.uuid + " ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
	cfg := fmt.Sprintf(`# Written by ecs-image base build. The kernel and initrd are the symlinks
# the kernel packages keep up to date in /.
set timeout=0
set default=0
insmod serial
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod part_msdos
insmod ext2
insmod gzio
search --no-floppy --fs-uuid --set=root %[1]s
menuentry '%[2]s %[3]s' {
	linux /vmlinuz %[4]s
	initrd /initrd.img
}
`, b.uuid, strings.ToUpper(b.r.Distro[:1])+b.r.Distro[1:], b.r.Suite, cmdline)
	if err := os.WriteFile(filepath.Join(grubDir, "grub.cfg"), []byte(cfg), 0o644); err != nil {
		return err
	}
	early := fmt.Sprintf("search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\n", b.uuid)
	if err := os.WriteFile(filepath.Join(b.root, "tmp/ecs-early.cfg"), []byte(early), 0o644); err != nil {
		return err
	}
	// The guest's own grub-mkimage, so core.img matches its modules.
	args := append([]string{b.root, "grub-mkimage", "-O", "i386-pc", "-d", "/usr/lib/grub/i386-pc",
		"-c", "/tmp/ecs-early.cfg", "-p", "/boot/grub", "-o", "/tmp/ecs-core.img"}, grubModules...)
	if err := runCmd(ctx, "chroot", args...); err != nil {
		return err
	}
	for _, f := range []string{"core.img"} {
		if err := os.Rename(filepath.Join(b.root, "tmp/ecs-"+f), filepath.Join(b.tmp, f)); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(b.root, "tmp/ecs-early.cfg"))
	return atomicfile.Copy(filepath.Join(libDir, "boot.img"), filepath.Join(b.tmp, "boot.img"), 0o644)
}

// disk lays out the raw disk: an MBR partition table (sfdisk), an ext4
// file system filled from the root tree (mke2fs -d, at the partition's
// offset, no loop device), GRUB's boot.img in the MBR's code area and
// core.img in the gap before the partition.
func (b *builder) disk(ctx context.Context) error {
	// mke2fs -d would copy whatever is mounted in the tree (/proc, /sys).
	if m, err := mountsUnder(b.root); err != nil {
		return err
	} else if len(m) > 0 {
		return fmt.Errorf("file systems still mounted in the root tree: %s", strings.Join(m, ", "))
	}
	raw := filepath.Join(b.tmp, "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		return err
	}
	if err := f.Truncate(b.r.Size); err != nil {
		f.Close()
		return err
	}
	f.Close()
	table := fmt.Sprintf("label: dos\nunit: sectors\n\nstart=%d, type=83, bootable\n", partitionStart)
	cmd := exec.CommandContext(ctx, "sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw)
	cmd.Stdin = strings.NewReader(table)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sfdisk: %v: %s", err, strings.TrimSpace(string(out)))
	}
	offset := int64(partitionStart) * 512
	blocks := (b.r.Size - offset) / 4096
	if err := runCmd(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root", "-U", b.uuid,
		"-d", b.root, "-E", fmt.Sprintf("offset=%d", offset), raw, strconv.FormatInt(blocks, 10)); err != nil {
		return err
	}
	bootImg, err := os.ReadFile(filepath.Join(b.tmp, "boot.img"))
	if err != nil {
		return err
	}
	core, err := os.ReadFile(filepath.Join(b.tmp, "core.img"))
	if err != nil {
		return err
	}
	if len(bootImg) != 512 {
		return fmt.Errorf("boot.img: %d bytes, want 512", len(bootImg))
	}
	if len(core) > (partitionStart-1)*512 {
		return fmt.Errorf("core.img: %d bytes do not fit before the partition", len(core))
	}
	f, err = os.OpenFile(raw, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// The first 440 bytes only: the partition table and disk signature
	// that sfdisk wrote stay intact. boot.img loads core.img from sector 1.
	if _, err := f.WriteAt(bootImg[:440], 0); err != nil {
		return err
	}
	if _, err := f.WriteAt(core, 512); err != nil {
		return err
	}
	var sig [2]byte
	if _, err := f.ReadAt(sig[:], 510); err == nil && binary.LittleEndian.Uint16(sig[:]) != 0xaa55 {
		return errors.New("MBR boot signature missing after sfdisk")
	}
	return f.Close()
}

func newUUID() (string, error) {
	var u [16]byte
	f, err := os.Open("/dev/urandom")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := io.ReadFull(f, u[:]); err != nil {
		return "", err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}
