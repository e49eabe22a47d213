package builder

// Chroot stages: the stage's provisioners run natively on the build host,
// chrooted into the stage's disk, instead of in an emulated VM — the way
// debootstrap, mmdebstrap, mkosi and Packer's amazon-chroot builder
// install packages. Under TCG this turns minutes of emulated dpkg into
// seconds. The disk stays a qcow2 overlay: qemu-storage-daemon exports it
// as a raw file over FUSE (writes land in the overlay as qcow2 clusters),
// the root partition is loop-mounted inside a private mount and UTS
// namespace held by one process, and every command enters that namespace
// with nsenter. If ecs-image dies, the holder sees its stdin close, exits,
// and the kernel drops the namespace with all its mounts.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/childproc"
	"github.com/ecs-image/ecs-image/communicator"
)

// chrootTools are the host programs a chroot stage needs.
var chrootTools = []string{"qemu-storage-daemon", "unshare", "nsenter", "chroot", "mount", "umount", "losetup", "sfdisk", "e2fsck", "resize2fs", "debugfs"}

// ChrootUsable tells whether chroot stages can run on this host: as root,
// with FUSE and loop devices, on x86-64 (the helper's architecture too).
func ChrootUsable() error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root (mounting the disk needs root)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			return fmt.Errorf("%s is missing", dev)
		}
	}
	for _, t := range chrootTools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found (Debian packages qemu-system-common, util-linux, fdisk, e2fsprogs)", t)
		}
	}
	return nil
}

// chrootSession is a stage disk mounted for chroot commands.
type chrootSession struct {
	export string // the disk as a raw file (FUSE export)
	root   string // mount point of the root file system
	log    logrus.FieldLogger

	qsd     *exec.Cmd
	qsdDone chan struct{}
	qsdErr  bytes.Buffer
	holder  *exec.Cmd
	hold    io.WriteCloser // the holder's stdin; closing it ends the namespace
	pid     string
	closed  bool
	// detachable: the export may outlive ecs-image (keep, --on-error).
	detachable bool
}

// openChroot exports disk (a qcow2) and mounts its root file system in a
// new mount namespace; the root partition and its file system are grown to
// the end of the disk first (as cloud-init's growpart does at a booted
// build's first boot). dir is the stage's work directory.
// With detachable, keep can leave it mounted when ecs-image exits.
func openChroot(ctx context.Context, disk, dir string, log logrus.FieldLogger, detachable bool) (*chrootSession, error) {
	s := &chrootSession{export: filepath.Join(dir, "export.raw"), root: filepath.Join(dir, "root"), log: log, detachable: detachable}
	if err := os.MkdirAll(s.root, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(s.export, nil, 0o600); err != nil {
		return nil, err
	}
	if err := s.startExport(ctx, disk); err != nil {
		s.close()
		return nil, err
	}
	part, err := s.rootPartition(ctx)
	if err != nil {
		s.close()
		return nil, err
	}
	part, grew, err := s.grow(ctx, part)
	if err != nil {
		s.close()
		return nil, err
	}
	if err := s.mount(ctx, part, grew); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// startExport runs qemu-storage-daemon with a writable FUSE export of disk
// on s.export and waits until the FUSE mount is there.
func (s *chrootSession) startExport(ctx context.Context, disk string) error {
	s.qsd = exec.Command("qemu-storage-daemon",
		"--blockdev", "driver=file,filename="+qemuOptEscape(disk)+",node-name=file,cache.direct=off",
		"--blockdev", "driver=qcow2,file=file,node-name=disk,discard=unmap",
		"--export", "type=fuse,id=export,node-name=disk,mountpoint="+qemuOptEscape(s.export)+",writable=on")
	s.qsd.Stdout, s.qsd.Stderr = &s.qsdErr, &s.qsdErr
	// Killed with ecs-image, so no FUSE mount outlives the build; unless
	// the session may be kept (--on-error), when its output goes to a file.
	s.qsd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	sig := syscall.SIGTERM
	if s.detachable {
		sig = 0
		f, err := os.OpenFile(filepath.Join(filepath.Dir(s.export), "qemu-storage-daemon.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		s.qsd.Stdout, s.qsd.Stderr = f, f
	}
	wait, err := childproc.Start(s.qsd, sig)
	if err != nil {
		return fmt.Errorf("qemu-storage-daemon: %w", err)
	}
	s.qsdDone = make(chan struct{})
	go func() { wait(); close(s.qsdDone) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if fi, err := os.Stat(s.export); err == nil && fi.Size() > 0 && isFUSE(s.export) {
			return nil
		}
		select {
		case <-s.qsdDone:
			return fmt.Errorf("qemu-storage-daemon exited: %s", strings.TrimSpace(s.qsdErr.String()))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu-storage-daemon: the FUSE export did not appear in 30 s: %s", strings.TrimSpace(s.qsdErr.String()))
		}
	}
}

// isFUSE tells whether path is the root of a FUSE mount.
func isFUSE(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && st.Type == 0x65735546 // FUSE_SUPER_MAGIC
}

// qemuOptEscape doubles commas, QEMU's option-value escape.
func qemuOptEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// rootPartition finds the partition holding the root file system: the
// largest ext2/3/4 file system with an /etc and a /usr.
func (s *chrootSession) rootPartition(ctx context.Context) (partition, error) {
	parts, err := partitions(s.export)
	if err != nil {
		return partition{}, err
	}
	for _, p := range parts {
		dev := fmt.Sprintf("%s?offset=%d", s.export, p.offset)
		if _, err := debugfs(ctx, dev, "stat /etc"); err != nil {
			continue
		}
		if _, err := debugfs(ctx, dev, "stat /usr"); err != nil {
			continue
		}
		if p.size == 0 {
			fi, err := os.Stat(s.export)
			if err != nil {
				return partition{}, err
			}
			p.size = fi.Size() - p.offset
		}
		return p, nil
	}
	return partition{}, errors.New("no ext4 root file system found on the disk (chroot stages need an ext2/3/4 root)")
}

// sfdiskTable is the part of `sfdisk --json` we read.
type sfdiskTable struct {
	PartitionTable struct {
		Label      string `json:"label"`
		SectorSize int64  `json:"sectorsize"`
		LastLBA    int64  `json:"lastlba"`
		Partitions []struct {
			Node  string `json:"node"`
			Start int64  `json:"start"`
			Size  int64  `json:"size"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

// grow extends the root partition to the end of the disk when it is the
// last one and more than 1 MiB would be gained; the file system is grown
// before it is mounted. It returns the (possibly new) partition and whether it grew.
func (s *chrootSession) grow(ctx context.Context, p partition) (partition, bool, error) {
	if p.offset == 0 {
		return p, false, nil // no partition table: the file system is the disk
	}
	out, err := exec.CommandContext(ctx, "sfdisk", "--json", s.export).Output()
	if err != nil {
		return p, false, fmt.Errorf("sfdisk --json: %w", err)
	}
	var t sfdiskTable
	if err := json.Unmarshal(out, &t); err != nil {
		return p, false, fmt.Errorf("sfdisk --json: %w", err)
	}
	pt := t.PartitionTable
	if pt.SectorSize == 0 {
		pt.SectorSize = 512
	}
	num, last := 0, true
	for i, q := range pt.Partitions {
		if q.Start*pt.SectorSize == p.offset {
			num = i + 1
			if n := strings.TrimLeft(strings.TrimPrefix(q.Node, s.export), "p"); n != "" {
				if v, err := strconv.Atoi(n); err == nil {
					num = v
				}
			}
		} else if q.Start*pt.SectorSize > p.offset {
			last = false
		}
	}
	fi, err := os.Stat(s.export)
	if err != nil {
		return p, false, err
	}
	end := fi.Size()
	if pt.Label == "gpt" {
		end -= 33 * pt.SectorSize // the backup GPT
	}
	if num == 0 || !last || end-(p.offset+p.size) < 1<<20 {
		return p, false, nil
	}
	run := func(stdin string, args ...string) error {
		cmd := exec.CommandContext(ctx, "sfdisk", append([]string{"--no-reread", "--no-tell-kernel", "-q"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("sfdisk %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if pt.Label == "gpt" {
		if err := run("", "--relocate", "gpt-bak-std", s.export); err != nil {
			return p, false, err
		}
	}
	if err := run(", +\n", "-N", strconv.Itoa(num), s.export); err != nil {
		return p, false, err
	}
	parts, err := partitions(s.export)
	if err != nil {
		return p, false, err
	}
	for _, q := range parts {
		if q.offset == p.offset {
			s.log.Infof("root partition %d grown from %d to %d MiB", num, p.size>>20, q.size>>20)
			return q, q.size > p.size, nil
		}
	}
	return p, false, fmt.Errorf("partition at offset %d gone after growing it", p.offset)
}

// holderScript mounts the root file system and the API file systems in
// the holder's private namespace, then waits for its stdin to close.
const holderScript = `set -eu
root=$1 export=$2 offset=$3 size=$4 grow=$5
dev=$(losetup --find --show --offset "$offset" --sizelimit "$size" "$export")
if [ "$grow" = 1 ]; then
  # Offline: an online resize needs CAP_SYS_RESOURCE, which containers lack.
  e2fsck -f -p "$dev" >&2 || [ $? -le 1 ]
  resize2fs "$dev" >&2
fi
mount "$dev" "$root"
# Detaching a mounted loop device frees it with its last unmount.
losetup -d "$dev"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mkdir -p "$root/run/lock"
host=$(cat "$root/etc/hostname" 2>/dev/null | head -n 1)
hostname "${host:-localhost}"
echo ready
exec cat >/dev/null
`

// chrootPrepare runs in the chroot before the provisioners: services do
// not start (policy-rc.d, as mmdebstrap does), and the host's resolver
// serves apt. chrootRestore undoes both.
const chrootPrepare = `set -e
if [ -e /usr/sbin/policy-rc.d ] || [ -L /usr/sbin/policy-rc.d ]; then mv /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.ecs-image; fi
printf '#!/bin/sh\n# ecs-image chroot stage: no service starts\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
if [ -e /etc/resolv.conf ] || [ -L /etc/resolv.conf ]; then mv /etc/resolv.conf /etc/resolv.conf.ecs-image; fi
cat >/etc/resolv.conf
`

const chrootRestore = `set -e
rm -f /usr/sbin/policy-rc.d /etc/resolv.conf
if [ -e /usr/sbin/policy-rc.d.ecs-image ] || [ -L /usr/sbin/policy-rc.d.ecs-image ]; then mv /usr/sbin/policy-rc.d.ecs-image /usr/sbin/policy-rc.d; fi
if [ -e /etc/resolv.conf.ecs-image ] || [ -L /etc/resolv.conf.ecs-image ]; then mv /etc/resolv.conf.ecs-image /etc/resolv.conf; fi
`

// mount starts the holder and prepares the chroot.
func (s *chrootSession) mount(ctx context.Context, p partition, grew bool) error {
	grow := "0"
	if grew {
		grow = "1"
	}
	s.holder = exec.Command("unshare", "--mount", "--uts", "--propagation", "private", "--",
		"/bin/sh", "-c", holderScript, "ecs-image-chroot", s.root, s.export,
		strconv.FormatInt(p.offset, 10), strconv.FormatInt(p.size, 10), grow)
	var stderr bytes.Buffer
	s.holder.Stderr = &stderr
	s.holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := s.holder.StdinPipe()
	if err != nil {
		return err
	}
	s.hold = stdin
	stdout, err := s.holder.StdoutPipe()
	if err != nil {
		return err
	}
	if err := s.holder.Start(); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	s.pid = strconv.Itoa(s.holder.Process.Pid)
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			s.holder.Wait()
			return fmt.Errorf("mount the disk: %s", strings.TrimSpace(stderr.String()))
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("the host's resolver configuration: %w", err)
	}
	return s.Run(ctx, chrootPrepare, bytes.NewReader(resolv), func(l string) { s.log.Info(l) })
}

// chrootPath is the command search path inside the chroot.
const chrootPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Run runs a shell command line as root in the chroot (provisioners.Guest):
// the lines of stdout and stderr go to out; a non-zero exit is an error.
func (s *chrootSession) Run(ctx context.Context, command string, stdin io.Reader, out func(string)) error {
	cmd := s.command(ctx, command)
	cmd.Stdin = stdin
	lines := communicator.NewLineWriter(out)
	cmd.Stdout, cmd.Stderr = lines, lines
	err := cmd.Run()
	lines.Flush()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("command exited with status %d", ee.ExitCode())
		}
		return err
	}
	return nil
}

// Output runs command in the chroot and returns its standard output.
func (s *chrootSession) Output(ctx context.Context, command string) ([]byte, error) {
	cmd := s.command(ctx, command)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %v: %s", command, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func (s *chrootSession) command(ctx context.Context, command string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", "--target", s.pid, "--mount", "--uts", "--",
		"chroot", s.root, "/usr/bin/env", "-i", "PATH="+chrootPath, "HOME=/root", "USER=root", "LOGNAME=root",
		"SHELL=/bin/sh", "TERM=dumb", "LANG=C.UTF-8", "/bin/sh", "-c", command)
	// Cancelling kills the whole process group (apt, dpkg, maintainer
	// scripts), not only nsenter.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// killStrays kills processes left running inside the chroot (a daemon a
// maintainer script started despite policy-rc.d), which would keep the
// file system busy.
func (s *chrootSession) killStrays() {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if r, err := os.Readlink(filepath.Join("/proc", e.Name(), "root")); err == nil && (r == s.root || strings.HasPrefix(r, s.root+"/")) {
			s.log.Warnf("killing process %d left running in the chroot", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// finish undoes chrootPrepare, unmounts everything and stops the export,
// so that every write is in the qcow2 overlay.
func (s *chrootSession) finish(ctx context.Context) error {
	if err := s.Run(ctx, chrootRestore, nil, func(l string) { s.log.Info(l) }); err != nil {
		s.close()
		return fmt.Errorf("restore policy-rc.d and resolv.conf: %w", err)
	}
	s.killStrays()
	// umount flushes the file system through the loop device into the
	// export; the loop device is released with its last mount.
	um := exec.CommandContext(ctx, "nsenter", "--target", s.pid, "--mount", "--", "umount", "--recursive", s.root)
	if out, err := um.CombinedOutput(); err != nil {
		s.close()
		return fmt.Errorf("unmount the disk: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return s.close()
}

// close ends the namespace (dropping any mounts left) and stops the export.
func (s *chrootSession) close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.holder != nil && s.holder.Process != nil {
		s.killStrays()
		s.hold.Close()
		done := make(chan struct{})
		go func() { s.holder.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-s.holder.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if s.qsd != nil && s.qsd.Process != nil {
		s.qsd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.qsdDone:
		case <-time.After(30 * time.Second):
			s.qsd.Process.Kill()
			<-s.qsdDone
			return errors.New("qemu-storage-daemon did not stop in 30 s")
		}
		// A lazily detached FUSE mount may linger on the export file.
		syscall.Unmount(s.export, syscall.MNT_DETACH)
		// It flushes the overlay when it quits on SIGTERM: anything but a
		// clean exit may have lost qcow2 metadata.
		if st := s.qsd.ProcessState; st != nil && !st.Success() {
			return fmt.Errorf("qemu-storage-daemon: %v: %s", st, strings.TrimSpace(s.qsdErr.String()))
		}
	}
	return nil
}

// keptChroot is a chroot session left mounted for inspection.
type keptChroot struct {
	Keeper int    // a process in the mount namespace: nsenter --target it
	Export int    // qemu-storage-daemon
	Root   string // the root file system, inside the namespace
	Dir    string // the stage's work directory
}

// keep leaves the chroot mounted after ecs-image exits (a session opened
// detachable): a process that only sleeps joins the mount namespace and
// holds it when the holder goes with ecs-image, and the export keeps
// running. Nothing is undone (policy-rc.d and the host's resolv.conf stay,
// as during the stage).
func (s *chrootSession) keep() (*keptChroot, error) {
	if !s.detachable || s.closed || s.holder == nil || s.qsd == nil || s.qsd.Process == nil {
		return nil, errors.New("the chroot is not open, or was not opened to be kept")
	}
	keeper := exec.Command("nsenter", "--target", s.pid, "--mount", "--uts", "--", "sleep", "infinity")
	keeper.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := keeper.Start(); err != nil {
		return nil, fmt.Errorf("nsenter: %w", err)
	}
	k := &keptChroot{Keeper: keeper.Process.Pid, Export: s.qsd.Process.Pid, Root: s.root, Dir: filepath.Dir(s.export)}
	keeper.Process.Release()
	// The keeper is in the namespace once it runs sleep.
	for i := 0; i < 100; i++ {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", k.Keeper)); err == nil && strings.HasSuffix(exe, "/sleep") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.closed = true // close must not undo it
	return k, nil
}

// hostPath is where the host reaches path of the chroot: through the
// holder's view of its mount namespace. Only for files that are not
// symbolic links (an absolute link would resolve outside the chroot).
func (s *chrootSession) hostPath(path string) string {
	return filepath.Join("/proc", s.pid, "root", s.root, path)
}
