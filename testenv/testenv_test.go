package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// recorder records whether Missing failed or skipped; both stop the
// goroutine as the real ones do.
type recorder struct {
	testing.TB
	failed, skipped string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatal(args ...any) {
	r.failed = args[0].(string)
	runtime.Goexit()
}
func (r *recorder) Skip(args ...any) {
	r.skipped = args[0].(string)
	runtime.Goexit()
}

func run(t *testing.T, f func(tb testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func TestCI(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "false": false, "1": true, "true": true} {
		t.Setenv("CI", v)
		if CI() != want {
			t.Errorf("CI=%q: CI() = %v", v, !want)
		}
	}
}

func TestMissingFailsInCIAndSkipsElsewhere(t *testing.T) {
	t.Setenv("CI", "1")
	r := run(t, func(tb testing.TB) { Missing(tb, "frob %d", 7) })
	if r.skipped != "" || !strings.HasPrefix(r.failed, "frob 7 (CI must provide it") {
		t.Errorf("CI: failed %q skipped %q", r.failed, r.skipped)
	}
	t.Setenv("CI", "")
	r = run(t, func(tb testing.TB) { Missing(tb, "frob %d", 7) })
	if r.failed != "" || r.skipped != "frob 7" {
		t.Errorf("not CI: failed %q skipped %q", r.failed, r.skipped)
	}
}

func TestToolLooksInGoBin(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "ecs-testenv-tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CI", "1")
	t.Setenv("GOBIN", dir)
	var got string
	r := run(t, func(tb testing.TB) { got = Tool(tb, "ecs-testenv-tool", "x") })
	if got != exe || r.failed != "" {
		t.Errorf("Tool = %q, failed %q", got, r.failed)
	}
	r = run(t, func(tb testing.TB) { Tool(tb, "ecs-testenv-no-such-tool", "go install it") })
	if !strings.Contains(r.failed, "ecs-testenv-no-such-tool is not installed (go install it)") {
		t.Errorf("missing tool in CI: failed %q skipped %q", r.failed, r.skipped)
	}
	r = run(t, func(tb testing.TB) { File(tb, filepath.Join(dir, "nope"), "make it") })
	if !strings.Contains(r.failed, "nope: no such file or directory (make it)") {
		t.Errorf("missing file in CI: failed %q", r.failed)
	}
}
