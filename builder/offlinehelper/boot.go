package offlinehelper

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Booting: the initramfs side (API file systems, drivers, finding and
// mounting the root, ecs.boot=switch).

// mountAPI mounts /proc, /sys and /dev in the initramfs.
func mountAPI() error {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := syscall.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("mount %s: %v", m.dst, err)
		}
	}
	return nil
}

// kernelArgs are the kernel's command line arguments (mounting /proc if
// needed).
func kernelArgs() []string {
	data, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		os.MkdirAll("/proc", 0o755)
		syscall.Mount("proc", "/proc", "proc", 0, "")
		data, _ = os.ReadFile("/proc/cmdline")
	}
	return strings.Fields(string(data))
}

// switchBoot does what an initramfs does for a directly booted build VM:
// loads the virtio and ext4 drivers, mounts the root= file system (read-only
// unless rw is given, as the image's own initramfs would), moves /dev,
// /proc and /sys into it, makes it the root and executes its init (init=,
// default /sbin/init). It returns only on failure.
func switchBoot(logf func(string, ...any)) error {
	if err := mountAPI(); err != nil {
		return err
	}
	spec, init, flags := "", "/sbin/init", uintptr(syscall.MS_RDONLY)
	for _, f := range kernelArgs() {
		switch {
		case strings.HasPrefix(f, "root="):
			spec = strings.TrimPrefix(f, "root=")
		case strings.HasPrefix(f, "init="):
			init = strings.TrimPrefix(f, "init=")
		case f == "rw":
			flags = 0
		case f == "ro":
			flags = syscall.MS_RDONLY
		}
	}
	loadModules(logf)
	dev, err := waitRoot(spec, 60*time.Second)
	if err != nil {
		return err
	}
	os.MkdirAll(helperRoot, 0o755)
	if err := mountRoot(dev, flags); err != nil {
		return err
	}
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if err := syscall.Mount(d, helperRoot+d, "", syscall.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %v", d, err)
		}
	}
	if err := os.Chdir(helperRoot); err != nil {
		return err
	}
	if err := syscall.Mount(".", "/", "", syscall.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move the root: %v", err)
	}
	if err := syscall.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %v", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	return syscall.Exec(init, []string{init}, []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux"})
}

// mountRoot mounts dev on helperRoot as ext4, else xfs or btrfs.
func mountRoot(dev string, flags uintptr) error {
	var mountErr error
	for _, fs := range []string{"ext4", "xfs", "btrfs"} {
		if fs != "ext4" && helperModprobe != "" {
			exec.Command(helperModprobe, "-q", fs).Run()
		}
		if mountErr = syscall.Mount(dev, helperRoot, fs, flags, ""); mountErr == nil {
			return nil
		}
	}
	return fmt.Errorf("mount root %s: %v", dev, mountErr)
}

// loadModules loads the drivers for virtio disks and common root file
// systems: those a slim initrd lists (see initrd.go), else with the
// initrd's modprobe (built-in drivers need nothing).
func loadModules(logf func(string, ...any)) {
	if list, err := os.ReadFile(ModulesList); err == nil {
		for _, m := range strings.Fields(string(list)) {
			if err := finitModule(m); err != nil && !errors.Is(err, syscall.EEXIST) {
				logf("load %s: %v", m, err)
			}
		}
		return
	}
	var modprobe string
	for _, p := range []string{"/sbin/modprobe", "/usr/sbin/modprobe", "/bin/modprobe", "/usr/bin/modprobe"} {
		if _, err := os.Stat(p); err == nil {
			modprobe = p
			break
		}
	}
	if modprobe == "" {
		logf("no modprobe in the initrd; relying on built-in drivers")
		return
	}
	for _, m := range []string{"virtio_pci", "virtio_blk", "ext4"} {
		exec.Command(modprobe, "-q", m).Run()
	}
	helperModprobe = modprobe
}

// finitModule loads the kernel module file p.
func finitModule(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// helperModprobe is the initrd's modprobe (found by loadModules): xfs and
// btrfs are loaded only when ext4 cannot mount the root (btrfs's RAID6
// self-benchmark alone costs seconds under emulation).
var helperModprobe string

// waitRoot finds the block device of spec (UUID=, LABEL=, /dev/...; empty:
// the first partition with a supported file system).
func waitRoot(spec string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if dev := findRoot(spec); dev != "" {
			return dev, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("root device %q not found", spec)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func findRoot(spec string) string {
	if strings.HasPrefix(spec, "PARTUUID=") || strings.HasPrefix(spec, "/dev/disk/by-partuuid/") {
		spec = "" // not in the superblock: the first ext file system
	}
	if strings.HasPrefix(spec, "/dev/") && !strings.HasPrefix(spec, "/dev/disk/") {
		if _, err := os.Stat(spec); err == nil {
			return spec
		}
		return ""
	}
	ents, _ := os.ReadDir("/sys/class/block")
	for _, e := range ents {
		dev := "/dev/" + e.Name()
		uuid, label, ok := probeFS(dev)
		if !ok {
			continue
		}
		switch {
		case spec == "":
			return dev
		case strings.EqualFold(spec, "UUID="+uuid), spec == "/dev/disk/by-uuid/"+uuid:
			return dev
		case spec == "LABEL="+label, spec == "/dev/disk/by-label/"+label:
			return dev
		}
	}
	return ""
}

// probeFS reads an ext2/3/4 superblock: its UUID and label.
func probeFS(dev string) (uuid, label string, ok bool) {
	f, err := os.Open(dev)
	if err != nil {
		return "", "", false
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return "", "", false
	}
	if binary.LittleEndian.Uint16(sb[56:]) != 0xEF53 {
		return "", "", false
	}
	u := sb[104:120]
	uuid = fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	label = string(bytes.TrimRight(sb[120:136], "\x00"))
	return uuid, label, true
}
