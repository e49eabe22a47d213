package builder

// The host side of the offline helper: a stage that only places files, and
// the final generalisation, run in a small VM that boots the image's own
// kernel with its own initrd plus one appended cpio archive holding
// ecs-image itself as /ecs-offline-helper (rdinit=), and a second raw disk
// holding the job archive. No full OS boot, no root, no loop or NBD mounts.

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/provisioners"
	"github.com/ecs-image/ecs-image/qemu"
)

// BuildUser is the user the build seed creates and generalisation removes.
const BuildUser = "ecs-build"

// bootFiles are the kernel and initrd of an image, kept in a stage's boot/
// directory, and the root= argument it booted with.
type bootFiles struct {
	Dir string
}

func (b bootFiles) kernel() string { return filepath.Join(b.Dir, "vmlinuz") }
func (b bootFiles) initrd() string { return filepath.Join(b.Dir, "initrd.img") }
func (b bootFiles) root() string {
	data, _ := os.ReadFile(filepath.Join(b.Dir, "root"))
	return strings.TrimSpace(string(data))
}

func (b bootFiles) ok() bool {
	for _, p := range []string{b.kernel(), b.initrd()} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			return false
		}
	}
	return true
}

// generaliseScript is run as root in the image (chroot) by the helper.
func generaliseScript(g template.Generalise) string { return generaliseScriptOn(g, nil) }

// hostGeneralise is how a generalisation in a chroot on the build host
// differs from the helper's: the processes seen are the host's (no pkill
// of the build user's uid), and the AppArmor policy cache is compiled for
// the image kernel's feature set recorded earlier (Features: its tree,
// inside the chroot; "" when unknown: no cache, the first boot compiles).
type hostGeneralise struct {
	Features string
}

// generaliseScriptOn is the generalisation script, run by the helper (host
// nil) or in a chroot on the build host.
func generaliseScriptOn(g template.Generalise, host *hostGeneralise) string {
	var b strings.Builder
	b.WriteString("set -u\nexec 2>&1\n")
	// Progress lines with the guest's uptime, shown in the build log.
	b.WriteString(`step() { echo "` + offlinehelper.MarkerLog + `[$(cut -d' ' -f1 /proc/uptime 2>/dev/null) s] generalise: $*"; }` + "\n")
	if len(g.Commands) > 0 {
		b.WriteString("step commands\n")
	}
	for _, c := range g.Commands {
		b.WriteString("( set -e\n" + c + "\n) || { echo \"generalise command failed: $?\"; exit 1; }\n")
	}
	// On the build host, /proc is the host's: a pkill -u would kill the
	// host's processes of that uid (nothing of the image runs there).
	pkill := `  pkill -KILL -u "$u" 2>/dev/null
`
	if host != nil {
		pkill = ""
	}
	fmt.Fprintf(&b, `step "build user"
u=%s
if id "$u" >/dev/null 2>&1; then
%s  userdel --remove --force "$u" 2>/dev/null || userdel -f "$u"
fi
rm -rf "/home/$u"
rm -f /etc/sudoers.d/90-cloud-init-users
step "cloud-init state"
# What 'cloud-init clean --logs --seed' does, without its Python start
# (seconds under emulation): every instance's state and the seed, its logs,
# and the distribution's clean scripts.
rm -rf /var/lib/cloud/* /var/log/cloud-init.log /var/log/cloud-init-output.log
if [ -d /etc/cloud/clean.d ]; then
  for f in /etc/cloud/clean.d/*; do [ -x "$f" ] && "$f"; done
fi
step "identity, keys, caches"
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
rm -f /etc/ssh/ssh_host_*
rm -f /root/.ssh/authorized_keys /root/.bash_history
rm -rf /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/lib/dpkg/*-old
rm -rf /tmp/* /tmp/.[!.]* /var/tmp/* 2>/dev/null
`, BuildUser, pkill)
	// The AppArmor policy cache for the image's own kernel (this helper
	// boots it): a booted build wrote it when apparmor's postinst loaded
	// the profiles; a chroot build cannot (not the image's kernel), and
	// without it the first boot compiles every profile before
	// sysinit.target (seconds of CPU under emulation).
	switch {
	case host != nil && host.Features != "":
		// The recorded set as the kernel's (the compile features stay
		// parser.conf's pin, as at boot; --features-file would set both).
		fmt.Fprintf(&b, `if [ -x /sbin/apparmor_parser ] && [ -d /etc/apparmor.d ]; then
  step "apparmor policy cache"
  if /sbin/apparmor_parser --help 2>&1 | grep -q -e --kernel-features; then
    /sbin/apparmor_parser --kernel-features %s --skip-kernel-load --write-cache --quiet -- /etc/apparmor.d || echo "apparmor_parser failed: the first boot compiles the profiles"
  else
    echo "apparmor_parser has no --kernel-features: the first boot compiles the profiles"
  fi
fi
`, shellQuote(host.Features))
	case host != nil:
		b.WriteString(`if [ -x /sbin/apparmor_parser ] && [ -d /etc/apparmor.d ]; then
  echo "the image kernel's AppArmor features are unknown: no policy cache, the first boot compiles the profiles"
fi
`)
	default:
		b.WriteString(`if [ -x /sbin/apparmor_parser ] && [ -d /etc/apparmor.d ]; then
  mkdir -p /sys/kernel/security
  [ -d /sys/kernel/security/apparmor ] || mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
  if [ -d /sys/kernel/security/apparmor/features ]; then
    step "apparmor policy cache"
    /sbin/apparmor_parser --skip-kernel-load --write-cache --quiet -- /etc/apparmor.d || echo "apparmor_parser failed: the first boot compiles the profiles"
  fi
fi
`)
	}
	// What systemd's ConditionNeedsUpdate units would do at the first boot
	// because /usr changed (ldconfig, the journal's message catalog), done
	// now and marked done as systemd-update-done.service marks it.
	b.WriteString(`if [ -d /usr ] && [ -d /lib/systemd ]; then
  step "first-boot updates"
  ldconfig 2>/dev/null || true
  journalctl --update-catalog 2>/dev/null || true
  ns=$(stat -c %.9Y /usr | tr -d .)
  for d in /etc /var; do
    printf '# This file was created by systemd-update-done. Its only\n# purpose is to hold a timestamp of the time this directory\n# was updated. See man:systemd-update-done.service(8).\nTIMESTAMP_NSEC=%s\n' "$ns" >"$d/.updated"
    touch -r /usr "$d/.updated"
  done
fi
`)
	if !g.KeepLogs {
		b.WriteString(`step logs
rm -rf /var/log/journal/* /var/log/installer
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
`)
	}
	b.WriteString("echo generalise done\n")
	return b.String()
}

// helperVM is what a step that boots the offline helper VM needs besides
// its job: the accelerator and the log.
type helperVM struct {
	Accel       qemu.Accel
	AccelForced bool // the template or --accel asked for KVM (no TCG fallback)
	Log         logrus.FieldLogger
}

// helperVMOf is how the build boots the offline helper.
func (b *buildState) helperVMOf() helperVM {
	return helperVM{Accel: b.accel, AccelForced: b.accelForced, Log: b.log}
}

// offlineRun is one run of the helper VM.
type offlineRun struct {
	Disk    string // the qcow2 to change
	Boot    bootFiles
	Job     offlinehelper.Job
	Placers []provisioners.Placer
	WorkDir string
	Accel   qemu.Accel
	// AccelForced keeps KVM even when the helper stalls under it.
	AccelForced bool
	Timeout     time.Duration
	Log         logrus.FieldLogger
	SerialLog   string
	// Packages receives the package list when Job.Packages is set.
	Packages []string
	// Kernel receives the image kernel's drivers when Job.Drivers is set
	// (nil when the helper could not read them: KernelUnknown says why).
	Kernel        *KernelInfo
	KernelUnknown string
	// AppArmor receives the kernel's AppArmor feature set when
	// Job.AppArmorFeatures is set (AppArmorErr: a malformed report).
	AppArmor    aaFeatureSet
	AppArmorErr error
}

// KernelInfo is an image's kernel and which of the drivers of the formats'
// hypervisor table (formats.AllDrivers) it has.
type KernelInfo struct {
	Version string   `json:"version"`
	Asked   []string `json:"asked"`
	Drivers []string `json:"drivers"`
}

// kernelDrivers is k as formats.CheckDrivers reads it.
func (k *KernelInfo) kernelDrivers() *formats.KernelDrivers {
	kd := &formats.KernelDrivers{Version: k.Version, Builtin: map[string]bool{}, Modules: map[string]bool{}}
	for _, d := range k.Drivers {
		kd.Modules[d] = true
	}
	return kd
}

// covers reports whether k was asked about every one of drivers.
func (k *KernelInfo) covers(drivers []string) bool {
	for _, d := range drivers {
		if !slices.Contains(k.Asked, d) {
			return false
		}
	}
	return true
}

// helperBinary returns the running ecs-image as the helper: an x86-64 Go
// executable, static or (a go install / go build with cgo) dynamically
// linked, with the libraries it needs (helperlibs.go).
func helperBinary() (*helperProgram, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return resolveHelper(exe)
}

// helperUsable tells whether offline stages can run in this process.
func helperUsable() error {
	_, err := helperBinary()
	return err
}

// run builds the initrd and the job disk, boots the helper and waits for
// it to power off.
func (r *offlineRun) run(ctx context.Context) error {
	helper, err := helperBinary()
	if err != nil {
		return err
	}
	return r.runWith(ctx, helper)
}

// runWith is run with the given helper program.
func (r *offlineRun) runWith(ctx context.Context, helper *helperProgram) error {
	initrd := filepath.Join(r.WorkDir, "helper-initrd.img")
	if err := writeSlimInitrd(initrd, r.Boot.initrd(), helper, len(helper.Libs) > 0); err != nil {
		if !errors.Is(err, errUnsupportedInitrd) {
			return err
		}
		r.Log.Debugf("no slim initrd (%v): the image's whole initrd boots the helper", err)
		if len(helper.Libs) > 0 {
			// The host's loader and libc would replace the image's in its
			// initramfs, under the image's own tools (modprobe).
			return fmt.Errorf("offline helper: the image's initrd cannot be slimmed (%v), and its whole initrd takes only a static ecs-image: %s is dynamically linked (build it with CGO_ENABLED=0, as make build and the .deb do)", err, helper.Exe)
		}
		if err := writeHelperInitrd(initrd, r.Boot.initrd(), helper); err != nil {
			return err
		}
	}
	defer os.Remove(initrd)
	jobDisk := filepath.Join(r.WorkDir, "job.tar")
	if err := r.writeJob(ctx, jobDisk); err != nil {
		return err
	}
	defer os.Remove(jobDisk)
	if r.SerialLog == "" {
		r.SerialLog = filepath.Join(r.WorkDir, "helper-serial.log")
	}
	appendArgs := "rdinit=/" + offlinehelper.Name + " console=ttyS0,115200 loglevel=4 panic=-1 mitigations=off"
	if root := r.Boot.root(); root != "" {
		appendArgs += " ecs.root=" + root
	}
	cfg := qemu.Config{
		Name: "ecs-offline", Disk: r.Disk, DiskFormat: "qcow2", DiskCache: "unsafe",
		Memory: 1024, CPUs: 1, Accel: r.Accel, AccelForced: r.AccelForced, SerialLog: r.SerialLog,
		ExtraArgs: []string{
			"-kernel", r.Boot.kernel(), "-initrd", initrd, "-append", appendArgs,
			"-drive", "file=" + strings.ReplaceAll(jobDisk, ",", ",,") + ",format=raw,if=virtio,readonly=on",
			"-no-reboot",
		},
	}
	m, err := qemu.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer m.Waiting(r.Log, "the offline helper to finish")()
	timer := time.NewTimer(r.Timeout)
	defer timer.Stop()
	select {
	case <-m.Done():
	case <-ctx.Done():
		m.Kill()
		<-m.Done()
		return ctx.Err()
	case <-timer.C:
		m.Kill()
		<-m.Done()
		return fmt.Errorf("offline helper did not finish within %s\n%s", r.Timeout, serialTail(r.SerialLog, 30))
	}
	return r.parse(m.Err())
}

// parse reads the helper's report from the serial log.
func (r *offlineRun) parse(exitErr error) error {
	f, err := os.Open(r.SerialLog)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	ok, failed := false, ""
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasPrefix(l, offlinehelper.MarkerPackages):
			r.Packages = append(r.Packages, strings.TrimPrefix(l, offlinehelper.MarkerPackages))
		case strings.HasPrefix(l, offlinehelper.MarkerKernel):
			f := strings.Fields(strings.TrimPrefix(l, offlinehelper.MarkerKernel))
			if len(f) > 0 {
				r.Kernel = &KernelInfo{Version: f[0], Asked: r.Job.Drivers, Drivers: f[1:]}
			}
		case strings.HasPrefix(l, offlinehelper.MarkerAAFeature):
			if err := r.AppArmor.addLine(strings.TrimPrefix(l, offlinehelper.MarkerAAFeature)); err != nil && r.AppArmorErr == nil {
				r.AppArmorErr = err
			}
		case strings.HasPrefix(l, offlinehelper.MarkerAANone):
			r.AppArmor.None = cmp.Or(strings.TrimPrefix(l, offlinehelper.MarkerAANone), "no reason given")
		case strings.HasPrefix(l, offlinehelper.MarkerNoKernel):
			r.KernelUnknown = strings.TrimPrefix(l, offlinehelper.MarkerNoKernel)
		case strings.HasPrefix(l, offlinehelper.MarkerLog):
			r.Log.Info("helper: " + strings.TrimPrefix(l, offlinehelper.MarkerLog))
		case strings.HasPrefix(l, offlinehelper.MarkerFailed):
			failed = strings.TrimPrefix(l, offlinehelper.MarkerFailed)
		case l == offlinehelper.MarkerOK:
			ok = true
		}
	}
	switch {
	case failed != "":
		return fmt.Errorf("offline helper failed: %s\n%s", failed, serialTail(r.SerialLog, 30))
	case !ok && exitErr != nil:
		return fmt.Errorf("offline helper: %w", exitErr)
	case !ok:
		return fmt.Errorf("offline helper powered off without reporting success\n%s", serialTail(r.SerialLog, 30))
	}
	return nil
}

// writeJob writes the job archive: the job, then every placer's files.
func (r *offlineRun) writeJob(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	a := provisioners.NewArchive(bw)
	job, _ := json.Marshal(r.Job)
	if err := a.Bytes("/"+offlinehelper.JobEntryName, job, 0o600, provisioners.Owner{User: "0", Group: "0"}); err != nil {
		return err
	}
	for _, p := range r.Placers {
		if err := p.Place(ctx, a); err != nil {
			return fmt.Errorf("%s: %w", p.Type(), err)
		}
	}
	if err := a.Close(); err != nil {
		return err
	}
	// Pad to whole MiB: a virtio disk is made of 512-byte sectors, and the
	// zero blocks end the archive.
	if _, err := bw.Write(make([]byte, 1<<20)); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if rem := fi.Size() % (1 << 20); rem != 0 {
		if err := f.Truncate(fi.Size() + (1 << 20) - rem); err != nil {
			return err
		}
	}
	return f.Close()
}

// writeHelperInitrd writes the image's initrd followed by a cpio archive
// holding the helper as /ecs-offline-helper (the kernel unpacks
// concatenated archives in order, whatever their compression; a later file
// replaces an earlier one of the same path). The caller passes a static
// helper: a dynamic one's loader and libraries would replace the image's.
func writeHelperInitrd(out, baseInitrd string, h *helperProgram) error {
	return writeInitrdFile(out, func(w *cpioWriter) error {
		if err := w.copyFile(baseInitrd); err != nil {
			return err
		}
		w.pad()
		if err := h.write(w); err != nil {
			return err
		}
		w.trailer()
		return w.err
	})
}

// cpioWriter writes the "newc" cpio format the kernel's initramfs reads.
type cpioWriter struct {
	w    io.Writer
	ino  int
	n    int64
	err  error
	dirs map[string]bool // directories written (mkdirs)
}

// mkdirs writes the directory entries of p's parents not yet written.
func (c *cpioWriter) mkdirs(p string) {
	if c.dirs == nil {
		c.dirs = map[string]bool{}
	}
	var parents []string
	for d := path.Dir(p); d != "." && d != "/" && !c.dirs[d]; d = path.Dir(d) {
		parents = append(parents, d)
		c.dirs[d] = true
	}
	for i := len(parents) - 1; i >= 0; i-- {
		c.entry(parents[i], 0o040755, nil)
	}
}

func newCpio(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1000} }

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	var n int
	n, c.err = c.w.Write(b)
	c.n += int64(n)
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	c.node(name, mode, data, 0, 0)
}

// device writes a device node (mode with its type bits).
func (c *cpioWriter) device(name string, mode, major, minor uint32) {
	c.node(name, mode, nil, major, minor)
}

func (c *cpioWriter) node(name string, mode uint32, data []byte, major, minor uint32) {
	c.header(name, mode, int64(len(data)), major, minor)
	c.write(data)
	c.pad()
}

// header writes an entry's header and name; size bytes of data follow.
func (c *cpioWriter) header(name string, mode uint32, size int64, major, minor uint32) {
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, major, minor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
}

func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, 0o100000|perm, data)
}

// fileFrom writes a regular file with the content of the host's file src
// (symlinks followed), copied through a small buffer.
func (c *cpioWriter) fileFrom(name string, perm uint32, src string) error {
	if c.err != nil {
		return c.err
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() > math.MaxUint32 {
		return fmt.Errorf("%s: not a regular file of at most 4 GiB", src)
	}
	c.header(name, 0o100000|perm, fi.Size(), 0, 0)
	if c.err != nil {
		return c.err
	}
	n, err := io.Copy(c.w, io.LimitReader(f, fi.Size()))
	c.n += n
	if err == nil && n != fi.Size() {
		err = fmt.Errorf("%s: changed while read (%d of %d bytes)", src, n, fi.Size())
	}
	if err != nil {
		c.err = err
		return err
	}
	c.pad()
	return c.err
}

// copyFile writes the host's file src as it is (an archive to precede the
// next ones).
func (c *cpioWriter) copyFile(src string) error {
	if c.err != nil {
		return c.err
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(c.w, f)
	c.n += n
	if err != nil {
		c.err = err
	}
	return err
}

func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, nil) }

func serialTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		lines[i] = "  " + strings.TrimRight(l, "\r")
	}
	return "last serial console lines:\n" + strings.Join(lines, "\n")
}

var errNoBootFiles = errors.New("no kernel and initrd recorded for this disk")
