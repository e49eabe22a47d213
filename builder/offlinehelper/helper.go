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
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	// AppArmorFeatures prints the running kernel's AppArmor feature set
	// (MarkerAAFeature lines), which the builder keeps to compile the
	// image's policy cache on the build host.
	AppArmorFeatures bool `json:"apparmor_features,omitempty"`
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
	if job.AppArmorFeatures {
		reportAppArmor(con)
	}
	if job.Trim {
		logf("trimming")
		if n, err := Fstrim(helperRoot); err != nil {
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

// Fstrim discards the free blocks of the file system mounted at dir.
func Fstrim(dir string) (uint64, error) {
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
