package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/provisioners"
	"github.com/ecs-image/ecs-image/testenv"
)

// TestJobArchiveUnpack writes a job disk the way the host does and unpacks
// it the way the helper does, into a fake image root with its own passwd.
func TestJobArchiveUnpack(t *testing.T) {
	testenv.Root(t, "chown")
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "motd"), []byte("hello\n"), 0o600)
	content := "x=1\n"
	r := &offlineRun{WorkDir: t.TempDir(), Job: helperJob{Generalise: true, GeneraliseScript: "true", Packages: true},
		Placers: []provisioners.Placer{
			&provisioners.File{Source: filepath.Join(src, "motd"), Destination: "/etc/motd", Mode: "0644"},
			&provisioners.File{Content: &content, Destination: "/app/etc/conf", Owner: "app:staff", Mode: "0640"},
		}}
	for _, p := range r.Placers {
		if errs := p.Check(""); len(errs) > 0 {
			t.Fatal(errs)
		}
	}
	job := filepath.Join(r.WorkDir, "job.tar")
	if err := r.writeJob(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(job)
	if fi.Size()%(1<<20) != 0 {
		t.Errorf("job disk size %d is not whole MiB", fi.Size())
	}

	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nstaff:x:50:\n"), 0o644)
	// /app/etc is a symlink into /data, as in the appliance layout.
	os.MkdirAll(filepath.Join(root, "data/etc"), 0o755)
	os.MkdirAll(filepath.Join(root, "app"), 0o755)
	os.Symlink("/data/etc", filepath.Join(root, "app/etc")) // absolute, as in the image

	f, _ := os.Open(job)
	defer f.Close()
	tr := tar.NewReader(f)
	h, err := tr.Next()
	if err != nil || h.Name != jobEntryName {
		t.Fatalf("first entry %v %v", h, err)
	}
	var got helperJob
	if err := json.NewDecoder(tr).Decode(&got); err != nil || !got.Generalise || !got.Packages {
		t.Fatalf("job %+v %v", got, err)
	}
	cwd, _ := os.Getwd()
	n, err := unpackChrooted(tr, root)
	if now, _ := os.Getwd(); now != cwd {
		t.Fatalf("working directory changed: %s", now)
	}
	if _, err := os.Stat("/proc/self"); err != nil {
		t.Fatal("the process did not return to the real root")
	}
	users, groups := readIDs(root)
	if err != nil || n != 2 {
		t.Fatalf("unpack: %d %v", n, err)
	}
	st := func(p string) *syscall.Stat_t {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t)
	}
	if s := st("etc/motd"); s.Mode&0o777 != 0o644 || s.Uid != 0 {
		t.Errorf("motd: mode %o uid %d", s.Mode&0o777, s.Uid)
	}
	if s := st("data/etc/conf"); s.Mode&0o777 != 0o640 || s.Uid != 1234 || s.Gid != 50 {
		t.Errorf("conf through the symlink: mode %o uid %d gid %d", s.Mode&0o777, s.Uid, s.Gid)
	}
	if l, err := os.Readlink(filepath.Join(root, "app/etc")); err != nil || l != "/data/etc" {
		t.Errorf("the directory symlink was replaced: %q %v", l, err)
	}

	// An owner unknown in the image is an error, not a silent root.
	var buf bytes.Buffer
	a := provisioners.NewArchive(&buf)
	a.Bytes("/etc/x", []byte("x"), 0o644, provisioners.Owner{User: "nobody-here", Group: "root"})
	a.Close()
	if _, err := unpack(tar.NewReader(&buf), root, users, groups); err == nil || !strings.Contains(err.Error(), `no user "nobody-here"`) {
		t.Errorf("unknown owner: %v", err)
	}
	// Paths cannot leave the root.
	buf.Reset()
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../../escape", Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Close()
	if _, err := unpack(tar.NewReader(&buf), root, users, groups); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(root)), "escape")); err == nil {
		t.Error("an entry escaped the root")
	}
}

// TestHelperInitrd parses the appended newc cpio archive.
func TestHelperInitrd(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "initrd")
	exe := filepath.Join(dir, "exe")
	os.WriteFile(base, []byte("BASE!"), 0o644) // 5 bytes: padded to 8
	body := "#!/bin/sh\necho helper\n"
	os.WriteFile(exe, []byte(body), 0o755)
	out := filepath.Join(dir, "out")
	if err := writeHelperInitrd(out, base, &helperProgram{Exe: exe}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(out)
	if !bytes.HasPrefix(data, []byte("BASE!\x00\x00\x00070701")) {
		t.Fatalf("layout: %q", data[:16])
	}
	type entry struct {
		name string
		mode uint64
		data string
	}
	var ents []entry
	p := data[8:]
	for len(p) >= 110 {
		hex := func(i int) uint64 { v, _ := strconv.ParseUint(string(p[6+8*i:14+8*i]), 16, 64); return v }
		if string(p[:6]) != "070701" {
			t.Fatalf("bad magic %q", p[:6])
		}
		mode, size, nsize := hex(1), hex(6), hex(11)
		off := 110
		name := string(p[off : off+int(nsize)-1])
		off = (off + int(nsize) + 3) &^ 3
		ents = append(ents, entry{name, mode, string(p[off : off+int(size)])})
		off = (off + int(size) + 3) &^ 3
		p = p[off:]
		if name == "TRAILER!!!" {
			break
		}
	}
	if len(ents) != 2 || ents[0].name != HelperName || ents[0].mode != 0o100755 || ents[0].data != body || ents[1].name != "TRAILER!!!" || len(p) != 0 {
		t.Errorf("entries %+v, %d bytes left", ents, len(p))
	}
}

func TestGeneraliseScript(t *testing.T) {
	s := generaliseScript(Generalise{Commands: []string{"echo custom"}})
	for _, want := range []string{"echo custom", "userdel --remove --force", "rm -rf /var/lib/cloud/*", "/etc/cloud/clean.d", ": > /etc/machine-id",
		"rm -f /var/lib/dbus/machine-id", "rm -f /etc/ssh/ssh_host_*", "rm -rf /var/lib/apt/lists/*", "truncate -s 0",
		"apparmor_parser --skip-kernel-load --write-cache", "TIMESTAMP_NSEC=", "touch -r /usr"} {
		if !strings.Contains(s, want) {
			t.Errorf("generalise script lacks %q", want)
		}
	}
	if strings.Contains(generaliseScript(Generalise{KeepLogs: true}), "truncate -s 0") {
		t.Error("keep_logs ignored")
	}
	// The script is valid shell.
	if out, err := exec.Command("/bin/sh", "-n", "-c", s).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v %s", err, out)
	}
}

// The helper's kernel report: the drivers it found, or why it found none,
// and the driver check on it.
func TestHelperKernelReport(t *testing.T) {
	log := filepath.Join(t.TempDir(), "serial.log")
	asked := formats.AllDrivers()
	os.WriteFile(log, []byte(markerStart+"\r\n"+markerKernel+"6.1.0-50-cloud-amd64 ata_piix isofs nvme sd_mod sr_mod virtio_blk virtio_pci\r\n"+markerOK+"\r\n"), 0o600)
	r := &offlineRun{SerialLog: log, Log: logrus.New(), Job: helperJob{Drivers: asked}}
	if err := r.parse(nil); err != nil {
		t.Fatal(err)
	}
	if r.Kernel == nil || r.Kernel.Version != "6.1.0-50-cloud-amd64" || len(r.Kernel.Drivers) != 7 || !r.Kernel.covers(asked) {
		t.Fatalf("kernel %+v", r.Kernel)
	}
	if r.Kernel.covers(append(asked, "new_driver")) {
		t.Error("covers a driver it was not asked about")
	}
	err := formats.CheckDrivers(r.Kernel.kernelDrivers(), []string{"qcow2"})
	if err == nil || !strings.Contains(err.Error(), "no ahci driver") || strings.Contains(err.Error(), "ata_piix driver") {
		t.Errorf("check: %v", err)
	}
	os.WriteFile(log, []byte(markerNoKernel+"kernel 6.1.0-1-amd64: open /lib/modules/6.1.0-1-amd64/modules.builtin: no such file or directory\r\n"+markerOK+"\r\n"), 0o600)
	r = &offlineRun{SerialLog: log, Log: logrus.New(), Job: helperJob{Drivers: asked}}
	if err := r.parse(nil); err != nil || r.Kernel != nil || !strings.Contains(r.KernelUnknown, "modules.builtin") {
		t.Errorf("unknown kernel: %v %+v %q", err, r.Kernel, r.KernelUnknown)
	}
}
