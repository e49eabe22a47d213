package builder

// Direct kernel boot of build VMs. Under TCG, SeaBIOS and GRUB reading a
// kernel and a 36 MiB initrd through BIOS disk calls cost 10–25 s of every
// boot, and the VGA console's frame buffer more: a build VM instead boots
// the image's own kernel and initrd with QEMU's -kernel/-initrd. They come
// from the parent stage's boot/ directory (stepBootFiles) or, for the first
// stage, from the base image itself, read without booting it: the image is
// converted to a sparse raw file and its root file system read with
// debugfs (e2fsprogs). When either is impossible the VM boots from its disk
// as before.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/ecs-image/ecs-image/qemu"
)

func (b bootFiles) cmdlinePath() string { return filepath.Join(b.Dir, "cmdline") }

// cmdline is the kernel command line the image booted with (stepBootFiles)
// or its boot loader's default entry names (base images); "" if unknown.
func (b bootFiles) cmdline() string {
	data, _ := os.ReadFile(b.cmdlinePath())
	return strings.TrimSpace(string(data))
}

// buildAppend is the kernel command line of a directly booted build VM:
// the image's own arguments without its consoles (the serial console only:
// no VGA frame buffer to draw under emulation), with root= as recorded and
// without CPU vulnerability mitigations (a throw-away VM running the
// template's own commands; retpolines and barriers cost under emulation),
// and with the root file system read-write from the start: the disk is a
// fresh overlay of a cleanly shut down one, so systemd skips the root fsck
// and with it the wait for udev to announce the root device.
// cloud-init's config and final stages are masked for the build boot only
// (they would set locales, apt sources, NTP, … of a throw-away boot, and
// each costs a Python start under TCG): the init stages create the build
// user, its key, the network configuration and grow the root file system.
func buildAppend(cmdline, root string) string {
	var out []string
	haveRoot := false
	for _, f := range strings.Fields(cmdline) {
		switch {
		case strings.HasPrefix(f, "BOOT_IMAGE="), strings.HasPrefix(f, "initrd="),
			strings.HasPrefix(f, "console="), f == "quiet", f == "splash",
			strings.HasPrefix(f, "systemd.mask="), strings.HasPrefix(f, "mitigations="),
			strings.HasPrefix(f, "rdinit="), strings.HasPrefix(f, "ecs."), strings.Contains(f, "$"),
			f == "ro", f == "rw":
			continue
		case strings.HasPrefix(f, "root="):
			haveRoot = true
		}
		out = append(out, f)
	}
	if !haveRoot && root != "" {
		out = append([]string{"root=" + root}, out...)
	}
	out = append(out, "rw", "console=ttyS0,115200n8", "mitigations=off", "systemd.mask=cloud-config.service", "systemd.mask=cloud-final.service")
	return strings.Join(out, " ")
}

// directBootOK tells whether boot files can boot a build VM directly: a
// kernel, an initrd and a root= argument.
func directBootOK(bf bootFiles) bool {
	return bf.ok() && (bf.root() != "" || strings.Contains(bf.cmdline(), "root="))
}

// extractBaseBootFiles writes the newest kernel of a disk image, its initrd,
// its root= and its boot loader's kernel arguments into dir (the layout of
// a stage's boot/ directory), without booting the image.
func extractBaseBootFiles(ctx context.Context, image, format, work, dir string) error {
	if _, err := exec.LookPath("debugfs"); err != nil {
		return fmt.Errorf("debugfs: %w (install Debian's e2fsprogs package)", err)
	}
	raw := filepath.Join(work, "base.raw")
	defer os.Remove(raw)
	if format == "" {
		format = "qcow2"
	}
	if err := qemu.ConvertRaw(ctx, image, format, raw); err != nil {
		return err
	}
	parts, err := partitions(raw)
	if err != nil {
		return err
	}
	var lastErr error
	for _, p := range parts {
		dev := fmt.Sprintf("%s?offset=%d", raw, p.offset)
		kernel, initrd, err := newestKernel(ctx, dev)
		if err != nil {
			lastErr = err
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, c := range []struct{ src, dst string }{{kernel, "vmlinuz"}, {initrd, "initrd.img"}} {
			if _, err := debugfs(ctx, dev, fmt.Sprintf("dump %q %q", c.src, filepath.Join(dir, c.dst))); err != nil {
				return err
			}
		}
		var src []string
		for _, f := range []string{kernel, initrd} {
			st, err := debugfs(ctx, dev, fmt.Sprintf("stat %q", f))
			if err != nil {
				return err
			}
			src = append(src, fmt.Sprintf("%s %d %d", f, statField(st, "Size:"), statField(st, "mtime:")))
		}
		grub, _ := debugfs(ctx, dev, "cat /boot/grub/grub.cfg")
		args, root := bootConfig(grub, func() string {
			fstab, _ := debugfs(ctx, dev, "cat /etc/fstab")
			return fstab
		})
		if root == "" {
			return errNoRoot
		}
		return bootFiles{Dir: dir}.writeMeta(root, strings.Join(src, "\n"), args)
	}
	return fmt.Errorf("no partition holds /boot/vmlinuz-VERSION with its initrd.img-VERSION (%v)", lastErr)
}

// errNoRoot: neither the boot loader nor fstab names the root file system.
var errNoRoot = errors.New("no root= in /boot/grub/grub.cfg nor a / entry in /etc/fstab")

// bootConfig returns the kernel arguments of GRUB's first linux line and
// the root= among them, else the device of fstab's / entry (fstab is read
// only then).
func bootConfig(grub string, fstab func() string) (args, root string) {
	args = grubArgs(grub)
	if root = argValue(args, "root"); root == "" {
		root = fstabRoot(fstab())
	}
	return args, root
}

// writeMeta writes the root= argument, the kernel's and initrd's source
// ("path size mtime" lines) and the kernel command line into the boot/
// directory, next to vmlinuz and initrd.img.
func (b bootFiles) writeMeta(root, source, cmdline string) error {
	for name, content := range map[string]string{"root": root, "source": source, "cmdline": cmdline} {
		if err := os.WriteFile(filepath.Join(b.Dir, name), []byte(content+"\n"), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// statField is a number of debugfs's stat output: "Size: 123" or
// "mtime: 0x6a466cb2:00000000 -- …" (-1 if missing).
func statField(stat, name string) int64 {
	f := strings.Fields(stat)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == name {
			v, _, _ := strings.Cut(f[i+1], ":")
			if n, err := strconv.ParseInt(v, 0, 64); err == nil {
				return n
			}
		}
	}
	return -1
}

// source identifies the kernel and initrd a boot/ directory holds: their
// guest paths, sizes and modification times, one per line.
func (b bootFiles) source() string {
	data, _ := os.ReadFile(filepath.Join(b.Dir, "source"))
	return strings.TrimSpace(string(data))
}

// debugfs runs one read-only debugfs request against dev.
func debugfs(ctx context.Context, dev, request string) (string, error) {
	cmd := exec.CommandContext(ctx, "debugfs", "-R", request, dev)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("debugfs %s: %v: %s", request, err, strings.TrimSpace(stderr.String()))
	}
	// debugfs reports most failures on stderr with exit status 0.
	for _, l := range strings.Split(stderr.String(), "\n") {
		if l != "" && !strings.HasPrefix(l, "debugfs ") {
			return "", fmt.Errorf("debugfs %s: %s", request, l)
		}
	}
	return out.String(), nil
}

// newestKernel lists /boot of the file system at dev: the newest
// vmlinuz-VERSION with its initrd.img-VERSION.
func newestKernel(ctx context.Context, dev string) (kernel, initrd string, err error) {
	out, err := debugfs(ctx, dev, "ls -p /boot")
	if err != nil {
		return "", "", err
	}
	names := map[string]bool{}
	var versions []string
	for _, l := range strings.Split(out, "\n") {
		// /inode/mode/uid/gid/name/size/
		f := strings.Split(l, "/")
		if len(f) < 7 {
			continue
		}
		names[f[5]] = true
		if v, ok := strings.CutPrefix(f[5], "vmlinuz-"); ok {
			versions = append(versions, v)
		}
	}
	sort.Slice(versions, func(i, j int) bool { return versionLess(versions[i], versions[j]) })
	for i := len(versions) - 1; i >= 0; i-- {
		if names["initrd.img-"+versions[i]] {
			return "/boot/vmlinuz-" + versions[i], "/boot/initrd.img-" + versions[i], nil
		}
	}
	return "", "", errors.New("no /boot/vmlinuz-VERSION with its /boot/initrd.img-VERSION")
}

// versionLess compares kernel versions like `sort -V`: digit runs as
// numbers, everything else as text.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, ra := splitRun(a)
		db, rb := splitRun(b)
		if da != db {
			na, ea := strconv.Atoi(da)
			nb, eb := strconv.Atoi(db)
			if ea == nil && eb == nil {
				return na < nb
			}
			return da < db
		}
		a, b = ra, rb
	}
	return len(a) < len(b)
}

func splitRun(s string) (string, string) {
	digit := s[0] >= '0' && s[0] <= '9'
	i := 1
	for i < len(s) && (s[i] >= '0' && s[i] <= '9') == digit {
		i++
	}
	return s[:i], s[i:]
}

// grubArgs are the kernel arguments of the first `linux` line of a GRUB
// configuration (the default entry of the images ecs-image and the
// distributions build), without the kernel path.
func grubArgs(cfg string) string {
	for _, l := range strings.Split(cfg, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "linux" || f[0] == "linuxefi" || f[0] == "linux16") {
			return strings.Join(f[2:], " ")
		}
	}
	return ""
}

// argValue is the value of the last name= argument of a command line.
func argValue(cmdline, name string) string {
	v := ""
	for _, f := range strings.Fields(cmdline) {
		if s, ok := strings.CutPrefix(f, name+"="); ok {
			v = s
		}
	}
	return v
}

// fstabRoot is the device of the / entry of an fstab.
func fstabRoot(fstab string) string {
	for _, l := range strings.Split(fstab, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && f[1] == "/" {
			return f[0]
		}
	}
	return ""
}

// partition is a partition of a raw disk image.
type partition struct {
	offset, size int64
}

// partitions reads the MBR or GPT partition table of a raw disk image,
// largest partition first; a disk without a table is one file system.
func partitions(raw string) ([]partition, error) {
	f, err := os.Open(raw)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, 1024)
	if _, err := io.ReadFull(f, head); err != nil {
		return nil, fmt.Errorf("%s: %w", raw, err)
	}
	var parts []partition
	if head[510] != 0x55 || head[511] != 0xaa {
		return []partition{{0, 0}}, nil
	}
	gpt := false
	for i := 0; i < 4; i++ {
		e := head[446+16*i : 446+16*(i+1)]
		typ := e[4]
		start := int64(binary.LittleEndian.Uint32(e[8:]))
		n := int64(binary.LittleEndian.Uint32(e[12:]))
		switch typ {
		case 0:
		case 0xee:
			gpt = true
		case 0x05, 0x0f, 0x85, 0x82, 0xef: // extended, swap, EFI system
		default:
			parts = append(parts, partition{start * 512, n * 512})
		}
	}
	if gpt {
		parts = nil
		hdr := head[512:]
		if string(hdr[:8]) != "EFI PART" {
			return nil, fmt.Errorf("%s: protective MBR without a GPT header", raw)
		}
		lba := int64(binary.LittleEndian.Uint64(hdr[72:]))
		count := int(binary.LittleEndian.Uint32(hdr[80:]))
		size := int(binary.LittleEndian.Uint32(hdr[84:]))
		if count > 1024 || size < 128 || size > 4096 {
			return nil, fmt.Errorf("%s: implausible GPT (%d entries of %d bytes)", raw, count, size)
		}
		table := make([]byte, count*size)
		if _, err := f.ReadAt(table, lba*512); err != nil {
			return nil, fmt.Errorf("%s: GPT entries: %w", raw, err)
		}
		for i := 0; i < count; i++ {
			e := table[i*size : (i+1)*size]
			if bytes.Equal(e[:16], make([]byte, 16)) {
				continue
			}
			first := int64(binary.LittleEndian.Uint64(e[32:]))
			last := int64(binary.LittleEndian.Uint64(e[40:]))
			parts = append(parts, partition{first * 512, (last - first + 1) * 512})
		}
	}
	sort.SliceStable(parts, func(i, j int) bool { return parts[i].size > parts[j].size })
	return parts, nil
}
