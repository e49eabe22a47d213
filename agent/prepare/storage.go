package prepare

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/mountinfo"
)

// Storage volumes (manual §2.3): a filesystem labelled ecs-data mounted on
// /data and one labelled ecs-volatile on /volatile, each used only when
// appliance.storage.ignore.<key> is explicitly false.
var storageVolumes = []struct {
	Key, Label, Mount string
}{
	{"data", "ecs-data", "/data"},
	{"volatile", "ecs-volatile", "/volatile"},
}

// Paths used by the storage step.
const (
	Fstab     = "/etc/fstab"
	ByLabel   = "/dev/disk/by-label"
	MountInfo = "/proc/self/mountinfo"
)

// StorageReady is written by the storage step, at every boot (/run), once
// the volumes the env asks for are mounted: dockerd's start waits for it
// where a labelled volume is attached but not mounted yet (WaitStorage).
const StorageReady = "/run/ecs-agent/storage-ready"

// StorageBusy is written by the storage step before it mounts volumes for
// a dockerd whose start is waiting (WaitStorage): the wait then lasts
// until StorageReady, past the mounts, so that docker's data root also
// gets the build's image store before dockerd starts — instead of stopping
// the waiting start and starting dockerd again (seconds under emulation).
const StorageBusy = "/run/ecs-agent/storage-busy"

// fstabOptions keep a missing volume from stopping the boot (the agent
// reports it instead) and bound the wait for the device.
const fstabOptions = "defaults,nofail,x-systemd.device-timeout=30s"

// storageVolume is a volume to mount: the env key, the label, the mount
// point and the device found for the label.
type storageVolume struct {
	Key, Label, Mount, Device string
}

// stepStorage finds the labelled volumes the env asks for, records them in
// a managed /etc/fstab block (LABEL=…, nofail) and mounts them, before the
// layout step creates directories under /data and /volatile. Every volume
// is looked up before anything is written; a missing one fails the step
// naming its label. Volumes no longer asked for leave the block (they are
// not unmounted).
func (a *Agent) stepStorage(ctx context.Context, e *Env) error {
	const step = "prepare-appliance/storage"
	// appliance.storage.setup, .proxy_cache and .grow_root are reported
	// by prepare-env (KeyTable).
	var vols []storageVolume
	var missing []error
	for _, v := range storageVolumes {
		path := "appliance.storage.ignore." + v.Key
		if ignore, ok := e.Doc.Bool(path); !ok || ignore {
			continue
		}
		dev, err := a.findLabel(ctx, v.Label)
		if err != nil {
			missing = append(missing, fmt.Errorf("%s is false, but %w; attach the volume or set %s: true", path, err, path))
			continue
		}
		a.logf("%s: %s: filesystem labelled %s on %s", step, v.Mount, v.Label, dev)
		vols = append(vols, storageVolume{v.Key, v.Label, v.Mount, dev})
	}
	if len(missing) > 0 {
		return errors.Join(missing...)
	}

	mounts := parseMountInfo(a.readOptional(MountInfo))
	for _, v := range vols {
		if src, ok := mounts[v.Mount]; ok && a.realDevice(src) != a.realDevice(v.Device) {
			return fmt.Errorf("%s is mounted from %s, not from the filesystem labelled %s (%s)", v.Mount, src, v.Label, v.Device)
		}
	}
	// The fstab block is for the next boots (systemd's fstab generator).
	// At this boot `mount` reads it and systemd follows the mount as it
	// appears (/proc/self/mountinfo), with no daemon-reload (seconds of
	// CPU under emulation): the services that keep data on the volumes
	// (docker.service, postgresql@.service) have RequiresMountsFor= for
	// them in the image, which orders their stop before the unmount at
	// shutdown either way.
	if _, err := a.writeFstab(vols); err != nil {
		return err
	}
	// dockerd keeps its data under /volatile (daemon.json's data-root) and
	// starts early in the boot. Where a volume was attached at this boot's
	// start, its start waits for this step (ExecStartPre, WaitStorage):
	// StorageBusy then keeps it waiting past the mounts until StorageReady.
	// Where dockerd runs, it is stopped while volumes are mounted, so that
	// it does not go on using the root file system below a mount, and
	// started again afterwards.
	quiet := false
	if slices.ContainsFunc(vols, func(v storageVolume) bool { _, ok := mounts[v.Mount]; return !ok }) {
		if a.dockerWaiting(ctx) {
			if err := a.writeRunFlag(StorageBusy); err != nil {
				return err
			}
			quiet = true
			a.logf("%s: dockerd's start waits for this step (%s)", step, StorageReady)
		} else {
			stopped, err := a.stopDocker(ctx, "before mounting")
			if err != nil {
				return err
			}
			if stopped {
				defer a.startDocker(ctx, step)
			}
			quiet = stopped
		}
	}
	for _, v := range vols {
		if _, ok := mounts[v.Mount]; ok {
			continue
		}
		if err := a.Host.MkdirAll(v.Mount, 0o755); err != nil {
			return err
		}
		if names := dirNames(a.Host.Path(v.Mount)); len(names) > 0 {
			a.logf("%s: warning: %s on the root filesystem is not empty (%s); the mount hides its contents",
				step, v.Mount, strings.Join(names, ", "))
		}
		if _, err := a.Host.Run(ctx, "mount", v.Mount); err != nil {
			// systemd may have mounted it meanwhile (nofail mounts are not
			// waited for at boot).
			if src, ok := parseMountInfo(a.readOptional(MountInfo))[v.Mount]; !ok || a.realDevice(src) != a.realDevice(v.Device) {
				return fmt.Errorf("mounting %s (label %s): %w", v.Mount, v.Label, err)
			}
		}
		if a.Host.IsRealRoot() {
			src, ok := parseMountInfo(a.readOptional(MountInfo))[v.Mount]
			if !ok || a.realDevice(src) != a.realDevice(v.Device) {
				return fmt.Errorf("%s is not mounted from %s (label %s) after mount", v.Mount, v.Device, v.Label)
			}
		}
		a.logf("%s: mounted %s (label %s) on %s", step, v.Device, v.Label, v.Mount)
	}
	// docker's data root, on the volume just mounted or not, gets the
	// build's image store while dockerd is stopped (copied beside the
	// services' start-ups instead, it took twice as long and dockerd
	// started later: docs/e2e.md).
	if err := a.seedDocker(ctx, quiet); err != nil {
		return err
	}
	return a.writeRunFlag(StorageReady)
}

// writeRunFlag writes the flag file p (StorageBusy, StorageReady) and its
// directory under /run.
func (a *Agent) writeRunFlag(p string) error {
	if err := a.Host.MkdirAll(path.Dir(p), 0o755); err != nil {
		return err
	}
	_, err := a.Host.WriteFile(p, []byte("ok\n"), 0o644)
	return err
}

// stopDocker stops dockerd (socket and service) where it is active, for
// why; it returns whether it did (the caller then defers startDocker).
func (a *Agent) stopDocker(ctx context.Context, why string) (bool, error) {
	if !a.dockerActive(ctx) {
		return false, nil
	}
	if err := a.systemctl(ctx, "stop", "docker.socket", "docker.service"); err != nil {
		return false, fmt.Errorf("stopping dockerd %s: %w", why, err)
	}
	return true, nil
}

// startDocker brings docker's socket back after the storage step stopped
// it and starts dockerd without waiting for it, so that it comes up while
// the next steps run (the images step waits for it).
func (a *Agent) startDocker(ctx context.Context, step string) {
	if err := a.systemctl(ctx, "start", "docker.socket"); err != nil {
		a.logf("%s: starting docker.socket: %v", step, err)
		return
	}
	if err := a.systemctl(ctx, "start", "--no-block", "docker.service"); err != nil {
		a.logf("%s: starting docker.service: %v", step, err)
	}
}

// pendingVolumes lists the mount points of the storage volumes that are
// attached (a filesystem with their label exists) but not mounted.
func (a *Agent) pendingVolumes() []string {
	mounts := parseMountInfo(a.readOptional(MountInfo))
	var labels map[string]bool
	var pending []string
	for _, v := range storageVolumes {
		if _, ok := mounts[v.Mount]; ok {
			continue
		}
		if _, err := os.Stat(a.Host.Path(ByLabel + "/" + v.Label)); err != nil {
			if labels == nil {
				labels = a.blockLabels()
			}
			if !labels[v.Label] {
				continue
			}
		}
		pending = append(pending, v.Mount)
	}
	return pending
}

// SysBlock lists the kernel's block devices (disks and partitions).
const SysBlock = "/sys/class/block"

// blockLabels reads the labels of the ext2/3/4 and XFS filesystems on the
// kernel's block devices from their superblocks (/dev/NAME, which the
// kernel's devtmpfs creates as it finds a disk): early in the boot,
// before udev has made its /dev/disk/by-label links — dockerd's job
// starts before that under emulation. Optical, loop, RAM and network
// block devices are not read.
func (a *Agent) blockLabels() map[string]bool {
	labels := map[string]bool{}
	for _, n := range dirNames(a.Host.Path(SysBlock)) {
		if strings.HasPrefix(n, "sr") || strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") ||
			strings.HasPrefix(n, "zram") || strings.HasPrefix(n, "nbd") || strings.HasPrefix(n, "fd") {
			continue
		}
		if l := superblockLabel(a.Host.Path("/dev/" + n)); l != "" {
			labels[l] = true
		}
	}
	return labels
}

// superblockLabel returns the label of an ext2/3/4 or XFS filesystem on
// dev, or "".
func superblockLabel(dev string) string {
	f, err := os.Open(dev)
	if err != nil {
		return ""
	}
	defer f.Close()
	var b [2048]byte
	n, _ := f.ReadAt(b[:], 0)
	label := func(field []byte) string {
		if i := bytes.IndexByte(field, 0); i >= 0 {
			field = field[:i]
		}
		return string(field)
	}
	switch {
	case n >= 1024+136 && b[1024+56] == 0x53 && b[1024+57] == 0xEF: // ext: s_magic, s_volume_name
		return label(b[1024+120 : 1024+136])
	case n >= 120 && string(b[:4]) == "XFSB": // xfs: sb_magicnum, sb_fname
		return label(b[108:120])
	}
	return ""
}

// ErrStorageWait is returned by WaitStorage when its time ran out.
var ErrStorageWait = errors.New("the storage volumes were not settled in time")

// WaitStorage holds dockerd's start (docker.service's ExecStartPre) while
// a storage volume is attached but not mounted and the storage step has
// not run in this boot: dockerd restarts the stack's containers when it
// starts, and their bind mounts under /data, like its own data root under
// /volatile, must not be taken from the root file system below a volume
// mounted a moment later. At a first boot the env decides whether an
// attached volume is used, so the wait lasts until the storage step
// (StorageReady); at later boots until systemd has mounted the volumes of
// fstab (nofail mounts are not ordered before the services). It returns at
// once where no labelled volume is attached, and ErrStorageWait after
// timeout (dockerd then starts where it is, as it would without the wait).
func (a *Agent) WaitStorage(ctx context.Context, timeout, poll time.Duration) error {
	deadline := time.Now().Add(timeout)
	logged := false
	for {
		if a.Host.Exists(StorageReady) {
			return nil
		}
		// While the storage step is busy, the volumes' state does not
		// matter (not read: that reads superblocks at every poll).
		pending := []string{"the storage step's mounts and image store"}
		if !a.Host.Exists(StorageBusy) {
			pending = a.pendingVolumes()
		}
		if len(pending) == 0 {
			return nil
		}
		if !logged {
			a.logf("docker: waiting for %s to be mounted (or for the storage step, %s)", strings.Join(pending, " and "), StorageReady)
			logged = true
			// Meanwhile the programs of dockerd's start and the image
			// store the storage step copies are read into memory (not
			// waited for).
			read := make(chan string, 1)
			go func() {
				n, size := a.readAhead(slices.Concat(dockerPrograms, composePlugins, []string{DockerSeed}))
				read <- fmt.Sprintf("docker: read ahead %d files (%d MiB) while waiting", n, size>>20)
			}()
			defer func() {
				select {
				case msg := <-read:
					a.logf("%s", msg)
				default:
				}
			}()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s not mounted after %s", ErrStorageWait, strings.Join(pending, " and "), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

// dockerWaiting tells whether docker.service's start is in its
// ExecStartPre (WaitStorage): dockerd does not run yet.
func (a *Agent) dockerWaiting(ctx context.Context) bool {
	out, _ := a.Host.Run(ctx, "systemctl", "show", "--property", "SubState", "--value", "docker.service")
	return strings.TrimSpace(string(out)) == "start-pre"
}

// dockerActive tells whether docker.socket or docker.service is active
// (false where docker is not installed).
func (a *Agent) dockerActive(ctx context.Context) bool {
	out, _ := a.Host.Run(ctx, "systemctl", "is-active", "docker.socket", "docker.service")
	return slices.Contains(strings.Fields(string(out)), "active")
}

// findLabel returns the device holding the filesystem labelled label:
// udev's /dev/disk/by-label link, else blkid -L (no udev, e.g. a container
// or a device that appeared late).
func (a *Agent) findLabel(ctx context.Context, label string) (string, error) {
	link := ByLabel + "/" + label
	if _, err := os.Stat(a.Host.Path(link)); err == nil {
		return a.realDevice(link), nil
	}
	out, err := a.Host.Run(ctx, "blkid", "-L", label)
	if dev := strings.TrimSpace(string(out)); err == nil && strings.HasPrefix(dev, "/") {
		return dev, nil
	}
	return "", fmt.Errorf("no filesystem labelled %s was found (%s, blkid -L %s)", label, link, label)
}

// realDevice resolves the symbolic links of an in-appliance device path
// (by-label links, /dev/mapper names); it returns p unchanged when that
// fails.
func (a *Agent) realDevice(p string) string {
	r, err := filepath.EvalSymlinks(a.Host.Path(p))
	if err != nil {
		return p
	}
	if a.Host.IsRealRoot() {
		return r
	}
	rel, err := filepath.Rel(a.Host.Root, r)
	if err != nil || strings.HasPrefix(rel, "..") {
		return p
	}
	return "/" + rel
}

// writeFstab rewrites the managed storage block of /etc/fstab: one LABEL=
// line per volume unless fstab already has its own entry for the mount
// point; no volumes, no block.
func (a *Agent) writeFstab(vols []storageVolume) (bool, error) {
	data, err := a.Host.ReadFile(Fstab)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	text := removeManagedBlock(string(data), "storage")
	own := fstabMountPoints(text)
	var body strings.Builder
	for _, v := range vols {
		if own[v.Mount] {
			a.logf("prepare-appliance/storage: %s has its own entry for %s; using it", Fstab, v.Mount)
			continue
		}
		fmt.Fprintf(&body, "LABEL=%s\t%s\tauto\t%s\t0\t2\n", v.Label, v.Mount, fstabOptions)
	}
	if body.Len() > 0 {
		text = replaceManagedBlock(text, "storage", body.String())
	}
	if text == string(data) {
		return false, nil
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(a.Host.Path(Fstab)); err == nil {
		mode = st.Mode().Perm()
	}
	return a.Host.WriteFile(Fstab, []byte(text), mode)
}

// removeManagedBlock removes the "# BEGIN ecs-agent <name>" … "# END
// ecs-agent <name>" block written by replaceManagedBlock.
func removeManagedBlock(text, name string) string {
	begin := "# BEGIN ecs-agent " + name + "\n"
	end := "# END ecs-agent " + name + "\n"
	if i := strings.Index(text, begin); i >= 0 {
		if j := strings.Index(text[i:], end); j >= 0 {
			return text[:i] + text[i+j+len(end):]
		}
	}
	return text
}

// fstabMountPoints returns the mount points of fstab's entries.
func fstabMountPoints(text string) map[string]bool {
	m := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			m[filepath.Clean(mountinfo.Unescape(f[1]))] = true
		}
	}
	return m
}

// parseMountInfo maps each mount point of /proc/self/mountinfo to its
// source device; the last (topmost) mount of a point wins.
func parseMountInfo(data []byte) map[string]string {
	m := map[string]string{}
	for _, mt := range mountinfo.Parse(data) {
		m[mt.Point] = mt.Source
	}
	return m
}

// readOptional returns an in-appliance file's content, or nil.
func (a *Agent) readOptional(p string) []byte {
	data, _ := a.Host.ReadFile(p)
	return data
}

// dirNames lists a directory's entries except lost+found.
func dirNames(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		if e.Name() != "lost+found" {
			names = append(names, e.Name())
		}
	}
	return names
}
