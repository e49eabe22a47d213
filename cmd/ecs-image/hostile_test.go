package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/pflag"

	"github.com/ecs-image/ecs-image/qemuimg/qemuimgtest"
	"github.com/ecs-image/ecs-image/testenv"
)

// runHostile runs the CLI in-process with every flag of the command reset,
// returning exit code, stdout and stderr.
func runHostile(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	if c, _, err := rootCmd.Find(args); err == nil {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if sv, ok := f.Value.(pflag.SliceValue); ok {
				sv.Replace(nil)
			} else {
				f.Value.Set(f.DefValue)
			}
			f.Changed = false
		})
	}
	var out, errb bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetErr(&errb)
	defer rootCmd.SetOut(nil)
	defer rootCmd.SetErr(nil)
	code := runCLI(args)
	return code, out.String(), errb.String()
}

// TestHostileImagesRefused: the exploits (a qcow2 whose external
// data file is a host file, a VMDK descriptor whose FLAT extent is one) are
// refused by every command that opens an image, with exit 2, and nothing
// of the host file lands in an output.
func TestHostileImagesRefused(t *testing.T) {
	requireTool(t, "qemu-img")
	t.Setenv("ECS_IMAGE_CACHE", t.TempDir())
	dir := t.TempDir()
	q, _ := qemuimgtest.DataFileQcow2(t, dir)
	v, _ := qemuimgtest.FlatExtentVMDK(t, dir)
	out := t.TempDir()
	rel := t.TempDir()
	if data, err := os.ReadFile(q); err == nil {
		os.WriteFile(filepath.Join(rel, "ecs-1.0.qcow2"), data, 0o644)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"convert qcow2", []string{"convert", q, "-f", "raw", "-o", filepath.Join(out, "out.raw")}, "external data file"},
		{"convert -d", []string{"convert", q, "-f", "raw,vmdk", "-d", out}, "external data file"},
		{"convert vmdk", []string{"convert", v, "-f", "raw", "-o", filepath.Join(out, "out2.raw")}, "VMDK descriptor file"},
		{"test qcow2", []string{"test", q, "--no-https"}, "external data file"},
		{"test vmdk", []string{"test", v, "--no-https"}, "VMDK descriptor file"},
		{"base inspect qcow2", []string{"base", "inspect", q}, "external data file"},
		{"base inspect vmdk", []string{"base", "inspect", v}, "VMDK descriptor file"},
		{"base fetch", []string{"base", "fetch", q, "--insecure"}, "external data file"},
		{"release", []string{"release", rel}, "external data file"},
	} {
		code, stdout, stderr := runHostile(t, c.args...)
		if code != exitUsage || !strings.Contains(stderr, c.want) || stdout != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 naming %q", c.name, code, stdout, stderr, c.want)
		}
	}
	ents, _ := os.ReadDir(out)
	for _, e := range ents {
		t.Errorf("output left behind: %s", e.Name())
	}
}

// requireTool skips without tool, and fails in CI (CI=1), where every tool
// must be installed.
func requireTool(t *testing.T, tool string) {
	t.Helper()
	testenv.Tools(t, tool)
}

// deviceNode makes a character device (like /dev/full) in dir, or a fifo
// when mknod is not allowed.
func deviceNode(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := syscall.Mknod(p, syscall.S_IFCHR|0o666, 1<<8|7); err != nil {
		if err := syscall.Mkfifo(p, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// TestDeviceOutputsRefused: an output that exists and is not a regular file
// (a device node, a fifo, a directory) is refused with exit 2 and left as it
// was (issue 13: `cidata -o /dev/sdb` replaced the node with the secrets).
func TestDeviceOutputsRefused(t *testing.T) {
	requireTool(t, "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "in.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d := t.TempDir()
	outDir := t.TempDir()
	for _, c := range []struct {
		name string
		args func(dev string) []string
	}{
		{"cidata", func(dev string) []string { return []string{"cidata", "-e", defaultEnv, "-o", dev} }},
		{"env create", func(dev string) []string { return []string{"env", "create", "ecs.example.org", "--force", "-o", dev} }},
		{"convert -o", func(dev string) []string { return []string{"convert", img, "-f", "raw", "-o", dev} }},
		{"convert -d", func(dev string) []string { return []string{"convert", img, "-f", "raw,vmdk", "-d", outDir} }},
	} {
		name := strings.ReplaceAll(c.name, " ", "-")
		dev := deviceNode(t, d, name)
		if c.name == "convert -d" {
			dev = deviceNode(t, outDir, "in.vmdk")
		}
		before, _ := os.Lstat(dev)
		code, stdout, stderr := runHostile(t, c.args(dev)...)
		after, err := os.Lstat(dev)
		if code != exitUsage || !strings.Contains(stderr, "not a regular file") || !strings.Contains(stderr, dev) || stdout != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 naming %s", c.name, code, stdout, stderr, dev)
		}
		if err != nil || after.Mode() != before.Mode() {
			t.Errorf("%s: %s replaced (%v, %v)", c.name, dev, after, err)
		}
	}
	for _, dir := range []string{d, outDir} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.Type().IsRegular() || e.IsDir() {
				t.Errorf("left behind: %s", e.Name())
			}
		}
	}
}

// TestEnvCreateRefusesIPDomains: a domain whose last label is all digits is
// refused at the argument, exit 2, before any key is generated (issue 13:
// keys were generated, then "internal error", exit 1).
func TestEnvCreateRefusesIPDomains(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"192.168.1.1", "x.123", "1.2.3"} {
		out := filepath.Join(dir, d, "env.yml")
		code, stdout, stderr := runHostile(t, "env", "create", d, "-o", out)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, d) || !strings.Contains(stderr, "all digits") {
			t.Errorf("env create %s: exit %d, stdout %q, stderr %q", d, code, stdout, stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, d)); err == nil {
			t.Errorf("env create %s: output directory created", d)
		}
	}
}

// TestUnboundedInputsRefused: inputs named by flags are read up to 1 MiB;
// /dev/zero, a larger file and an endless pipe are refused with exit 2 and
// a message naming the flag (issue 13: fatal error: out of memory).
func TestUnboundedInputsRefused(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.yml")
	os.WriteFile(big, make([]byte, 2<<20), 0o600)
	envFile := filepath.Join(dir, "env.yml")
	data, err := os.ReadFile(defaultEnv)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(envFile, data, 0o600)
	disk := filepath.Join(dir, "d.raw")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		flag string
		args func(in string) []string
	}{
		{"extra", func(in string) []string {
			return []string{"env", "create", "ecs.example.org", "-o", filepath.Join(dir, "new", "env.yml"), "--extra", in}
		}},
		{"recipients", func(in string) []string {
			return []string{"env", "package", envFile, "-o", filepath.Join(dir, "pkg"), "--recipients", in}
		}},
		{"meta-data", func(in string) []string {
			return []string{"env", "package", envFile, "-o", filepath.Join(dir, "pkg"), "--meta-data", in}
		}},
		{"env", func(in string) []string { return []string{"test", disk, "--env", in} }},
		{"key-passphrase-file", func(in string) []string {
			return []string{"release", dir, "--key", envFile, "--key-passphrase-file", in}
		}},
	} {
		for _, in := range []string{"/dev/zero", big, fifo} {
			if in == fifo {
				go func() {
					// An endless writer; it stops when the reader is gone.
					f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
					if err != nil {
						return
					}
					defer f.Close()
					buf := make([]byte, 64<<10)
					for {
						if _, err := f.Write(buf); err != nil {
							return
						}
					}
				}()
			}
			code, _, stderr := runHostile(t, c.args(in)...)
			if code != exitUsage || !strings.Contains(stderr, "--"+c.flag+": ") || !strings.Contains(stderr, in) {
				t.Errorf("--%s %s: exit %d, stderr %q", c.flag, in, code, stderr)
			}
		}
	}
	for _, p := range []string{"new", "pkg"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s created", p)
		}
	}
}

// TestConvertRefusesOverwrite: an existing output is kept unless --force
// (issue 13: convert silently replaced it).
func TestConvertRefusesOverwrite(t *testing.T) {
	requireTool(t, "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "in.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	out := filepath.Join(dir, "out.raw")
	inDir := filepath.Join(dir, "in.vmdk")
	for _, p := range []string{out, inDir} {
		os.WriteFile(p, []byte("keep me"), 0o644)
	}
	for _, args := range [][]string{
		{"convert", img, "-f", "raw", "-o", out},
		{"convert", img, "-f", "raw,vmdk", "-d", dir},
	} {
		code, _, stderr := runHostile(t, args...)
		if code != exitUsage || !strings.Contains(stderr, "file exists (use --force to overwrite)") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
	for _, p := range []string{out, inDir} {
		if b, _ := os.ReadFile(p); string(b) != "keep me" {
			t.Errorf("%s replaced", p)
		}
	}
	if code, _, stderr := runHostile(t, "convert", img, "-f", "raw", "-o", out, "--force"); code != exitOK {
		t.Errorf("--force: exit %d %s", code, stderr)
	}
	if b, _ := os.ReadFile(out); string(b) == "keep me" {
		t.Error("--force did not replace the output")
	}
}
