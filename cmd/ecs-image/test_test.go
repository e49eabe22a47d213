package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/ecs-image/ecs-image/boottest"
	"github.com/ecs-image/ecs-image/qemu/qemutest"
	"github.com/ecs-image/ecs-image/testenv"
)

func vmtestNeedVM(t *testing.T) {
	t.Helper()
	testenv.Tools(t, "qemu-system-x86_64", "qemu-img")
}

// runVMTestCLI runs `ecs-image test args...` in-process with fresh flags and
// returns the exit code and the JSON report (when --json was given).
func runVMTestCLI(t *testing.T, args ...string) (int, *boottest.Report, string) {
	t.Helper()
	vmtestCmd.Flags().VisitAll(func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			sv.Replace(nil) // --disk: Set would append its default "[]"
		} else {
			f.Value.Set(f.DefValue)
		}
		f.Changed = false
	})
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	defer rootCmd.SetOut(nil)
	code := runCLI(append([]string{"test"}, args...))
	var rep boottest.Report
	if json.Unmarshal(out.Bytes(), &rep) != nil {
		return code, nil, out.String()
	}
	return code, &rep, out.String()
}

func vmtestBootDisk(t *testing.T, msg string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "appliance.raw")
	if err := qemutest.BootDisk(p, msg); err != nil {
		t.Fatal(err)
	}
	return p
}

func vmtestSum(t *testing.T, p string) [32]byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestVMTestReadyFailedTimeout(t *testing.T) {
	vmtestNeedVM(t)
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env.yml")
	if code := runCLI([]string{"env", "create", "vmtest.example.org", "-o", envFile, "--extra", ""}); code != exitOK {
		t.Fatalf("env create: exit %d", code)
	}

	ready := vmtestBootDisk(t, "[  OK  ] Reached target multi-user\r\nECS-APPLIANCE-READY\r\n")
	before := vmtestSum(t, ready)
	serial := filepath.Join(dir, "serial.log")
	// With two data disks (QEMU must accept them: raw and qcow2).
	vol := filepath.Join(dir, "ecs-volatile.raw")
	if err := os.WriteFile(vol, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	volq := filepath.Join(dir, "ecs-data.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", volq, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	code, rep, out := runVMTestCLI(t, ready, "--env", envFile, "--no-https", "--json", "--memory", "256", "--cpus", "1", "--timeout", "60s", "--serial-log", serial, "--disk", volq, "--disk", vol)
	if code != exitOK || rep == nil || !rep.OK || rep.State != "ready" || rep.Format != "raw" || rep.Accel == "" {
		t.Fatalf("ready: exit %d, report %s", code, out)
	}
	for _, p := range []string{"22", "80", "443"} {
		if rep.Ports[p] == 0 {
			t.Errorf("port %s not forwarded: %v", p, rep.Ports)
		}
	}
	if rep.ReadySeconds <= 0 || rep.ReadySeconds > 60 {
		t.Errorf("ready after %vs", rep.ReadySeconds)
	}
	if vmtestSum(t, ready) != before {
		t.Error("the artifact was modified")
	}
	if b, _ := os.ReadFile(serial); !strings.Contains(string(b), "ECS-APPLIANCE-READY") {
		t.Errorf("--serial-log: %q", b)
	}

	failed := vmtestBootDisk(t, "ECS-APPLIANCE-FAILED: appliance.domain is missing\r\n")
	code, rep, out = runVMTestCLI(t, failed, "--env", envFile, "--no-https", "--json", "--memory", "256", "--timeout", "60s")
	if code != exitFailure || rep == nil || rep.OK || rep.State != "failed" || rep.Reason != "appliance.domain is missing" ||
		!strings.Contains(rep.SerialTail, "ECS-APPLIANCE-FAILED") {
		t.Fatalf("failed: exit %d, report %s", code, out)
	}
	code, rep, out = runVMTestCLI(t, failed, "--env", envFile, "--no-https", "--json", "--memory", "256", "--expect", "failed")
	if code != exitOK || rep == nil || !rep.OK {
		t.Fatalf("--expect failed: exit %d, report %s", code, out)
	}

	// A guest that never says anything: the time-out, with the tail.
	silent := vmtestBootDisk(t, "booting...\r\n")
	start := time.Now()
	code, rep, out = runVMTestCLI(t, silent, "--no-https", "--json", "--memory", "256", "--timeout", "3s")
	if code != exitFailure || rep == nil || rep.State != "timeout" || !strings.Contains(rep.SerialTail, "booting...") {
		t.Fatalf("timeout: exit %d, report %s", code, out)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("3s time-out took %s", d)
	}

	// A custom marker (e.g. cloud-init's) on a vmdk and an OVA of the disk.
	base := vmtestBootDisk(t, "Cloud-init v. 22.4.2 finished at Tue, 24 Nov 2026 07:00:00 +0000. Up 30.00 seconds\r\n")
	vmdk := filepath.Join(dir, "disk.vmdk")
	if out, err := exec.Command("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", base, vmdk).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	code, rep, out = runVMTestCLI(t, vmdk, "--no-https", "--json", "--memory", "256")
	if code != exitOK || rep == nil || rep.Format != "vmdk" || !strings.HasPrefix(rep.Line, "Cloud-init v. 22.4.2 finished") {
		t.Fatalf("vmdk with the cloud-init marker: exit %d, report %s", code, out)
	}
	for _, f := range []struct{ format, opts string }{{"qcow2", "compression_type=zlib"}, {"vhdx", "subformat=dynamic"}, {"vpc", "subformat=dynamic"}} {
		img := filepath.Join(dir, "disk."+f.format)
		if out, err := exec.Command("qemu-img", "convert", "-O", f.format, "-o", f.opts, base, img).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		code, rep, out = runVMTestCLI(t, img, "--no-https", "--json", "--memory", "256")
		if code != exitOK || rep == nil || rep.Format != f.format {
			t.Fatalf("%s: exit %d, report %s", f.format, code, out)
		}
	}
	// Other machines and seed buses: the report says where the seed was.
	for _, mb := range [][2]string{{"pc", ""}, {"pc", "sata"}, {"q35", "virtio"}} {
		args := []string{base, "--no-https", "--json", "--memory", "256", "--machine", mb[0]}
		if mb[1] != "" {
			args = append(args, "--seed-bus", mb[1])
		}
		code, rep, out = runVMTestCLI(t, args...)
		want := mb[1]
		if want == "" {
			want = "ide"
		}
		if code != exitOK || rep == nil || rep.Machine != mb[0] || rep.SeedBus != want {
			t.Fatalf("--machine %s --seed-bus %q: exit %d, report %s", mb[0], mb[1], code, out)
		}
	}
	// cloud-init finishing without the seed is a failure, not ready.
	noSeed := vmtestBootDisk(t, "Cloud-init v. 22.4.2 finished at Tue, 24 Nov 2026 07:00:00 +0000. Datasource DataSourceNone.  Up 30.00 seconds\r\n")
	code, rep, out = runVMTestCLI(t, noSeed, "--no-https", "--json", "--memory", "256")
	if code != exitFailure || rep == nil || rep.State != "no-seed" || rep.Datasource != "DataSourceNone" || !strings.Contains(rep.Error, "found no seed") {
		t.Fatalf("DataSourceNone: exit %d, report %s", code, out)
	}
	// The boot reaching its getty without cloud-init (Debian's cloud
	// kernel with the seed on q35's SATA CD-ROM): no-seed at once.
	noCI := vmtestBootDisk(t, "[  OK  ] Started serial-getty@ttyS0.service - Serial Getty on ttyS0.\r\n\r\nDebian GNU/Linux 12 debian ttyS0\r\n\r\ndebian login: ")
	start = time.Now()
	code, rep, out = runVMTestCLI(t, noCI, "--no-https", "--json", "--memory", "256", "--timeout", "2m")
	if code != exitFailure || rep == nil || rep.State != "no-seed" || !strings.Contains(rep.Error, "cloud-init never ran") || !strings.Contains(rep.Error, "seed on sata") {
		t.Fatalf("no cloud-init: exit %d, report %s", code, out)
	}
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("no-seed took %s", d)
	}
	// With cloud-init's line before the getty, the wait goes on.
	withCI := vmtestBootDisk(t, "cloud-init[301]: Cloud-init v. 22.4.2 running 'init' at Sun.\r\nDebian GNU/Linux 12 debian ttyS0\r\nCloud-init v. 22.4.2 finished at Sun. Datasource DataSourceNoCloud [seed=/dev/sr0].  Up 40 seconds\r\n")
	if code, rep, out = runVMTestCLI(t, withCI, "--no-https", "--json", "--memory", "256"); code != exitOK || rep == nil || rep.Datasource != "DataSourceNoCloud" {
		t.Fatalf("cloud-init before the getty: exit %d, report %s", code, out)
	}
	ova := filepath.Join(dir, "appliance.ova")
	vmtestWriteOVA(t, ova, vmdk)
	code, rep, out = runVMTestCLI(t, ova, "--no-https", "--json", "--memory", "256", "--ready-marker", `finished at`)
	if code != exitOK || rep == nil || rep.Format != "ova/vmdk" {
		t.Fatalf("ova: exit %d, report %s", code, out)
	}
}

func vmtestWriteOVA(t *testing.T, ova, vmdk string) {
	t.Helper()
	f, err := os.Create(ova)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	ovf := []byte("<Envelope/>")
	tw.WriteHeader(&tar.Header{Name: "appliance.ovf", Mode: 0o644, Size: int64(len(ovf)), Typeflag: tar.TypeReg})
	tw.Write(ovf)
	data, _ := os.ReadFile(vmdk)
	tw.WriteHeader(&tar.Header{Name: "appliance-disk1.vmdk", Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
	tw.Write(data)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestVMTestBadInput(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "d.raw")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	broken := filepath.Join(dir, "broken.yml")
	os.WriteFile(broken, []byte("#cloud-config\nappliance:\n  standby: [\n"), 0o600)
	for name, args := range map[string][]string{
		"missing artifact": {filepath.Join(dir, "nope.qcow2"), "--no-https"},
		"no env":           {disk},
		"bad expect":       {disk, "--no-https", "--expect", "happy"},
		"bad marker":       {disk, "--no-https", "--ready-marker", "("},
		"bad firmware":     {disk, "--no-https", "--firmware", "coreboot"},
		"missing env":      {disk, "--env", filepath.Join(dir, "none.yml")},
		"invalid env":      {disk, "--env", broken},
		"no artifact":      {},
		"ide on q35":       {disk, "--no-https", "--seed-bus", "ide"},
		"bad seed bus":     {disk, "--no-https", "--seed-bus", "usb"},
		"bad machine":      {disk, "--no-https", "--machine", "virt"},
	} {
		if code, _, _ := runVMTestCLI(t, args...); code != exitUsage {
			t.Errorf("%s: exit %d, want 2", name, code)
		}
	}
}
