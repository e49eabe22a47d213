//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// binDir holds ecs-image and ecs-agent, built once for the whole run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ecs-image-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, c := range []string{"ecs-image", "ecs-agent"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../cmd/"+c)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", c, err)
			os.Exit(1)
		}
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ecsImagePath is the path of the ecs-image binary under test.
func ecsImagePath() string { return filepath.Join(binDir, "ecs-image") }

// ecsAgentPath is the path of the static ecs-agent binary under test.
func ecsAgentPath() string { return filepath.Join(binDir, "ecs-agent") }

// ecsImage runs ecs-image with args and returns its stdout; the test fails
// (showing stderr) when it exits non-zero.
func ecsImage(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := ecsImageRun(args...)
	if err != nil {
		t.Fatalf("ecs-image %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// ecsImageRun runs ecs-image and returns stdout, stderr and the exit error.
func ecsImageRun(args ...string) (string, string, error) {
	cmd := exec.Command(ecsImagePath(), args...)
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

var (
	baseOnce sync.Once
	basePath string
	baseErr  error
)

// baseImage returns the local Debian 12 base qcow2, built from the package
// mirror with `ecs-image base build` (cached per machine; the first call in
// a fresh cache takes a few minutes). Its stdout is the cached image's path.
func baseImage(t *testing.T) string {
	t.Helper()
	baseOnce.Do(func() {
		out, errOut, err := ecsImageRun("base", "build")
		if err != nil {
			baseErr = fmt.Errorf("ecs-image base build: %v\n%s", err, errOut)
			return
		}
		basePath = strings.TrimSpace(out)
	})
	if baseErr != nil {
		t.Fatal(baseErr)
	}
	return basePath
}
