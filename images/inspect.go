package images

import (
	"context"
	"slices"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// MaxVirtualSize is the largest virtual disk size Inspect accepts (2 TiB).
var MaxVirtualSize int64 = qemuimg.DefaultMaxVirtualSize

// Formats Inspect accepts for bases. Others (vmdk with extent files, ...) can
// reference host files and are refused.
var Formats = []string{"qcow2", "raw"}

// Inspect checks that path is a base image of format wantFormat ("" means
// any of Formats) that is safe to boot (qemuimg.Inspect: no backing file,
// no external data file, not marked corrupt, qemu-img check passes, a sane
// virtual size). Refusals are *qemuimg.ImageError.
func Inspect(ctx context.Context, path, wantFormat string) (*qemuimg.Info, error) {
	return qemuimg.Inspect(ctx, path, qemuimg.Policy{Formats: Formats, Format: wantFormat, MaxVirtualSize: MaxVirtualSize})
}

func knownFormat(f string) bool { return slices.Contains(Formats, f) }
