package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// buildAgent builds the agent with the given go build flags.
func buildAgent(t *testing.T, flags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ecs-agent")
	cmd := exec.Command("go", append(append([]string{"build", "-o", bin}, flags...), ".")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return bin
}

// TestVersionPlainBuild: a plain go build (no -ldflags) in the git work
// tree, as a user's go build makes it (-buildvcs=true: GOFLAGS may turn
// stamping off here): the commit comes from the Go build information.
func TestVersionPlainBuild(t *testing.T) {
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skip("not in a git work tree")
	}
	if fi, err := os.Stat(filepath.Join(strings.TrimSpace(string(top)), ".git")); err != nil || !fi.IsDir() {
		t.Skip("a linked git worktree: go build stamps VCS information only where .git is a directory")
	}
	bin := buildAgent(t, "-buildvcs=true")
	o, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	out := string(o)
	if !strings.HasPrefix(out, "ecs-agent ") || !strings.Contains(out, "go:     "+runtime.Version()) {
		t.Fatalf("version: %q", out)
	}
	if head, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		if !strings.Contains(out, "commit: "+strings.TrimSpace(string(head))) {
			t.Errorf("version does not name the commit %s:\n%s", head, out)
		}
	}
	if strings.HasPrefix(out, "ecs-agent dev\n") && strings.Contains(out, "commit: unknown") {
		t.Errorf("version reports nothing a go build records:\n%s", out)
	}
	flag, err := exec.Command(bin, "--version").Output()
	if err != nil || string(flag) != out {
		t.Fatalf("--version: %v, %q, want %q", err, flag, out)
	}
}

// TestVersionLdflags: the Makefile's -X values win.
func TestVersionLdflags(t *testing.T) {
	bin := buildAgent(t, "-ldflags", "-X main.version=v9.8.7-1-gabcdef0 -X main.commit=abcdef0 -X main.date=2026-12-06T01:00:00Z")
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "ecs-agent v9.8.7-1-gabcdef0\n  commit: abcdef0\n  date:   2026-12-06T01:00:00Z\n  go:     " + runtime.Version() + " linux/amd64 (CGO_ENABLED=0)\n"
	if string(out) != want {
		t.Fatalf("got %q\nwant %q", out, want)
	}
}
