package formats

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/progress"
)

// Image is a disk image as qemu-img describes it.
type Image struct {
	Path        string `json:"-"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size"`
	Backing     string `json:"backing-filename,omitempty"`
	Dirty       bool   `json:"dirty-flag"`
}

// Inspect describes the image at path with `qemu-img info --output=json`.
// Only standalone qcow2 images are accepted: an image with a backing file is
// refused, since its content is not all in one file.
func Inspect(ctx context.Context, path string) (*Image, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, &InputError{Path: path, Msg: "cannot read input image: " + errText(err)}
	}
	if !st.Mode().IsRegular() {
		return nil, &InputError{Path: path, Msg: "input image is not a regular file"}
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", "--", path).Output()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, &InputError{Path: path, Msg: "qemu-img info: " + strings.TrimSpace(string(ee.Stderr))}
		}
		return nil, fmt.Errorf("qemu-img info: %w", err)
	}
	img := &Image{Path: path}
	if err := json.Unmarshal(out, img); err != nil {
		return nil, fmt.Errorf("%s: parsing qemu-img info output: %w", path, err)
	}
	switch {
	case img.Backing != "":
		return nil, &InputError{Path: path, Msg: fmt.Sprintf("image has backing file %q; flatten it first (qemu-img convert -O qcow2 %s flat.qcow2)", img.Backing, path)}
	case img.Format != "qcow2":
		return nil, &InputError{Path: path, Msg: fmt.Sprintf("input is %q, not a qcow2 image (convert it first: qemu-img convert -O qcow2 IN OUT.qcow2)", img.Format)}
	case img.Dirty:
		return nil, &InputError{Path: path, Msg: "qcow2 image is marked dirty (not cleanly closed); run qemu-img check -r all on it first"}
	case img.VirtualSize <= 0:
		return nil, &InputError{Path: path, Msg: "image has no virtual size"}
	}
	return img, nil
}

func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// qemuImg runs qemu-img with args. For a "convert", tr (if not nil) follows
// qemu-img's -p percentage as a share of total bytes. The process is killed
// when ctx is cancelled.
func qemuImg(ctx context.Context, tr *progress.Tracker, total int64, args ...string) error {
	if tr != nil && len(args) > 0 && args[0] == "convert" {
		args = append([]string{"convert", "-p"}, args[1:]...)
	}
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu-img: %w", err)
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
	err = cmd.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("qemu-img %s: %v: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return nil
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

// resized returns a source for conversions whose virtual size is in's
// rounded up to a multiple of align: in itself when already aligned, else a
// thin qcow2 overlay (in as its backing file) in dir.
func resized(ctx context.Context, in *Image, dir string, align int64) (path, format string, size int64, err error) {
	size = roundUp(in.VirtualSize, align)
	if size == in.VirtualSize {
		return in.Path, in.Format, size, nil
	}
	abs, err := filepath.Abs(in.Path)
	if err != nil {
		return "", "", 0, err
	}
	f, err := os.CreateTemp(dir, fmt.Sprintf("resized-%d-*.qcow2", size))
	if err != nil {
		return "", "", 0, err
	}
	f.Close()
	ov := f.Name()
	if err := qemuImg(ctx, nil, 0, "create", "-q", "-f", "qcow2", "-F", in.Format, "-b", abs, ov, strconv.FormatInt(size, 10)); err != nil {
		return "", "", 0, err
	}
	return ov, "qcow2", size, nil
}

func roundUp(n, align int64) int64 {
	return (n + align - 1) / align * align
}

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)
