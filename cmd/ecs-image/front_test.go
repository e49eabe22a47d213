package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

// buildFront builds the front program (-tags ecsfront) into dir/ecs-image
// and puts this test binary, which runs the complete CLI when
// ECS_IMAGE_TEST_AS_MAIN=1 (TestMain), where the front looks for the
// complete program: dir/libexec/ecs-image.
func buildFront(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	front := filepath.Join(dir, "ecs-image")
	cmd := exec.Command("go", "build", "-tags", "ecsfront", "-o", front, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags ecsfront: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "libexec"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(dir, "libexec", "ecs-image")); err != nil {
		t.Fatal(err)
	}
	return front
}

type cliResult struct {
	code        int
	out, errOut string
}

// runBinary runs bin args with ECS_IMAGE_TEST_AS_MAIN=1 (the test binary
// as the complete program) in dir.
func runBinary(t *testing.T, dir, bin string, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "ECS_IMAGE_TEST_AS_MAIN=1"), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return cliResult{code, out.String(), errOut.String()}
}

// TestFrontProgramIsTheSameCLI: whether the front runs a command itself
// (version, cidata) or executes the complete program (everything else,
// help, errors), a user sees what the complete program alone shows: the
// same output, errors, exit codes and files.
func TestFrontProgramIsTheSameCLI(t *testing.T) {
	front := buildFront(t)
	self, _ := os.Executable()
	env, err := filepath.Abs("../../cidata/testdata/env.yml")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	sde := []string{"SOURCE_DATE_EPOCH=1700000000"}
	for _, args := range [][]string{
		{"--help"},
		{"help", "cidata"},
		{"cidata", "--help"},
		{"cidata", "inspect", "--help"},
		{"build", "--help"},
		{"bogus"},
		{"cidata"},
		{"cidata", "-e", env},
		{"cidata", "--bogus"},
		{"cidata", "-e", "missing.yml", "-o", "x.iso"},
		{"cidata", "-e", env, "-o", "missing-dir/x.iso"},
		{"--log-level", "nonsense", "cidata", "-e", env, "-o", "x.iso"},
		{"version", "extra"},
		{"env", "validate", env},
	} {
		name := strings.Join(args, " ")
		want := runBinary(t, work, self, sde, args...)
		got := runBinary(t, work, front, sde, args...)
		if got != want {
			t.Errorf("%s: front gave exit %d\nstdout %q\nstderr %q\nthe complete program exit %d\nstdout %q\nstderr %q",
				name, got.code, got.out, got.errOut, want.code, want.out, want.errOut)
		}
	}

	// The same seed image, byte for byte, and inspect reads it the same.
	for _, r := range []struct {
		bin, out string
	}{{self, "complete.iso"}, {front, "front.iso"}} {
		if res := runBinary(t, work, r.bin, sde, "--log-level", "warn", "cidata", "-e", env, "-o", r.out, "--format", "config-2"); res.code != 0 || res.out != r.out+"\n" {
			t.Fatalf("%s cidata: %+v", r.bin, res)
		}
	}
	a, _ := os.ReadFile(filepath.Join(work, "complete.iso"))
	b, _ := os.ReadFile(filepath.Join(work, "front.iso"))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("the front's seed image differs from the complete program's (%d, %d bytes)", len(b), len(a))
	}
	want := runBinary(t, work, self, nil, "cidata", "inspect", "complete.iso", "--json")
	got := runBinary(t, work, front, nil, "cidata", "inspect", "complete.iso", "--json")
	if got != want || got.code != 0 {
		t.Errorf("cidata inspect: front %+v, complete %+v", got, want)
	}

	// version runs in the front (it has no libexec/ once it is copied
	// alone); --version is the complete program's.
	alone := filepath.Join(t.TempDir(), "ecs-image")
	copyFile(t, front, alone)
	v := runBinary(t, work, alone, nil, "version")
	if v.code != 0 || !strings.HasPrefix(v.out, "ecs-image ") || !strings.Contains(v.out, "\n  go:     ") {
		t.Errorf("version: %+v", v)
	}
	// `version` alone takes a short cut past cobra; with a flag it does not.
	if v2 := runBinary(t, work, alone, nil, "--log-level", "warn", "version"); v2 != v {
		t.Errorf("version: %+v; through cobra: %+v", v, v2)
	}
	if v := runBinary(t, work, front, nil, "--version"); v.code != 0 || !strings.HasPrefix(v.out, "ecs-image ") {
		t.Errorf("--version: %+v", v)
	}
}

// TestFrontProgramWithoutTheCompleteOne: a front installed alone runs its
// own commands and says clearly where it looked for the rest; a front
// copied over its own libexec program does not execute itself forever.
func TestFrontProgramWithoutTheCompleteOne(t *testing.T) {
	front := buildFront(t)
	dir := t.TempDir()
	alone := filepath.Join(dir, "ecs-image")
	copyFile(t, front, alone)
	env, _ := filepath.Abs("../../cidata/testdata/env.yml")
	if r := runBinary(t, dir, alone, nil, "--log-level", "warn", "cidata", "-e", env, "-o", "seed.iso"); r.code != 0 {
		t.Errorf("cidata without the complete program: %+v", r)
	}
	r := runBinary(t, dir, alone, nil, "build", "--help")
	if r.code != exitFailure || !strings.Contains(r.errOut, filepath.Join(dir, "libexec", "ecs-image")) || !strings.Contains(r.errOut, "not installed") {
		t.Errorf("build without the complete program: %+v", r)
	}
	if err := os.Mkdir(filepath.Join(dir, "libexec"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(alone, filepath.Join(dir, "libexec", "ecs-image")); err != nil {
		t.Fatal(err)
	}
	if r := runBinary(t, dir, alone, nil, "build", "--help"); r.code != exitFailure || !strings.Contains(r.errOut, "not installed") {
		t.Errorf("front as its own complete program: %+v", r)
	}
}

// TestFrontProgramLinksNoHeavyPackage: what makes the complete program
// slow to start (the init functions of the AWS SDK, the registry client,
// the builder and its QEMU drivers, PDF and template packages) is not
// linked into the front.
func TestFrontProgramLinksNoHeavyPackage(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "ecsfront", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	deps := strings.Fields(string(out))
	for _, d := range deps {
		for _, heavy := range []string{
			"github.com/aws/", "github.com/google/go-containerregistry", "github.com/go-pdf/",
			"github.com/ecs-image/ecs-image/builder", "github.com/ecs-image/ecs-image/formats",
			"github.com/ecs-image/ecs-image/release", "github.com/klauspost/compress",
			"github.com/hashicorp/",
		} {
			if strings.HasPrefix(d, heavy) {
				t.Errorf("the front program links %s", d)
			}
		}
	}
	if len(deps) > 320 {
		t.Errorf("the front program links %d packages (270 when written)", len(deps))
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestFrontProgramWithoutProc: in a chroot without /proc (as the .deb's
// install test runs it) the front finds itself through argv[0] and $PATH
// instead of /proc/self/exe. Root only: it unmounts /proc in a private
// mount namespace.
func TestFrontProgramWithoutProc(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (unshare -m, umount /proc)")
	}
	testenv.Tool(t, "unshare", "util-linux")
	if out, err := exec.Command("unshare", "-m", "true").CombinedOutput(); err != nil {
		t.Skipf("no private mount namespace here (a container without CAP_SYS_ADMIN?): %v %s", err, out)
	}
	front := buildFront(t)
	want := runBinary(t, t.TempDir(), front, nil, "build", "--help")
	for _, how := range []string{front, "ecs-image"} {
		script := "umount -l /proc && test ! -e /proc/self/exe && exec " + how + " build --help"
		r := runBinary(t, t.TempDir(), "unshare", []string{"PATH=" + filepath.Dir(front) + ":" + os.Getenv("PATH")}, "-m", "sh", "-c", script)
		if r != want {
			t.Errorf("without /proc, as %s: %+v, want %+v", how, r, want)
		}
	}
}
