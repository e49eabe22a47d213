// Package scripts holds the tests of the shell scripts beside them and of
// README.md's architecture table (architecture_test.go).
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// gitRepo makes a git repository in a temp directory with the given files
// (path → size in bytes) added to the index.
func gitRepo(t *testing.T, files map[string]int) string {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	run("init", "-q")
	for p, size := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(strings.Repeat("x", size)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run("add", "-A")
	return dir
}

func checkLargeFiles(t *testing.T, dir string) (string, error) {
	t.Helper()
	script, err := filepath.Abs("check-large-files.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LIMIT=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestCheckLargeFilesFails(t *testing.T) {
	dir := gitRepo(t, map[string]int{
		"README.md":                   10,
		"exp4.raw":                    1<<20 + 1,
		"pkg/testdata/big.img":        2 << 20,
		"templates/files/scratch.tar": 3 << 20,
	})
	out, err := checkLargeFiles(t, dir)
	if err == nil {
		t.Fatalf("check passed with large files tracked:\n%s", out)
	}
	for _, want := range []string{"exp4.raw (1048577 bytes)", "templates/files/scratch.tar", "over 1048576 bytes outside testdata/"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, not := range []string{"README.md", "testdata/big.img"} {
		if strings.Contains(out, not) {
			t.Errorf("output names %q:\n%s", not, out)
		}
	}
}

func TestCheckLargeFilesPasses(t *testing.T) {
	dir := gitRepo(t, map[string]int{
		"README.md":            10,
		"exactly.bin":          1 << 20,
		"pkg/testdata/big.img": 2 << 20,
	})
	if out, err := checkLargeFiles(t, dir); err != nil {
		t.Fatalf("check failed: %v\n%s", err, out)
	}
}
