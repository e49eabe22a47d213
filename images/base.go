package images

import "github.com/ecs-image/ecs-image/qemuimg"

// Base is a base image ready for the builder: a local, inspected file.
type Base struct {
	// Name is the catalog name, or "" for a URL, a local file or a build.
	Name string `json:"name,omitempty"`
	// Path is the absolute path of the image file (in the cache, or the
	// user's own file).
	Path string `json:"path"`
	// Format is the disk format: qcow2 or raw.
	Format string `json:"format"`
	// Digest is "sha256:<hex>" of the file.
	Digest string `json:"digest"`
	// User is the image's default cloud-init user (e.g. debian, ubuntu).
	User string `json:"user"`
	// Firmware is bios or uefi.
	Firmware string `json:"firmware"`
	// Arch is the CPU architecture (amd64).
	Arch string `json:"arch"`
	// Info is the image's inspection result.
	Info *qemuimg.Info `json:"info,omitempty"`
}
