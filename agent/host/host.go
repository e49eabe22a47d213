// Package host is the agent's view of the machine it runs on: every path is
// resolved under a root directory (so tests can run the agent against a
// temporary tree) and every external command goes through a Runner (so tests
// can record commands instead of running them).
package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// Cmd is one external command.
type Cmd struct {
	Name  string
	Args  []string
	Env   []string  // extra KEY=VALUE entries appended to the agent's environment
	Stdin io.Reader // optional; never logged (may carry secrets)
	// Stdout and Stderr, when set, receive the output as it is produced
	// (long-running commands); Run then returns no output.
	Stdout, Stderr io.Writer
}

// String renders the command line for logs and recordings.
func (c Cmd) String() string {
	parts := append([]string{c.Name}, c.Args...)
	for i, p := range parts {
		if p == "" || strings.ContainsAny(p, " \t\n'\"\\$") {
			parts[i] = "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
		}
	}
	return strings.Join(parts, " ")
}

// Runner runs external commands.
type Runner interface {
	// Run runs c to completion and returns its standard output (unless
	// c.Stdout is set). A non-zero exit is an error that includes the
	// command's standard error.
	Run(ctx context.Context, c Cmd) ([]byte, error)
}

// ExecRunner runs commands for real. Cancelling the context sends SIGTERM
// and, after Grace, SIGKILL.
type ExecRunner struct {
	Grace time.Duration
}

// Run implements Runner.
func (r ExecRunner) Run(ctx context.Context, c Cmd) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = r.Grace
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 30 * time.Second
	}
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.Stdin = c.Stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(c.Stderr, &tailWriter{buf: &stderr})
	}
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return stdout.Bytes(), fmt.Errorf("%s: %w: %s", c.Name, err, lastLines(msg, 5))
		}
		return stdout.Bytes(), fmt.Errorf("%s: %w", c.Name, err)
	}
	return stdout.Bytes(), nil
}

// tailWriter keeps only the last few KiB written to it.
type tailWriter struct{ buf *bytes.Buffer }

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if t.buf.Len() > 8192 {
		b := t.buf.Bytes()[t.buf.Len()-4096:]
		nb := append([]byte(nil), b...)
		t.buf.Reset()
		t.buf.Write(nb)
	}
	return len(p), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Recorder is a Runner that runs nothing: it records each command line and
// answers from Responses (matched by command-line prefix, longest first).
// It is safe for concurrent use.
type Recorder struct {
	mu        sync.Mutex
	Commands  []string
	Responses map[string]Response
	// Log, when set, receives one line per command (e.g. a file under --root).
	Log io.Writer
}

// Response is a canned answer of a Recorder.
type Response struct {
	Stdout string
	Err    error
}

// Run implements Runner.
func (r *Recorder) Run(ctx context.Context, c Cmd) ([]byte, error) {
	line := c.String()
	r.mu.Lock()
	r.Commands = append(r.Commands, line)
	if r.Log != nil {
		fmt.Fprintln(r.Log, line)
	}
	var best string
	var resp Response
	found := false
	for prefix, rr := range r.Responses {
		if strings.HasPrefix(line, prefix) && (!found || len(prefix) > len(best)) {
			best, resp, found = prefix, rr, true
		}
	}
	r.mu.Unlock()
	if c.Stdin != nil {
		_, _ = io.Copy(io.Discard, c.Stdin)
	}
	if c.Stdout != nil {
		_, _ = io.WriteString(c.Stdout, resp.Stdout)
		return nil, resp.Err
	}
	return []byte(resp.Stdout), resp.Err
}

// Recorded returns a copy of the command lines recorded so far.
func (r *Recorder) Recorded() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.Commands...)
}

// Host is the machine the agent acts on.
type Host struct {
	Root   string // "/" on a real appliance
	Runner Runner
}

// New returns a Host rooted at root ("" means "/").
func New(root string, r Runner) *Host {
	if root == "" {
		root = "/"
	}
	return &Host{Root: root, Runner: r}
}

// IsRealRoot reports whether the host acts on the real filesystem root.
func (h *Host) IsRealRoot() bool { return h.Root == "/" || h.Root == "" }

// Path maps an absolute in-appliance path to the real path under Root.
func (h *Host) Path(p string) string {
	if h.IsRealRoot() {
		return filepath.Clean("/" + p)
	}
	return filepath.Join(h.Root, filepath.Clean("/"+p))
}

// Run runs a command through the Runner.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return h.Runner.Run(ctx, Cmd{Name: name, Args: args})
}

// RunCmd runs c through the Runner.
func (h *Host) RunCmd(ctx context.Context, c Cmd) ([]byte, error) {
	return h.Runner.Run(ctx, c)
}

// ReadFile reads an in-appliance path.
func (h *Host) ReadFile(p string) ([]byte, error) { return os.ReadFile(h.Path(p)) }

// Exists reports whether an in-appliance path exists (symlinks not followed).
func (h *Host) Exists(p string) bool {
	_, err := os.Lstat(h.Path(p))
	return err == nil
}

// MkdirAll creates an in-appliance directory and its parents.
func (h *Host) MkdirAll(p string, mode fs.FileMode) error {
	return os.MkdirAll(h.Path(p), mode)
}

// Remove removes an in-appliance file; a missing file is not an error.
func (h *Host) Remove(p string) error {
	err := os.Remove(h.Path(p))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// WriteFile writes data to an in-appliance path atomically (temp file in
// the same directory, fsync, rename) with the given mode, creating parent
// directories. It reports whether the content or mode changed; an unchanged
// file is not rewritten.
func (h *Host) WriteFile(p string, data []byte, mode fs.FileMode) (changed bool, err error) {
	real := h.Path(p)
	if old, err := os.ReadFile(real); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(real); err == nil && st.Mode().Perm() == mode.Perm() {
			return false, nil
		}
		return true, os.Chmod(real, mode.Perm())
	}
	// A replaced file keeps its owner and group (e.g. PostgreSQL's
	// pg_hba.conf, postgres:postgres 0640, must stay readable by postgres).
	return true, atomicfile.Write(real, data, mode.Perm(), atomicfile.KeepOwner(), atomicfile.MkdirAll(0o755))
}

// Symlink makes link (in-appliance path) point at target (in-appliance
// absolute path). The link is stored relative (../data/etc), so it resolves
// the same inside the appliance and under a test root. An existing correct
// link is left alone.
func (h *Host) Symlink(target, link string) (changed bool, err error) {
	real := h.Path(link)
	rel, err := filepath.Rel(filepath.Dir(filepath.Clean("/"+link)), filepath.Clean("/"+target))
	if err != nil {
		return false, err
	}
	if cur, err := os.Readlink(real); err == nil && (cur == rel || cur == filepath.Clean("/"+target)) {
		return false, nil // also accept an absolute link made inside the appliance
	}
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		return false, err
	}
	tmp := real + ".tmp-link"
	os.Remove(tmp)
	if err := os.Symlink(rel, tmp); err != nil {
		return false, err
	}
	return true, os.Rename(tmp, real)
}
