// Package qemuimg is the one place ecs-image runs qemu-img: one runner (with
// progress), one Info type for what `qemu-img info` reports, and the safety
// inspection every command applies to an image a user hands it (Inspect).
//
// Every call names the image's format explicitly (-f), so qemu-img never
// probes a format, and passes images by absolute path, so a file name is
// never read as a protocol (json:, nbd:, http:, ...). Images that are only
// read are opened with --force-share (-U). qemu-img runs as a child that is
// killed when the context ends and when ecs-image itself dies (PDEATHSIG).
package qemuimg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/childproc"
	"github.com/ecs-image/ecs-image/progress"
)

// Binary is the qemu-img executable.
var Binary = "qemu-img"

// command makes the exec.Cmd for qemu-img args: SIGKILL when ctx ends.
// Started through start or run, it also gets SIGKILL when this process
// dies, so a killed ecs-image never leaves a qemu-img writing on behind it.
func command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, Binary, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Run runs qemu-img with args and returns its standard output. On failure
// the error carries qemu-img's message (its last lines of standard error).
func Run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := childproc.Run(cmd, syscall.SIGKILL)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		return stdout.Bytes(), runError(args, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// RunProgress runs a qemu-img convert with -p and follows its percentage as
// a share of total bytes on tr (nil: no progress).
func RunProgress(ctx context.Context, tr *progress.Tracker, total int64, args ...string) error {
	if tr != nil && len(args) > 0 && args[0] == "convert" {
		args = append([]string{"convert", "-p"}, args[1:]...)
	}
	cmd := command(ctx, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	wait, err := childproc.Start(cmd, syscall.SIGKILL)
	if err != nil {
		return fmt.Errorf("qemu-img (apt-get install qemu-utils): %w", err)
	}
	var reported int64
	sc := bufio.NewScanner(stdout)
	sc.Split(splitCRLF)
	for sc.Scan() {
		if tr == nil {
			continue
		}
		if pct, ok := parsePercent(sc.Text()); ok {
			n := int64(pct / 100 * float64(total))
			if n > reported {
				tr.Add(n - reported)
				reported = n
			}
		}
	}
	err = wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return runError(args, err, stderr.String())
	}
	return nil
}

// runError describes a failed qemu-img run by its subcommand and message.
func runError(args []string, err error, stderr string) error {
	sub := ""
	if len(args) > 0 {
		sub = " " + args[0]
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("qemu-img%s (apt-get install qemu-utils): %w", sub, err)
	}
	msg := lastLines(strings.TrimSpace(stderr), 5)
	if msg == "" {
		msg = err.Error()
	}
	return fmt.Errorf("qemu-img%s: %s", sub, msg)
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// splitCRLF splits qemu-img's progress output, which ends updates with \r.
func splitCRLF(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// parsePercent reads "    (42.17/100%)".
func parsePercent(s string) (float64, bool) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "(") || !strings.HasSuffix(s, "/100%)") {
		return 0, false
	}
	f, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(s, "("), "/100%)"), 64)
	return f, err == nil
}
