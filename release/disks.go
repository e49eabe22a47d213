package release

import (
	"context"
	"errors"

	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/qemuimg"
)

// diskPolicies: the artifacts that are disk images, by output format, and
// what they must be. A release (and an AMI import) never ships an image
// that names another file: a backing file, an external data file, a VMDK
// extent outside the image (qemuimg.Inspect). Archives (OVA, boxes, GCE)
// are not disk images and are not inspected.
var diskPolicies = map[string][]string{
	"qcow2": {"qcow2"},
	"raw":   {"raw"},
	"vmdk":  {"vmdk"},
	"ami":   {"vmdk"},
	"vhdx":  {"vhdx"},
	"vhd":   {"vpc", "raw"}, // a fixed VHD is raw data with a footer
}

// CheckDisk inspects the file at path if its name is that of a disk
// format; a refused image is an *Error (bad input).
func CheckDisk(ctx context.Context, path string) error {
	fs, ok := diskPolicies[formats.ForFile(path)]
	if !ok {
		return nil
	}
	if _, err := qemuimg.Inspect(ctx, path, qemuimg.Policy{Formats: fs}); err != nil {
		var ie *qemuimg.ImageError
		if errors.As(err, &ie) {
			return &Error{Path: ie.Path, Msg: ie.Msg}
		}
		return err
	}
	return nil
}
