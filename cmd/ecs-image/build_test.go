package main

import (
	"io"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/spf13/pflag"
)

func TestParseSet(t *testing.T) {
	var o builder.Options
	if err := parseSet([]string{"version=1.4.0", "version=1.4.1"}, &o); err != nil || o.Version != "1.4.1" {
		t.Fatalf("version: %v %q", err, o.Version)
	}
	for _, bad := range []string{"version", "version=", "version=1 0", "name=x", "=1"} {
		err := parseSet([]string{bad}, &o)
		if err == nil || !isBadInput(err) {
			t.Errorf("--set %s: %v, want bad input", bad, err)
		}
	}
	// Refused before anything is built: exit 2.
	resetSet(t)
	if code, _, errs := runEnvCLI(t, "build", "does-not-exist.yml", "--set", "colour=blue"); code != exitUsage {
		t.Errorf("build --set colour=blue: exit %d (%s)", code, errs)
	}
	if err := parseSet([]string{"name=x"}, &o); !strings.Contains(err.Error(), `unknown key "name" (keys: version)`) {
		t.Errorf("message: %v", err)
	}
}

func TestOnErrorFlag(t *testing.T) {
	defer func(f func() bool) { stdinTerminal = f }(stdinTerminal)
	stdinTerminal = func() bool { return false }
	var o builder.Options
	for _, m := range []string{"cleanup", "abort"} {
		if err := onErrorOptions(m, &o, strings.NewReader(""), io.Discard); err != nil || o.OnError != m || o.Ask != nil {
			t.Errorf("%s: %v %+v", m, err, o)
		}
	}
	if err := onErrorOptions("keep", &o, nil, io.Discard); !isBadInput(err) {
		t.Errorf("keep: %v", err)
	}
	// ask without a terminal on stdin: refused before anything runs, exit 2.
	err := onErrorOptions("ask", &o, strings.NewReader(""), io.Discard)
	if !isBadInput(err) || !strings.Contains(err.Error(), "needs a terminal") {
		t.Errorf("ask without a terminal: %v", err)
	}
	for _, args := range [][]string{{"--on-error=ask"}, {"--on-error", "keep"}} {
		resetSet(t)
		code, _, errs := runEnvCLI(t, append([]string{"build", "does-not-exist.yml", "--set", "version=1"}, args...)...)
		if code != exitUsage {
			t.Errorf("build %v: exit %d, want 2 (%s)", args, code, errs)
		}
	}
	_ = buildCmd.Flags().Set("on-error", "cleanup")

	// ask on a terminal: the answers, with unknown ones asked again.
	stdinTerminal = func() bool { return true }
	var out strings.Builder
	if err := onErrorOptions("ask", &o, strings.NewReader("what\nR\na\n\nc\n"), &out); err != nil || o.Ask == nil {
		t.Fatalf("ask: %v", err)
	}
	for _, want := range []string{builder.AskRetry, builder.AskAbort, builder.AskCleanup, builder.AskCleanup} {
		if got, err := o.Ask("step failed"); got != want || err != nil {
			t.Errorf("answer %q (%v), want %q", got, err, want)
		}
	}
	if got, err := o.Ask("step failed"); got != builder.AskCleanup || err == nil {
		t.Errorf("at end of input: %q %v, want cleanup and the error", got, err)
	}
	if !strings.Contains(out.String(), `unknown answer "what"`) || !strings.Contains(out.String(), "[r]etry") {
		t.Errorf("prompt: %q", out.String())
	}
}

// resetSet empties --set (a slice flag appends across in-process runs).
func resetSet(t *testing.T) {
	t.Helper()
	f := buildCmd.Flags().Lookup("set")
	if err := f.Value.(pflag.SliceValue).Replace(nil); err != nil {
		t.Fatal(err)
	}
	f.Changed = false
}
