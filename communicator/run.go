package communicator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
)

// RunOptions configure one remote command.
type RunOptions struct {
	// Env is exported to the command (through the shell: sshd usually
	// refuses SSH environment requests). Values are never logged.
	Env map[string]string
	// Sudo runs the command as root with `sudo -n` (the login user needs
	// password-less sudo, as the build user has).
	Sudo bool
	// Stdout and Stderr receive the command's output line by line, as it
	// comes, without the newline. Nil discards.
	Stdout, Stderr func(line string)
	// Stdin feeds the command's standard input; nil gives it none.
	Stdin io.Reader
}

// ExitError is a remote command that exited non-zero (or by a signal).
type ExitError struct {
	Cmd    string
	Code   int
	Signal string
}

func (e *ExitError) Error() string {
	if e.Signal != "" {
		return fmt.Sprintf("remote command %q killed by signal %s", short(e.Cmd), e.Signal)
	}
	return fmt.Sprintf("remote command %q exited with status %d", short(e.Cmd), e.Code)
}

func short(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// Run runs cmd with /bin/sh on the guest and waits for it. It returns the
// exit code; the error is nil only for exit code 0 — an *ExitError for
// other codes, else the reason the command could not run or complete.
// Cancelling ctx sends the command SIGKILL and closes its session.
func (c *Client) Run(ctx context.Context, cmd string, opts RunOptions) (int, error) {
	outW := NewLineWriter(opts.Stdout)
	errW := NewLineWriter(opts.Stderr)
	defer outW.Flush()
	defer errW.Flush()
	return c.run(ctx, cmd, opts, outW, errW)
}

func (c *Client) run(ctx context.Context, cmd string, opts RunOptions, stdout, stderr io.Writer) (int, error) {
	sess, err := c.conn.NewSession()
	if err != nil {
		if lost := c.Lost(); lost != nil {
			return -1, lost
		}
		return -1, fmt.Errorf("ssh %s@%s: new session: %w", c.User, c.Addr, err)
	}
	defer sess.Close()
	sess.Stdout, sess.Stderr = stdout, stderr
	if opts.Stdin != nil {
		sess.Stdin = opts.Stdin
	}
	if err := sess.Start(Command(cmd, opts.Env, opts.Sudo)); err != nil {
		return -1, fmt.Errorf("ssh %s@%s: start %q: %w", c.User, c.Addr, short(cmd), err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		sess.Signal(ssh.SIGKILL)
		sess.Close()
		<-done
		return -1, fmt.Errorf("remote command %q: %w", short(cmd), ctx.Err())
	}
	if err == nil {
		return 0, nil
	}
	var exit *ssh.ExitError
	if errors.As(err, &exit) {
		return exit.ExitStatus(), &ExitError{Cmd: cmd, Code: exit.ExitStatus(), Signal: exit.Signal()}
	}
	if lost := c.Lost(); lost != nil {
		return -1, fmt.Errorf("remote command %q: %w", short(cmd), lost)
	}
	return -1, fmt.Errorf("remote command %q: %w", short(cmd), err)
}

// Output runs cmd and returns its standard output exactly; on failure the
// error includes the standard error.
func (c *Client) Output(ctx context.Context, cmd string, sudo bool) (string, error) {
	var out, errOut bytes.Buffer
	_, err := c.run(ctx, cmd, RunOptions{Sudo: sudo}, &out, &errOut)
	if err != nil {
		if e := strings.TrimSpace(errOut.String()); e != "" {
			return out.String(), fmt.Errorf("%w: %s", err, e)
		}
		return out.String(), err
	}
	return out.String(), nil
}

var envName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`) })

// Command is the remote command line Run sends: cmd run by /bin/sh, with
// env exported first, under `sudo -n` when sudo is set. Environment names
// that are not valid shell identifiers are skipped.
func Command(cmd string, env map[string]string, sudo bool) string {
	var script strings.Builder
	keys := make([]string, 0, len(env))
	for k := range env {
		if envName().MatchString(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&script, "export %s=%s\n", k, Quote(env[k]))
	}
	script.WriteString(cmd)
	line := "/bin/sh -c " + Quote(script.String())
	if sudo {
		line = "sudo -n -H " + line
	}
	return line
}

// Quote quotes s for a POSIX shell.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// LineWriter calls fn for each complete line written to it (a trailing
// "\r" dropped); safe for concurrent writers.
type LineWriter struct {
	mu  sync.Mutex
	fn  func(string)
	buf []byte
}

// NewLineWriter returns a LineWriter calling fn (nil: discard).
func NewLineWriter(fn func(string)) *LineWriter { return &LineWriter{fn: fn} }

func (w *LineWriter) Write(b []byte) (int, error) {
	if w.fn == nil {
		return len(b), nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.fn(strings.TrimSuffix(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

// Flush passes on a last line that had no newline.
func (w *LineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fn != nil && len(w.buf) > 0 {
		w.fn(strings.TrimSuffix(string(w.buf), "\r"))
	}
	w.buf = nil
}
