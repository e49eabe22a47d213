package images

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/qemuimg"
)

// Export writes a copy of base b to path: raw when path ends in .raw or
// .img, compressed qcow2 otherwise. The copy is written to a temporary file in the
// target directory and renamed into place, so an interrupted export leaves
// nothing behind. It returns the absolute path written.
func Export(ctx context.Context, b *Base, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	format := "qcow2"
	if ext := strings.ToLower(filepath.Ext(abs)); ext == ".raw" || ext == ".img" {
		format = "raw"
	}
	dir := filepath.Dir(abs)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", &InputError{Field: "-o", Msg: fmt.Sprintf("%s: directory %s does not exist", path, dir)}
	}
	if err := atomicfile.CheckTarget(abs); err != nil {
		return "", &InputError{Field: "-o", Msg: err.Error()}
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(abs)+".tmp-*")
	if err != nil {
		return "", err
	}
	tmp.Close()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp.Name())
		}
	}()
	args := []string{"convert", "-f", b.Format, "-O", format}
	if format == "qcow2" {
		args = append(args, "-c")
	}
	if _, err := qemuimg.Run(ctx, append(args, b.Path, tmp.Name())...); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", err
	}
	if err := atomicfile.CheckTarget(abs); err != nil {
		return "", &InputError{Field: "-o", Msg: err.Error()}
	}
	if err := os.Rename(tmp.Name(), abs); err != nil {
		return "", err
	}
	ok = true
	return abs, nil
}
