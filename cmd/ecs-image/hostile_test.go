package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/ecs-image/ecs-image/qemuimg/qemuimgtest"
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
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed in CI: %v", tool, err)
		}
		t.Skipf("%s not installed (make deps)", tool)
	}
}
