// Package offlinehelper is the guest side of the builder's offline helper:
// ecs-image itself, started by the kernel as the initramfs's first process
// (rdinit=/ecs-offline-helper) with the image's own kernel and initrd. It
// mounts the image's root file system, unpacks the job archive from the
// job disk, optionally generalises the image in a chroot, and powers the VM
// off. Everything it reports goes to the serial console between markers
// that the host side (package builder) parses. The slim initrd's
// ecs.boot=switch mode only mounts the root and switches to its init.
//
// ecs-image's main calls Main when IsHelper(os.Args).
package offlinehelper

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ecs-image/ecs-image/formats"
)

// Name is the helper's file name in the initramfs; ecs-image runs as
// the helper when started under this name.
const Name = "ecs-offline-helper"

// IsHelper tells whether a process started with args is the helper: its
// name (args[0]) is Name, as the helper VM's initramfs starts it.
// ecs-image's main (and a test binary serving as the helper) then runs
// Main and nothing else.
func IsHelper(args []string) bool {
	return len(args) > 0 && (args[0] == Name || strings.HasSuffix(args[0], "/"+Name))
}

// ModulesList is the slim initrd's list of modules to load, in order (the
// builder writes it).
const ModulesList = "/ecs-modules"

// Version is part of the generalise key; bump it when the helper's
// output changes.
const Version = 4

// Serial console markers of the helper protocol.
const (
	MarkerStart    = "ECS-OFFLINE-START"
	MarkerOK       = "ECS-OFFLINE-OK"
	MarkerFailed   = "ECS-OFFLINE-FAILED: "
	MarkerPackages = "ECS-OFFLINE-PACKAGE "
	MarkerKernel   = "ECS-OFFLINE-KERNEL "
	MarkerNoKernel = "ECS-OFFLINE-KERNEL-UNKNOWN: "
	MarkerLog      = "ECS-OFFLINE: "
	JobEntryName   = ".ecs-job.json"
)

// Job is the first entry of the job archive.
type Job struct {
	// Generalise runs GeneraliseScript in the image (chroot) after
	// unpacking.
	Generalise       bool   `json:"generalise"`
	GeneraliseScript string `json:"generalise_script,omitempty"`
	// Packages prints the image's package list (dpkg-query).
	Packages bool `json:"packages"`
	// Trim discards the file system's free blocks (FITRIM).
	Trim bool `json:"trim"`
	// Drivers asks which of these drivers the image's kernel (the one the
	// helper booted) has, built in or as modules (formats.CheckDrivers).
	Drivers []string `json:"drivers,omitempty"`
}

// Main is the helper's entry point; it never returns normally.
func Main() int {
	con := os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		con = f
	}
	logf := func(format string, args ...any) {
		up, _ := os.ReadFile("/proc/uptime")
		fmt.Fprintf(con, MarkerLog+"[%s s] "+format+"\n", append([]any{strings.Fields(string(up) + " ?")[0]}, args...)...)
	}
	if slices.Contains(kernelArgs(), "ecs.boot=switch") {
		// The slim initrd of a directly booted build VM: mount the root
		// file system and hand over to its init. Returns only on failure.
		err := switchBoot(logf)
		fmt.Fprintf(con, "ecs-image early boot failed: %v\n", err)
		syscall.Sync()
		time.Sleep(time.Second)
		syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
		return 1
	}
	fmt.Fprintln(con, MarkerStart)
	err := helperRun(con, logf)
	if err != nil {
		fmt.Fprintf(con, "%s%s\n", MarkerFailed, strings.ReplaceAll(err.Error(), "\n", " | "))
	} else {
		fmt.Fprintln(con, MarkerOK)
	}
	syscall.Sync()
	if os.Getpid() == 1 {
		time.Sleep(200 * time.Millisecond)
		syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	}
	if err != nil {
		return 1
	}
	return 0
}

const helperRoot = "/root"

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

func helperRun(con io.Writer, logf func(string, ...any)) error {
	if err := mountAPI(); err != nil {
		return err
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	rootSpec := ""
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "ecs.root="); ok {
			rootSpec = v
		}
	}
	logf("helper started")
	loadModules(logf)
	dev, err := waitRoot(rootSpec, 60*time.Second)
	if err != nil {
		return err
	}
	os.MkdirAll(helperRoot, 0o755)
	if err := mountRoot(dev, 0); err != nil {
		return err
	}
	logf("mounted %s", dev)
	job, tr, jobDev, err := openJob()
	if err != nil {
		return err
	}
	defer jobDev.Close()
	n, err := unpackChrooted(tr, helperRoot)
	if err != nil {
		return err
	}
	logf("placed %d entries", n)
	if job.Generalise {
		logf("generalising")
		if err := chrootRun(con, job.GeneraliseScript); err != nil {
			return fmt.Errorf("generalise: %v", err)
		}
		logf("generalised")
	}
	if job.Packages {
		var out bytes.Buffer
		if err := chrootCmd(&out, "/bin/sh", "-c", `dpkg-query -W -f '${Package}\t${Version}\n'`); err != nil {
			logf("dpkg-query: %v", err)
		}
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if l != "" {
				fmt.Fprintf(con, "%s%s\n", MarkerPackages, l)
			}
		}
	}
	if len(job.Drivers) > 0 {
		reportDrivers(con, job.Drivers)
	}
	if job.Trim {
		logf("trimming")
		if n, err := fstrim(helperRoot); err != nil {
			logf("fstrim: %v", err)
		} else {
			logf("trimmed %d MiB", n>>20)
		}
	}
	syscall.Sync()
	logf("unmounting")
	if err := syscall.Unmount(helperRoot, 0); err != nil {
		syscall.Mount("", helperRoot, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, "")
		return fmt.Errorf("unmount root: %v", err)
	}
	return nil
}

// reportDrivers prints which of drivers the running kernel — the image's
// own, which the helper boots — has in the image's /lib/modules.
func reportDrivers(con io.Writer, drivers []string) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		fmt.Fprintf(con, "%suname: %v\n", MarkerNoKernel, err)
		return
	}
	ver := unix.ByteSliceToString(u.Release[:])
	var err error
	for _, dir := range []string{"lib/modules", "usr/lib/modules"} {
		var k *formats.KernelDrivers
		if k, err = formats.ReadKernelDrivers(filepath.Join(helperRoot, dir, ver)); err == nil {
			fmt.Fprintf(con, "%s%s %s\n", MarkerKernel, ver, strings.Join(k.Present(drivers), " "))
			return
		}
	}
	fmt.Fprintf(con, "%s%v\n", MarkerNoKernel, strings.ReplaceAll(err.Error(), helperRoot, ""))
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

// openJob finds the job disk (a raw disk holding a tar archive whose first
// entry is the job) and returns the job and the archive positioned after it.
func openJob() (*Job, *tar.Reader, *os.File, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ents, _ := os.ReadDir("/sys/class/block")
		for _, e := range ents {
			f, err := os.Open("/dev/" + e.Name())
			if err != nil {
				continue
			}
			tr := tar.NewReader(bufio.NewReaderSize(f, 1<<20))
			h, err := tr.Next()
			if err != nil || h.Name != JobEntryName {
				f.Close()
				continue
			}
			var job Job
			if err := json.NewDecoder(tr).Decode(&job); err != nil {
				f.Close()
				return nil, nil, nil, fmt.Errorf("job: %v", err)
			}
			return &job, tr, f, nil
		}
		if time.Now().After(deadline) {
			return nil, nil, nil, errors.New("job disk not found")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// unpackChrooted unpacks the archive inside root as if it were "/": the
// process changes its root directory to root for the unpacking, so that
// absolute symlinks in the image (/app/etc → /data/etc) resolve inside it,
// and returns to the real root afterwards.
func unpackChrooted(tr *tar.Reader, root string) (int, error) {
	real, err := os.Open("/")
	if err != nil {
		return 0, err
	}
	defer real.Close()
	cwd, _ := os.Getwd()
	if err := syscall.Chroot(root); err != nil {
		return 0, fmt.Errorf("chroot %s: %v", root, err)
	}
	n, uerr := func() (int, error) {
		if err := os.Chdir("/"); err != nil {
			return 0, err
		}
		users, groups := readIDs("/")
		return unpack(tr, "/", users, groups)
	}()
	// Back to the real root: fchdir to it, then chroot(".").
	if err := syscall.Fchdir(int(real.Fd())); err != nil {
		return n, fmt.Errorf("leave chroot: %v", err)
	}
	if err := syscall.Chroot("."); err != nil {
		return n, fmt.Errorf("leave chroot: %v", err)
	}
	if cwd != "" {
		os.Chdir(cwd)
	}
	return n, uerr
}

// readIDs reads user and group names from the image's passwd and group.
func readIDs(root string) (users, groups map[string]int) {
	parse := func(p string) map[string]int {
		m := map[string]int{}
		data, _ := os.ReadFile(filepath.Join(root, p))
		for _, l := range strings.Split(string(data), "\n") {
			f := strings.Split(l, ":")
			if len(f) >= 3 {
				if id, err := strconv.Atoi(f[2]); err == nil {
					m[f[0]] = id
				}
			}
		}
		return m
	}
	return parse("etc/passwd"), parse("etc/group")
}

// unpack extracts the archive under root like `tar --same-owner -p
// --keep-directory-symlink`: owners by name (resolved in the image), modes
// as archived; an existing symlink to a directory is kept. Paths may not
// leave root.
func unpack(tr *tar.Reader, root string, users, groups map[string]int) (int, error) {
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("job archive: %v", err)
		}
		name := filepath.Clean("/" + h.Name)
		if name == "/" {
			continue
		}
		dst := filepath.Join(root, name)
		if err := safeParent(root, dst); err != nil {
			return n, err
		}
		uid, gid := h.Uid, h.Gid
		if id, ok := users[h.Uname]; ok && h.Uname != "" {
			uid = id
		} else if h.Uname != "" && h.Uname != "root" {
			return n, fmt.Errorf("%s: no user %q in the image", name, h.Uname)
		}
		if id, ok := groups[h.Gname]; ok && h.Gname != "" {
			gid = id
		} else if h.Gname != "" && h.Gname != "root" {
			return n, fmt.Errorf("%s: no group %q in the image", name, h.Gname)
		}
		mode := os.FileMode(h.Mode & 0o777)
		special := uint32(h.Mode & 0o7000)
		switch h.Typeflag {
		case tar.TypeDir:
			if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
				if lfi, _ := os.Lstat(dst); lfi != nil && lfi.Mode()&os.ModeSymlink != 0 {
					n++
					continue // keep directory symlinks (e.g. /app/etc → /data/etc)
				}
			} else if err := os.MkdirAll(dst, 0o755); err != nil {
				return n, err
			}
			if err := os.Lchown(dst, uid, gid); err != nil {
				return n, err
			}
			if err := syscall.Chmod(dst, uint32(mode)|special); err != nil {
				return n, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return n, err
			}
			tmp := filepath.Join(filepath.Dir(dst), ".ecs-tmp-"+filepath.Base(dst))
			f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return n, err
			}
			_, err = io.Copy(f, tr)
			if err == nil {
				err = f.Chown(uid, gid)
			}
			if err == nil {
				err = syscall.Fchmod(int(f.Fd()), uint32(mode)|special)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(tmp, dst)
			}
			if err != nil {
				os.Remove(tmp)
				return n, fmt.Errorf("%s: %v", name, err)
			}
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return n, err
			}
			os.Remove(dst)
			if err := os.Symlink(h.Linkname, dst); err != nil {
				return n, err
			}
			if err := os.Lchown(dst, uid, gid); err != nil {
				return n, err
			}
		default:
			return n, fmt.Errorf("%s: unsupported archive entry type %q", name, h.Typeflag)
		}
		n++
	}
}

// safeParent refuses a destination whose parent resolves (through symlinks
// in the image) outside root.
func safeParent(root, dst string) error {
	rel, err := filepath.Rel(root, dst)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("%s: outside the image", dst)
	}
	return nil
}

// chrootEnv is the environment of commands run in the image.
var chrootEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"}

func chrootCmd(out io.Writer, name string, args ...string) error {
	binds := []string{"/proc", "/sys", "/dev"}
	for _, b := range binds {
		t := filepath.Join(helperRoot, b)
		os.MkdirAll(t, 0o755)
		if err := syscall.Mount(b, t, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %v", b, err)
		}
	}
	defer func() {
		for i := len(binds) - 1; i >= 0; i-- {
			syscall.Unmount(filepath.Join(helperRoot, binds[i]), syscall.MNT_DETACH)
		}
	}()
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.Env = chrootEnv
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: helperRoot}
	return cmd.Run()
}

func chrootRun(con io.Writer, script string) error {
	return chrootCmd(con, "/bin/sh", "-c", script)
}

// fstrim discards the free blocks of the file system mounted at dir.
func fstrim(dir string) (uint64, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// struct fstrim_range { __u64 start, len, minlen; }
	r := [3]uint64{0, ^uint64(0), 0}
	const fitrim = 0xc0185879
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), fitrim, uintptr(unsafe.Pointer(&r))); e != 0 {
		return 0, e
	}
	return r[1], nil
}
