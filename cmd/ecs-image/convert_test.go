package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"

	"github.com/spf13/pflag"
)

// runConvert runs convert in-process with the --format list reset (a slice
// flag appends across runs).
func runConvert(t *testing.T, args ...string) (int, string) {
	t.Helper()
	c, _, err := rootCmd.Find([]string{"convert"})
	if err != nil {
		t.Fatal(err)
	}
	f := c.Flags().Lookup("format")
	if err := f.Value.(pflag.SliceValue).Replace(nil); err != nil {
		t.Fatal(err)
	}
	f.Changed = false
	code, _, errs := runEnvCLI(t, append([]string{"convert"}, args...)...)
	return code, errs
}

// TestConvertCreatesOutputDir: -d DIR and the parent of -o OUT are created
// when missing (issue 12: they used to fail with exit 2).
func TestConvertCreatesOutputDir(t *testing.T) {
	testenv.Tool(t, "qemu-img", "make deps")
	dir := t.TempDir()
	in := filepath.Join(dir, "small.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", in, "4M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	outDir := filepath.Join(dir, "out", "formats")
	if code, errs := runConvert(t, in, "-f", "raw,vhd", "-d", outDir, "-o", ""); code != exitOK {
		t.Fatalf("convert -d missing dir: exit %d: %s", code, errs)
	}
	for _, n := range []string{"small.raw", "small.vhd"} {
		if _, err := os.Stat(filepath.Join(outDir, n)); err != nil {
			t.Error(err)
		}
	}
	out := filepath.Join(dir, "one", "small.raw")
	if code, errs := runConvert(t, in, "-f", "raw", "-o", out, "-d", ""); code != exitOK {
		t.Fatalf("convert -o in missing dir: exit %d: %s", code, errs)
	}
	if _, err := os.Stat(out); err != nil {
		t.Error(err)
	}
	// A file in the way is bad input; nothing is created.
	if code, _ := runConvert(t, in, "-f", "raw", "-d", filepath.Join(in, "sub"), "-o", ""); code != exitUsage {
		t.Errorf("-d under a file: exit %d, want 2", code)
	}
}
