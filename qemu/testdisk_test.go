package qemu

import (
	"path/filepath"
	"testing"

	"github.com/ecs-image/ecs-image/qemu/qemutest"
)

// bootDisk writes a raw disk whose guest prints msg on the serial console
// (see qemutest.BootDisk).
func bootDisk(t *testing.T, msg string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "boot.raw")
	if err := qemutest.BootDisk(p, msg); err != nil {
		t.Fatal(err)
	}
	return p
}
