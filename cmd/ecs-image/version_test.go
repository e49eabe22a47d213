package main

import (
	"runtime"
	"strings"
	"testing"
)

func TestVersionCommandAndFlag(t *testing.T) {
	code, out, errs := runEnvCLI(t, "version")
	if code != exitOK || errs != "" {
		t.Fatalf("version: exit %d, stderr %q", code, errs)
	}
	for _, w := range []string{"ecs-image ", "\n  commit: ", "\n  go:     " + runtime.Version()} {
		if !strings.Contains(out, w) {
			t.Errorf("version output lacks %q:\n%s", w, out)
		}
	}
	code, flag, _ := runEnvCLI(t, "--version")
	if code != exitOK || flag != out {
		t.Fatalf("--version: exit %d, %q, want %q", code, flag, out)
	}
}
