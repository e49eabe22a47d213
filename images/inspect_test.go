package images

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/qemuimg"
)

func wantImageError(t *testing.T, err error, substr string) {
	t.Helper()
	var ie *qemuimg.ImageError
	if !errors.As(err, &ie) {
		t.Fatalf("want ImageError containing %q, got %v", substr, err)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not mention %q", err, substr)
	}
}

func TestInspectGood(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "good.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", q, "1G")
	info, err := Inspect(context.Background(), q, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.VirtualSize != 1<<30 || info.Compat == "" {
		t.Errorf("info %+v", info)
	}
	// A raw disk with an MBR.
	r := filepath.Join(dir, "disk.raw")
	run(t, "qemu-img", "create", "-q", "-f", "raw", r, "16M")
	run(t, "sh", "-c", "echo 'label: dos' | sfdisk -q "+r)
	info, err = Inspect(context.Background(), r, "")
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "raw" || info.VirtualSize != 16<<20 {
		t.Errorf("info %+v", info)
	}
}

func TestInspectBackingFile(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1G")
	ov := filepath.Join(dir, "overlay.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, ov)
	_, err := Inspect(context.Background(), ov, "qcow2")
	wantImageError(t, err, "backing file")
	// A backing file pointing at a host file that is no image at all.
	ov2 := filepath.Join(dir, "evil.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "/etc/passwd", ov2, "1G")
	_, err = Inspect(context.Background(), ov2, "")
	wantImageError(t, err, "backing file")
}

func TestInspectDataFile(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "data.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"), q, "1G")
	_, err := Inspect(context.Background(), q, "qcow2")
	wantImageError(t, err, "external data file")
}

func TestInspectNotAnImage(t *testing.T) {
	dir := t.TempDir()
	txt := filepath.Join(dir, "page.img")
	os.WriteFile(txt, []byte("<html>404 Not Found</html>\n"), 0o644)
	_, err := Inspect(context.Background(), txt, "")
	wantImageError(t, err, "not a disk image")
	_, err = Inspect(context.Background(), txt, "qcow2")
	wantImageError(t, err, "declared format qcow2")
	empty := filepath.Join(dir, "empty.img")
	os.WriteFile(empty, nil, 0o644)
	_, err = Inspect(context.Background(), empty, "")
	wantImageError(t, err, "empty")
	_, err = Inspect(context.Background(), dir, "")
	wantImageError(t, err, "not a regular file")
	iso := filepath.Join(dir, "x.iso")
	run(t, "xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-V", "cidata", txt)
	_, err = Inspect(context.Background(), iso, "")
	wantImageError(t, err, "ISO 9660")
}

func TestInspectFormatMismatch(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "x.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", q, "1G")
	_, err := Inspect(context.Background(), q, "raw")
	wantImageError(t, err, "declared format raw, but the file is qcow2")
	r := filepath.Join(dir, "x.raw")
	run(t, "qemu-img", "create", "-q", "-f", "raw", r, "16M")
	run(t, "sh", "-c", "echo 'label: dos' | sfdisk -q "+r)
	_, err = Inspect(context.Background(), r, "qcow2")
	wantImageError(t, err, "declared format qcow2, but the file is raw")
	v := filepath.Join(dir, "x.vmdk")
	run(t, "qemu-img", "create", "-q", "-f", "vmdk", v, "16M")
	_, err = Inspect(context.Background(), v, "")
	wantImageError(t, err, "vmdk")
	_, err = Inspect(context.Background(), q, "vmdk")
	wantImageError(t, err, "not supported")
}

func TestInspectAbsurdSize(t *testing.T) {
	q := filepath.Join(t.TempDir(), "huge.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", q, "100T")
	_, err := Inspect(context.Background(), q, "qcow2")
	wantImageError(t, err, "exceeds the limit")
}
