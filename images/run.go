package images

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/mountinfo"
	"github.com/sirupsen/logrus"
)

// command makes an exec.Cmd in its own process group; cancelling ctx sends
// SIGTERM to the whole group (so mmdebstrap can unmount and apt/dpkg stop),
// then SIGKILL after a grace period.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	return cmd
}

func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// runCmd runs a command, returning its output in the error on failure.
func runCmd(ctx context.Context, name string, args ...string) error {
	cmd := command(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	killGroup(cmd)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %v: %s", name, err, strings.TrimSpace(lastLines(string(out), 15)))
	}
	return nil
}

// runLogged runs a long command, logging its output line by line.
func runLogged(ctx context.Context, label, name string, args ...string) error {
	cmd := command(ctx, name, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			logrus.WithField("cmd", label).Info(line)
			tail = append(tail, line)
			if len(tail) > 15 {
				tail = tail[1:]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Start()
	if err == nil {
		err = cmd.Wait()
	}
	killGroup(cmd)
	pw.Close()
	<-done
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %v: %s", label, err, strings.Join(tail, "\n"))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// safeRemoveAll removes dir after unmounting anything still mounted below
// it (an interrupted mmdebstrap may leave /proc, /sys or /dev mounts in the
// chroot). It refuses to remove when a mount cannot be detached, so that a
// leftover bind mount never makes it delete host files.
func safeRemoveAll(dir string) error {
	dir = filepath.Clean(dir)
	for attempt := 0; attempt < 3; attempt++ {
		mounts, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mounts) == 0 {
			return os.RemoveAll(dir)
		}
		// Deepest first.
		sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
		for _, m := range mounts {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				logrus.Warnf("unmount %s: %v", m, err)
			}
		}
	}
	return fmt.Errorf("file systems still mounted under %s; not removing it", dir)
}

func mountsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m.Point)
		}
	}
	return out, nil
}

// mountChroot mounts /proc, /sys and a private /dev/pts instance in root
// (debootstrap made the /dev nodes). The returned function unmounts them.
func mountChroot(root string) (func(), error) {
	var mounted []string
	unmount := func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			if err := syscall.Unmount(mounted[i], syscall.MNT_DETACH); err != nil {
				logrus.Warnf("unmount %s: %v", mounted[i], err)
			}
		}
		mounted = nil
	}
	for _, m := range []struct{ fstype, dir, data string }{
		{"proc", "proc", ""},
		{"sysfs", "sys", ""},
		{"devpts", "dev/pts", "newinstance,ptmxmode=0666,mode=620"},
	} {
		dir := filepath.Join(root, m.dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return unmount, err
		}
		if err := syscall.Mount(m.fstype, dir, m.fstype, syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, m.data); err != nil {
			return unmount, fmt.Errorf("mount %s on %s: %w", m.fstype, dir, err)
		}
		mounted = append(mounted, dir)
	}
	return unmount, nil
}
