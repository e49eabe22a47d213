package provisioners

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
)

// Shell runs an inline script or a local script file in the guest, with
// environment variables, as root by default. Output is streamed to the log
// line by line; a non-zero exit fails the build and shows the last lines.
type Shell struct {
	// Inline is a list of commands, run as one script with "set -e".
	Inline []string `yaml:"inline"`
	// Script is a local script file (relative to the template), run with
	// its own interpreter line, or Interpreter.
	Script string `yaml:"script"`
	// Env are environment variables for the script.
	Env map[string]string `yaml:"env"`
	// Sudo runs the script as root (default true).
	Sudo *bool `yaml:"sudo"`
	// Interpreter runs the script (default /bin/sh).
	Interpreter string `yaml:"interpreter"`
}

var envName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`) })

// Type implements Provisioner.
func (*Shell) Type() string { return "shell" }

// Check implements Provisioner.
func (s *Shell) Check(dir string) []FieldError {
	var errs []FieldError
	switch {
	case len(s.Inline) == 0 && s.Script == "":
		errs = append(errs, fieldErr("inline", "required (or script)"))
	case len(s.Inline) > 0 && s.Script != "":
		errs = append(errs, fieldErr("script", "give inline or script, not both"))
	case s.Script != "":
		s.Script = absPath(dir, s.Script)
		if fi, err := os.Stat(s.Script); err != nil {
			errs = append(errs, fieldErr("script", "%v", cleanErr(err)))
		} else if !fi.Mode().IsRegular() {
			errs = append(errs, fieldErr("script", "%s is not a regular file", s.Script))
		}
	}
	for k := range s.Env {
		if !envName().MatchString(k) {
			errs = append(errs, fieldErr("env."+k, "%q is not a valid environment variable name", k))
		}
	}
	if s.Interpreter != "" && !strings.HasPrefix(s.Interpreter, "/") {
		errs = append(errs, fieldErr("interpreter", "%q is not an absolute path", s.Interpreter))
	}
	return errs
}

// CheckProduction implements Provisioner: nothing a production variant refuses.
func (*Shell) CheckProduction() []FieldError { return nil }

// Requires implements Provisioner: commands may need the running system,
// so they run booted unless the stage asks for a chroot.
func (*Shell) Requires() Requirement { return Requirement{Need: NeedBoot} }

// Inputs implements Provisioner.
func (s *Shell) Inputs() []string {
	if s.Script == "" {
		return nil
	}
	return []string{s.Script}
}

func (s *Shell) sudo() bool { return s.Sudo == nil || *s.Sudo }

// scriptText is the script to run.
func (s *Shell) scriptText() ([]byte, error) {
	if s.Script != "" {
		return os.ReadFile(s.Script)
	}
	return []byte("set -e\n" + strings.Join(s.Inline, "\n") + "\n"), nil
}

// Command is the guest command line that runs the script read from stdin.
func (s *Shell) Command(vars map[string]string) string {
	interp := s.Interpreter
	if interp == "" {
		interp = "/bin/sh"
	}
	words := []string{}
	if s.sudo() {
		words = append(words, "sudo", "-n")
	}
	words = append(words, "env")
	words = append(words, envAssignments(vars, s.Env)...)
	// The script is written to a private temporary file so that it may read
	// its own standard input and use its interpreter line.
	inner := fmt.Sprintf(`f=$(mktemp) && trap 'rm -f "$f"' EXIT && cat >"$f" && chmod 0700 "$f" && %s "$f"`, shellQuote(interp))
	if s.Script != "" && s.Interpreter == "" {
		inner = `f=$(mktemp) && trap 'rm -f "$f"' EXIT && cat >"$f" && chmod 0700 "$f" && if head -c2 "$f" | grep -q '^#!'; then "$f"; else /bin/sh "$f"; fi </dev/null`
	} else {
		inner += " </dev/null"
	}
	words = append(words, "/bin/sh", "-c", shellQuote(inner))
	return strings.Join(words, " ")
}

// Run implements Runner.
func (s *Shell) Run(ctx context.Context, e *Env) error {
	script, err := s.scriptText()
	if err != nil {
		return err
	}
	tail := newTail(40)
	err = e.Guest.Run(ctx, s.Command(e.Vars), bytes.NewReader(script), func(l string) {
		tail.add(l)
		e.Log.Info(l)
	})
	if err != nil {
		return fmt.Errorf("shell: %w\nlast output:\n%s", err, tail)
	}
	return nil
}

// tail keeps the last n lines of output.
type tail struct {
	n     int
	lines []string
}

func newTail(n int) *tail { return &tail{n: n} }

func (t *tail) add(l string) {
	t.lines = append(t.lines, l)
	if len(t.lines) > t.n {
		t.lines = t.lines[len(t.lines)-t.n:]
	}
}

func (t *tail) String() string {
	if len(t.lines) == 0 {
		return "  (no output)"
	}
	return "  " + strings.Join(t.lines, "\n  ")
}
