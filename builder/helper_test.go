package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/provisioners"
)

// TestJobArchive writes a job disk the way the host does: whole MiB, the
// job first, then the placers' files with their owners (the helper's side,
// unpacking it, is tested in offlinehelper).
func TestJobArchive(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "motd"), []byte("hello\n"), 0o600)
	content := "x=1\n"
	r := &offlineRun{WorkDir: t.TempDir(), Job: offlinehelper.Job{Generalise: true, GeneraliseScript: "true", Packages: true},
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
	f, _ := os.Open(job)
	defer f.Close()
	tr := tar.NewReader(f)
	h, err := tr.Next()
	if err != nil || h.Name != offlinehelper.JobEntryName {
		t.Fatalf("first entry %v %v", h, err)
	}
	var got offlinehelper.Job
	if err := json.NewDecoder(tr).Decode(&got); err != nil || !got.Generalise || !got.Packages {
		t.Fatalf("job %+v %v", got, err)
	}
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Typeflag == tar.TypeReg {
			files[h.Name] = fmt.Sprintf("%s:%s %o", h.Uname, h.Gname, h.Mode)
		}
	}
	if files["etc/motd"] != "root:root 644" || files["app/etc/conf"] != "app:staff 640" {
		t.Errorf("files in the job: %v", files)
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
	if len(ents) != 2 || ents[0].name != offlinehelper.Name || ents[0].mode != 0o100755 || ents[0].data != body || ents[1].name != "TRAILER!!!" || len(p) != 0 {
		t.Errorf("entries %+v, %d bytes left", ents, len(p))
	}
}

func TestGeneraliseScript(t *testing.T) {
	s := generaliseScript(template.Generalise{Commands: []string{"echo custom"}})
	for _, want := range []string{"echo custom", "userdel --remove --force", "rm -rf /var/lib/cloud/*", "/etc/cloud/clean.d", ": > /etc/machine-id",
		"rm -f /var/lib/dbus/machine-id", "rm -f /etc/ssh/ssh_host_*", "rm -rf /var/lib/apt/lists/*", "truncate -s 0",
		"apparmor_parser --skip-kernel-load --write-cache", "TIMESTAMP_NSEC=", "touch -r /usr"} {
		if !strings.Contains(s, want) {
			t.Errorf("generalise script lacks %q", want)
		}
	}
	if strings.Contains(generaliseScript(template.Generalise{KeepLogs: true}), "truncate -s 0") {
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
	os.WriteFile(log, []byte(offlinehelper.MarkerStart+"\r\n"+offlinehelper.MarkerKernel+"6.1.0-50-cloud-amd64 ata_piix isofs nvme sd_mod sr_mod virtio_blk virtio_pci\r\n"+offlinehelper.MarkerOK+"\r\n"), 0o600)
	r := &offlineRun{SerialLog: log, Log: logrus.New(), Job: offlinehelper.Job{Drivers: asked}}
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
	os.WriteFile(log, []byte(offlinehelper.MarkerNoKernel+"kernel 6.1.0-1-amd64: open /lib/modules/6.1.0-1-amd64/modules.builtin: no such file or directory\r\n"+offlinehelper.MarkerOK+"\r\n"), 0o600)
	r = &offlineRun{SerialLog: log, Log: logrus.New(), Job: offlinehelper.Job{Drivers: asked}}
	if err := r.parse(nil); err != nil || r.Kernel != nil || !strings.Contains(r.KernelUnknown, "modules.builtin") {
		t.Errorf("unknown kernel: %v %+v %q", err, r.Kernel, r.KernelUnknown)
	}
}
