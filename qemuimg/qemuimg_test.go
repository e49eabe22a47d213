package qemuimg

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/qemuimg/qemuimgtest"
	"github.com/ecs-image/ecs-image/testenv"
)

func requireQemuImg(t testing.TB) {
	t.Helper()
	testenv.Tools(t, Binary)
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

var (
	bases   = Policy{Formats: []string{"qcow2", "raw"}}
	anyDisk = Policy{Formats: []string{"qcow2", "raw", "vmdk", "vhdx", "vpc"}}
)

func wantRefused(t *testing.T, err error, substr string) {
	t.Helper()
	var ie *ImageError
	if !errors.As(err, &ie) {
		t.Fatalf("want ImageError containing %q, got %v", substr, err)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not mention %q", err, substr)
	}
}

func TestInspectRefusesHostFileExploits(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	ctx := context.Background()
	q, _ := qemuimgtest.DataFileQcow2(t, dir)
	// Without the header check, qemu-img would read the host file.
	if _, err := Inspect(ctx, q, anyDisk); err == nil {
		t.Fatal("qcow2 with a data file pointing at a host file accepted")
	} else {
		wantRefused(t, err, "external data file")
	}
	v, _ := qemuimgtest.FlatExtentVMDK(t, dir)
	_, err := Inspect(ctx, v, anyDisk)
	wantRefused(t, err, "VMDK descriptor file")
	wantRefused(t, err, "FLAT")
	_, err = Inspect(ctx, v, Policy{Formats: []string{"vmdk"}, Format: "vmdk"})
	wantRefused(t, err, "VMDK descriptor file")
}

// TestJudgeSecondLine: qemu-img's own report refuses the same images when
// the header check is bypassed.
func TestJudgeSecondLine(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	ctx := context.Background()
	q := filepath.Join(dir, "data.qcow2")
	run(t, Binary, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"), q, "1M")
	info, err := ReadInfo(ctx, q, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(q)
	wantRefused(t, judge(info, "qcow2", abs, anyDisk), "external data file")

	base := filepath.Join(dir, "base.qcow2")
	run(t, Binary, "create", "-q", "-f", "qcow2", base, "1M")
	ov := filepath.Join(dir, "ov.qcow2")
	run(t, Binary, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, ov)
	info, err = ReadInfo(ctx, ov, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	wantRefused(t, judge(info, "qcow2", ov, anyDisk), "backing file")

	v, _ := qemuimgtest.FlatExtentVMDK(t, dir)
	info, err = ReadInfo(ctx, v, "vmdk")
	if err != nil {
		t.Fatal(err)
	}
	wantRefused(t, judge(info, "vmdk", v, anyDisk), "monolithicFlat")
	info.CreateType = "monolithicSparse"
	wantRefused(t, judge(info, "vmdk", v, anyDisk), "is another file")
}

func TestInspectBackingFiles(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	ctx := context.Background()
	base := filepath.Join(dir, "base.qcow2")
	run(t, Binary, "create", "-q", "-f", "qcow2", base, "1M")
	ov := filepath.Join(dir, "overlay.qcow2")
	run(t, Binary, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, ov)
	_, err := Inspect(ctx, ov, bases)
	wantRefused(t, err, "backing file")
	ov2 := filepath.Join(dir, "evil2.qcow2")
	run(t, Binary, "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "/etc/passwd", ov2, "1M")
	_, err = Inspect(ctx, ov2, bases)
	wantRefused(t, err, "backing file")
	// A VMDK whose parent is a host file.
	vb := filepath.Join(dir, "child.vmdk")
	pv := filepath.Join(dir, "parent.vmdk")
	run(t, Binary, "create", "-q", "-f", "vmdk", pv, "1M")
	run(t, Binary, "create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", pv, vb)
	_, err = Inspect(ctx, vb, anyDisk)
	wantRefused(t, err, "parent")
}

func TestInspectTruncatedQcow2(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	ctx := context.Background()
	q := filepath.Join(dir, "t.qcow2")
	run(t, Binary, "create", "-q", "-f", "qcow2", q, "64M")
	// Data in the image, so that tables point to the end of the file.
	raw := filepath.Join(dir, "d.raw")
	os.WriteFile(raw, bytes.Repeat([]byte{0xab}, 8<<20), 0o644)
	run(t, Binary, "convert", "-f", "raw", "-O", "qcow2", raw, q)
	if _, err := Inspect(ctx, q, bases); err != nil {
		t.Fatalf("whole image refused: %v", err)
	}
	if err := os.Truncate(q, 4<<20); err != nil {
		t.Fatal(err)
	}
	_, err := Inspect(ctx, q, bases)
	wantRefused(t, err, "truncated or damaged")
}

func TestInspectGoodImages(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	ctx := context.Background()
	for _, c := range []struct{ name, format, opts string }{
		{"a.qcow2", "qcow2", ""},
		{"a.vmdk", "vmdk", "subformat=streamOptimized"},
		{"b.vmdk", "vmdk", "subformat=monolithicSparse"},
		{"a.vhdx", "vhdx", ""},
		{"a.vhd", "vpc", "subformat=dynamic"},
	} {
		p := filepath.Join(dir, c.name)
		args := []string{"create", "-q", "-f", c.format}
		if c.opts != "" {
			args = append(args, "-o", c.opts)
		}
		run(t, Binary, append(args, p, "16M")...)
		info, err := Inspect(ctx, p, anyDisk)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if info.Format != c.format || info.VirtualSize < 16<<20 || info.Path != p {
			t.Errorf("%s: %+v", c.name, info)
		}
	}
	// A raw disk with an MBR.
	r := filepath.Join(dir, "disk.raw")
	run(t, Binary, "create", "-q", "-f", "raw", r, "16M")
	run(t, "sh", "-c", "echo 'label: dos' | sfdisk -q "+r)
	info, err := Inspect(ctx, r, bases)
	if err != nil || info.Format != "raw" || info.VirtualSize != 16<<20 {
		t.Fatalf("raw: %+v, %v", info, err)
	}
	// Policies: formats outside the list are refused with the hint.
	_, err = Inspect(ctx, filepath.Join(dir, "a.vmdk"), Policy{Formats: []string{"qcow2"}, Hint: "(convert it first)"})
	wantRefused(t, err, "a vmdk image; want qcow2 (convert it first)")
	_, err = Inspect(ctx, r, Policy{Formats: []string{"qcow2"}, Format: "raw"})
	wantRefused(t, err, "not supported")
	_, err = Inspect(ctx, r, Policy{Formats: []string{"qcow2", "raw"}, MaxVirtualSize: 1 << 20})
	wantRefused(t, err, "exceeds the limit")
}

func TestInspectNotImages(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	ctx := context.Background()
	txt := filepath.Join(dir, "page.img")
	os.WriteFile(txt, []byte("<html>404 Not Found</html>\n"), 0o644)
	_, err := Inspect(ctx, txt, bases)
	wantRefused(t, err, "not a disk image")
	_, err = Inspect(ctx, txt, Policy{Formats: bases.Formats, Format: "qcow2"})
	wantRefused(t, err, "declared format qcow2")
	_, err = Inspect(ctx, dir, bases)
	wantRefused(t, err, "not a regular file")
	_, err = Inspect(ctx, filepath.Join(dir, "missing"), bases)
	wantRefused(t, err, "no such file")
	// A device node is no image either.
	_, err = Inspect(ctx, "/dev/zero", bases)
	wantRefused(t, err, "not a regular file")
	// File names that qemu would read as protocols are plain files here.
	for _, name := range []string{"json:{\"driver\":\"file\"}", "nbd:localhost:10809", "http:x"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		wd, _ := os.Getwd()
		os.Chdir(dir)
		_, err := Inspect(ctx, name, bases)
		os.Chdir(wd)
		wantRefused(t, err, "not a disk image")
	}
}

func TestReadInfoNeedsFormat(t *testing.T) {
	if _, err := ReadInfo(context.Background(), "x", ""); err == nil {
		t.Fatal("ReadInfo without a format")
	}
}

func TestParsePercent(t *testing.T) {
	for s, want := range map[string]float64{"    (0.00/100%)": 0, "    (42.17/100%)": 42.17, "(100.00/100%)": 100} {
		if got, ok := parsePercent(s); !ok || got != want {
			t.Errorf("parsePercent(%q) = %v, %v", s, got, ok)
		}
	}
	for _, s := range []string{"", "42%", "(x/100%)"} {
		if _, ok := parsePercent(s); ok {
			t.Errorf("parsePercent(%q) ok", s)
		}
	}
}

func TestRunError(t *testing.T) {
	requireQemuImg(t)
	_, err := Run(context.Background(), "info", "-f", "qcow2", "/nonexistent/x.qcow2")
	if err == nil || !strings.Contains(err.Error(), "qemu-img info:") || !strings.Contains(err.Error(), "x.qcow2") {
		t.Fatalf("err = %v", err)
	}
}

func TestMain(m *testing.M) {
	if pidfile := os.Getenv("QEMUIMG_TEST_CHILD_PIDFILE"); pidfile != "" {
		// The helper process: run a "qemu-img" that records its pid and
		// sleeps; the test kills this process with SIGKILL.
		dir := filepath.Dir(pidfile)
		Binary = filepath.Join(dir, "fake-qemu-img")
		os.WriteFile(Binary, []byte("#!/bin/sh\necho $$ > "+pidfile+".tmp && mv "+pidfile+".tmp "+pidfile+"\nexec sleep 120\n"), 0o755)
		Run(context.Background(), "convert", "x", "y")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestChildDiesWithParent: a qemu-img whose ecs-image is killed (kill -9)
// does not run on (PDEATHSIG).
func TestChildDiesWithParent(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "pid")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := exec.Command(self, "-test.run=^$")
	helper.Env = append(os.Environ(), "QEMUIMG_TEST_CHILD_PIDFILE="+pidfile)
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	for i := 0; i < 200 && pid == 0; i++ {
		if b, err := os.ReadFile(pidfile); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pid == 0 {
		helper.Process.Kill()
		t.Fatal("the fake qemu-img did not start")
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		// A zombie is dead too (reaped by init later).
		if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && strings.Contains(string(st), ") Z ") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("qemu-img child %d still runs after its parent was killed", pid)
}

// FuzzProbe: the header probe never panics, and what it accepts as qcow2
// has neither a backing file nor an external data file in its header; what
// it accepts as VMDK is a sparse extent (not a descriptor naming others).
// The seeds are the hostile headers of issue 13.
func FuzzProbe(f *testing.F) {
	dir := f.TempDir()
	if _, err := exec.LookPath(Binary); err == nil {
		q, _ := qemuimgtest.DataFileQcow2(f, dir)
		v, _ := qemuimgtest.FlatExtentVMDK(f, dir)
		for _, p := range []string{q, v} {
			b, _ := os.ReadFile(p)
			f.Add(b[:min(len(b), 4096)])
		}
		for _, c := range [][]string{{"qcow2"}, {"vmdk", "-o", "subformat=streamOptimized"}, {"vhdx"}, {"vpc"}} {
			p := filepath.Join(dir, "seed."+c[0])
			args := append([]string{"create", "-q", "-f", c[0]}, c[1:]...)
			if exec.Command(Binary, append(args, p, "1M")...).Run() == nil {
				b, _ := os.ReadFile(p)
				f.Add(b[:min(len(b), 4096)])
			}
		}
	}
	f.Add([]byte("<html>404</html>"))
	f.Add([]byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/shadow\" 0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := probe(p, p)
		if err != nil {
			var ie *ImageError
			if !errors.As(err, &ie) {
				t.Fatalf("probe error %T %v", err, err)
			}
			return
		}
		switch got {
		case "qcow2":
			if len(data) < 72 || binary.BigEndian.Uint64(data[8:]) != 0 {
				t.Fatal("qcow2 with a backing file accepted")
			}
			if binary.BigEndian.Uint32(data[4:]) >= 3 && binary.BigEndian.Uint64(data[72:])&qcow2IncompatDataFile != 0 {
				t.Fatal("qcow2 with a data file accepted")
			}
		case "vmdk":
			if string(data[:4]) != "KDMV" {
				t.Fatal("a VMDK descriptor accepted")
			}
		}
	})
}
