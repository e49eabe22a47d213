package prepare

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/testenv"
)

const storageEnv = `#cloud-config
appliance:
  domain: ecs.example.org
  storage:
    ignore:
      data: false
      volatile: %s
`

func storageEnvText(volatile string) string {
	return strings.Replace(storageEnv, "%s", volatile, 1)
}

// labelDevice makes /dev/<dev> (a plain file under the test root) and
// udev's relative /dev/disk/by-label/<label> link to it.
func labelDevice(t *testing.T, a *Agent, label, dev string) {
	t.Helper()
	put(t, a, "/dev/"+dev, nil, 0o600)
	if err := os.MkdirAll(a.Host.Path(ByLabel), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../"+dev, a.Host.Path(ByLabel+"/"+label)); err != nil {
		t.Fatal(err)
	}
}

const baseFstab = "# <file system> <mount point> <type> <options> <dump> <pass>\nUUID=1234 / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1\n"

func TestStorageMountsDataBeforeLayout(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	put(t, a, Fstab, []byte(baseFstab), 0o644)
	labelDevice(t, a, "ecs-data", "vdb")
	rec.Responses["systemctl is-active docker.socket docker.service"] = host.Response{Stdout: "active\nactive\n"}
	activate(t, a, storageEnvText("true"))
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	fstab := read(t, a, Fstab)
	want := baseFstab + "# BEGIN ecs-agent storage\nLABEL=ecs-data\t/data\tauto\t" + fstabOptions + "\t0\t2\n# END ecs-agent storage\n"
	if fstab != want {
		t.Errorf("fstab:\n%s\nwant:\n%s", fstab, want)
	}
	cmds := rec.Recorded()
	mount := slices.Index(cmds, "mount /data")
	if mount < 0 || slices.Contains(cmds, "systemctl daemon-reload") || slices.Contains(cmds, "mount /volatile") {
		t.Errorf("commands:\n%s", strings.Join(cmds, "\n"))
	}
	// dockerd is stopped around the mount, its socket is back after it and
	// dockerd starts without the agent waiting for it.
	stop, start := slices.Index(cmds, "systemctl stop docker.socket docker.service"), slices.Index(cmds, "systemctl start docker.socket")
	if stop < 0 || stop > mount || start < mount {
		t.Errorf("dockerd not stopped around the mount:\n%s", strings.Join(cmds, "\n"))
	}
	if i := slices.Index(cmds, "systemctl start --no-block docker.service"); i < start {
		t.Errorf("dockerd not started after the mount:\n%s", strings.Join(cmds, "\n"))
	}
	if !a.Host.Exists(StorageReady) {
		t.Errorf("%s not written", StorageReady)
	}
	log := a.Log.(*bytes.Buffer).String()
	mounted := strings.Index(log, "mounted /dev/vdb (label ecs-data) on /data")
	layout := strings.Index(log, "prepare-appliance/layout: running")
	if mounted < 0 || layout < mounted {
		t.Errorf("mount not before layout:\n%s", log)
	}

	// Second run, /data now mounted: nothing rewritten, nothing mounted.
	put(t, a, MountInfo, []byte("22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"+
		"95 22 254:16 / /data rw,relatime shared:50 - ext4 /dev/vdb rw\n"), 0o444)
	rec.Commands = nil
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, a, Fstab); got != want {
		t.Errorf("fstab changed on the second run:\n%s", got)
	}
	for _, c := range rec.Recorded() {
		if c == "systemctl daemon-reload" || strings.HasPrefix(c, "mount ") || strings.Contains(c, "docker.socket") {
			t.Errorf("second run: %q", c)
		}
	}

	// ignore.data back to true: the entry goes (the mount stays).
	activate(t, a, "#cloud-config\nappliance:\n  domain: ecs.example.org\n")
	rec.Commands = nil
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, a, Fstab); got != baseFstab {
		t.Errorf("fstab after ignoring again:\n%s", got)
	}
	if slices.Contains(rec.Recorded(), "systemctl daemon-reload") {
		t.Error("daemon-reload after removing the entry (the next boot's generator reads fstab)")
	}
}

func TestStorageIgnoredByDefault(t *testing.T) {
	for _, envText := range []string{
		"#cloud-config\nappliance:\n  domain: ecs.example.org\n",
		"#cloud-config\nappliance:\n  domain: ecs.example.org\n  storage:\n    ignore:\n      data: true\n      volatile: yes\n",
	} {
		a, rec := testAgent(t)
		fakeSystem(t, a)
		activate(t, a, envText)
		if err := a.PrepareAppliance(context.Background()); err != nil {
			t.Fatal(err)
		}
		if a.Host.Exists(Fstab) {
			t.Errorf("fstab written:\n%s", read(t, a, Fstab))
		}
		for _, c := range rec.Recorded() {
			if strings.HasPrefix(c, "blkid") || strings.HasPrefix(c, "mount") || c == "systemctl daemon-reload" {
				t.Errorf("%q with storage ignored", c)
			}
		}
		if !a.Host.Exists("/data/etc/server.cert.pem") {
			t.Error("layout not on the root filesystem")
		}
	}
}

func TestStorageMissingVolumeFailsNamingLabel(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	labelDevice(t, a, "ecs-data", "vdb")
	rec.Responses["blkid -L ecs-volatile"] = host.Response{Err: errors.New("blkid: exit status 2")}
	activate(t, a, storageEnvText("false"))
	err := a.PrepareAppliance(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no filesystem labelled ecs-volatile") {
		t.Fatalf("err = %v", err)
	}
	reason, ok := status.FailedReason(a.Host)
	if !ok || !strings.HasPrefix(reason, "prepare-appliance/storage: appliance.storage.ignore.volatile is false, but no filesystem labelled ecs-volatile was found") {
		t.Errorf("flag %q", reason)
	}
	if c := read(t, a, "/dev/ttyS0"); !strings.Contains(c, status.FailedMarker+": prepare-appliance/storage:") || !strings.Contains(c, "ecs-volatile") {
		t.Errorf("console %q", c)
	}
	if page := read(t, a, status.StatusPage); !strings.Contains(page, "labelled ecs-volatile") {
		t.Errorf("status page lacks the reason:\n%s", page)
	}
	// Nothing half-done: the data volume that exists was not set up either.
	if a.Host.Exists(Fstab) || slices.ContainsFunc(rec.Recorded(), func(c string) bool { return strings.HasPrefix(c, "mount") }) {
		t.Errorf("partial setup: fstab %v, commands %q", a.Host.Exists(Fstab), rec.Recorded())
	}
	if a.Host.Exists("/data/etc") {
		t.Error("layout ran after the storage step failed")
	}
}

func TestStorageBlkidFallbackAndSetupWarning(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	rec.Responses["blkid -L ecs-volatile"] = host.Response{Stdout: "/dev/sdc\n"}
	activate(t, a, "#cloud-config\nappliance:\n  domain: ecs.example.org\n  storage:\n    setup: |\n      proxy_cache: true\n    ignore:\n      volatile: false\n")
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f := read(t, a, Fstab); !strings.Contains(f, "LABEL=ecs-volatile\t/volatile\tauto\t") || strings.Contains(f, "/data") {
		t.Errorf("fstab:\n%s", f)
	}
	if !slices.Contains(rec.Recorded(), "mount /volatile") {
		t.Errorf("commands %q", rec.Recorded())
	}
	// Reported by prepare-env from the key table.
	if log := a.Log.(*bytes.Buffer).String(); !strings.Contains(log, "prepare-env: appliance.storage.setup: not supported by this image") {
		t.Errorf("no warning:\n%s", log)
	}
	st, _ := status.Read(a.Host)
	if !strings.Contains(st.Warnings[KeysWarning], "appliance.storage.setup: not supported") {
		t.Errorf("warnings %v", st.Warnings)
	}
	if page := read(t, a, status.StatusPage); !strings.Contains(page, "appliance.storage.setup: not supported") {
		t.Errorf("status page lacks the warning:\n%s", page)
	}
}

func TestStorageMountedElsewhereOrOwnFstabEntry(t *testing.T) {
	a, rec := testAgent(t)
	labelDevice(t, a, "ecs-data", "vdb")
	activate(t, a, storageEnvText("true"))
	e, err := a.loadActive()
	if err != nil {
		t.Fatal(err)
	}
	put(t, a, MountInfo, []byte("95 22 8:33 / /data rw - xfs /dev/sdc1 rw\n"), 0o444)
	if err := a.stepStorage(context.Background(), e); err == nil || !strings.Contains(err.Error(), "/data is mounted from /dev/sdc1, not from the filesystem labelled ecs-data (/dev/vdb)") {
		t.Fatalf("err = %v", err)
	}
	// The operator's own fstab entry for /data is used, not duplicated.
	os.Remove(a.Host.Path(MountInfo))
	own := baseFstab + "LABEL=ecs-data /data ext4 noatime,nofail 0 2\n"
	put(t, a, Fstab, []byte(own), 0o644)
	if err := a.stepStorage(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if got := read(t, a, Fstab); got != own {
		t.Errorf("fstab:\n%s", got)
	}
	if !slices.Contains(rec.Recorded(), "mount /data") {
		t.Errorf("commands %q", rec.Recorded())
	}
}

func TestParseMountInfo(t *testing.T) {
	m := parseMountInfo([]byte("36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"95 22 254:16 / /data rw - ext4 /dev/vdb rw\n96 22 254:32 / /data rw - ext4 /dev/vdc rw\ngarbage\n"))
	if m["/mnt/my disk"] != "/dev/root" || m["/data"] != "/dev/vdc" || len(m) != 2 {
		t.Errorf("%v", m)
	}
}

// Without docker (not installed or not running) the storage step stops
// nothing.
func TestStorageWithoutDocker(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	put(t, a, Fstab, []byte(baseFstab), 0o644)
	labelDevice(t, a, "ecs-data", "vdb")
	rec.Responses["systemctl is-active docker.socket docker.service"] = host.Response{Stdout: "inactive\ninactive\n", Err: errors.New("exit status 3")}
	activate(t, a, storageEnvText("true"))
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	cmds := rec.Recorded()
	if !slices.Contains(cmds, "mount /data") || slices.ContainsFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "systemctl stop docker") }) {
		t.Errorf("commands:\n%s", strings.Join(cmds, "\n"))
	}
}

// dockerd's start waits while a labelled volume is attached but not
// mounted, until it is mounted or the storage step has run.
func TestWaitStorage(t *testing.T) {
	ctx := context.Background()
	a, _ := testAgent(t)
	// Nothing attached: at once.
	if err := a.WaitStorage(ctx, time.Hour, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// ecs-volatile attached, nothing mounted: it waits, and gives up.
	labelDevice(t, a, "ecs-volatile", "vdc")
	put(t, a, MountInfo, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"), 0o444)
	if err := a.WaitStorage(ctx, 30*time.Millisecond, 5*time.Millisecond); !errors.Is(err, ErrStorageWait) || !strings.Contains(err.Error(), "/volatile not mounted") {
		t.Fatalf("err = %v", err)
	}
	if log := a.Log.(*bytes.Buffer).String(); !strings.Contains(log, "waiting for /volatile to be mounted") {
		t.Errorf("log: %q", log)
	}
	// Mounted meanwhile (a later boot's fstab entry): it returns.
	go func() {
		time.Sleep(20 * time.Millisecond)
		os.WriteFile(a.Host.Path(MountInfo), []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n95 22 254:32 / /volatile rw - ext4 /dev/vdc rw\n"), 0o444)
	}()
	if err := a.WaitStorage(ctx, 10*time.Second, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// Not mounted, but the storage step ran (the env ignores the volume).
	put(t, a, MountInfo, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"), 0o444)
	go func() {
		time.Sleep(20 * time.Millisecond)
		os.MkdirAll(a.Host.Path("/run/ecs-agent"), 0o755)
		os.WriteFile(a.Host.Path(StorageReady), []byte("ok\n"), 0o644)
	}()
	if err := a.WaitStorage(ctx, 10*time.Second, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// Mounted, but the storage step is busy (its image store copy for a
	// waiting dockerd): it waits for StorageReady.
	os.Remove(a.Host.Path(StorageReady))
	put(t, a, MountInfo, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n95 22 254:32 / /volatile rw - ext4 /dev/vdc rw\n"), 0o444)
	put(t, a, StorageBusy, []byte("ok\n"), 0o644)
	if err := a.WaitStorage(ctx, 30*time.Millisecond, 5*time.Millisecond); !errors.Is(err, ErrStorageWait) {
		t.Fatalf("busy: err = %v, want a wait", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		os.WriteFile(a.Host.Path(StorageReady), []byte("ok\n"), 0o644)
	}()
	if err := a.WaitStorage(ctx, 10*time.Second, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	os.Remove(a.Host.Path(StorageBusy))
	put(t, a, MountInfo, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"), 0o444)
	// Cancelled (systemctl stop docker.service ends the wait).
	os.Remove(a.Host.Path(StorageReady))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := a.WaitStorage(cctx, time.Hour, time.Millisecond); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// fakeSuperblock writes /dev/<dev> under the test root holding an ext4 or
// XFS superblock with label, and the kernel's /sys/class/block entry.
func fakeSuperblock(t *testing.T, a *Agent, dev, fs, label string) {
	t.Helper()
	b := make([]byte, 4096)
	switch fs {
	case "ext4":
		b[1024+56], b[1024+57] = 0x53, 0xEF
		copy(b[1024+120:1024+136], label)
	case "xfs":
		copy(b, "XFSB")
		copy(b[108:120], label)
	}
	put(t, a, "/dev/"+dev, b, 0o600)
	if err := os.MkdirAll(a.Host.Path(SysBlock+"/"+dev), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Before udev has linked the labels, the volumes are found by their
// superblocks (ext4 and XFS); optical drives are not read.
func TestWaitStorageBeforeUdev(t *testing.T) {
	a, _ := testAgent(t)
	fakeSuperblock(t, a, "vda1", "ext4", "root")
	fakeSuperblock(t, a, "vdb", "ext4", "ecs-data")
	fakeSuperblock(t, a, "vdc", "xfs", "ecs-volatile")
	fakeSuperblock(t, a, "sr0", "ext4", "ecs-data")
	put(t, a, MountInfo, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"), 0o444)
	if got := a.pendingVolumes(); !slices.Equal(got, []string{"/data", "/volatile"}) {
		t.Errorf("pending %q", got)
	}
	if err := a.WaitStorage(context.Background(), 20*time.Millisecond, 5*time.Millisecond); !errors.Is(err, ErrStorageWait) || !strings.Contains(err.Error(), "/data and /volatile not mounted") {
		t.Errorf("err = %v", err)
	}
	put(t, a, MountInfo, []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n95 22 254:16 / /data rw - ext4 /dev/vdb rw\n"), 0o444)
	if got := a.pendingVolumes(); !slices.Equal(got, []string{"/volatile"}) {
		t.Errorf("pending %q", got)
	}
	// Only the optical drive carries the label: nothing to wait for.
	b, _ := testAgent(t)
	fakeSuperblock(t, b, "sr0", "ext4", "ecs-data")
	fakeSuperblock(t, b, "vdb", "ext4", "other")
	if got := b.pendingVolumes(); len(got) != 0 {
		t.Errorf("pending %q", got)
	}
}

func TestSuperblockLabel(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ name, data, want string }{
		{"empty", "", ""},
		{"short", "XFSB", ""},
		{"garbage", strings.Repeat("x", 4096), ""},
	} {
		p := dir + "/" + c.name
		os.WriteFile(p, []byte(c.data), 0o600)
		if got := superblockLabel(p); got != c.want {
			t.Errorf("%s: %q", c.name, got)
		}
	}
	if got := superblockLabel(dir + "/absent"); got != "" {
		t.Errorf("absent: %q", got)
	}
	// A real ext4, as mkfs.ext4 writes it.
	mkfs := testenv.Tool(t, "mkfs.ext4", "e2fsprogs")
	img := dir + "/ext4.img"
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-L", "ecs-volatile", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if got := superblockLabel(img); got != "ecs-volatile" {
		t.Errorf("mkfs.ext4 -L ecs-volatile: label %q", got)
	}
}
