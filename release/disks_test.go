package release

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/qemuimg/qemuimgtest"
)

// TestReleaseRefusesHostileDisks: a release directory holding a disk image
// that names a host file (issue 13's exploits) is refused, naming the file,
// before anything is written; an AMI import refuses it before the upload.
func TestReleaseRefusesHostileDisks(t *testing.T) {
	src := t.TempDir()
	q, _ := qemuimgtest.DataFileQcow2(t, src)
	v, _ := qemuimgtest.FlatExtentVMDK(t, src)
	for _, c := range []struct{ from, name, want string }{
		{q, "ecs-1.0.qcow2", "external data file"},
		{v, "ecs-1.0.vmdk", "VMDK descriptor file"},
		{v, "ecs-1.0.ami.vmdk", "VMDK descriptor file"},
	} {
		dir := t.TempDir()
		data, _ := os.ReadFile(c.from)
		p := filepath.Join(dir, c.name)
		os.WriteFile(p, data, 0o644)
		_, err := Make(context.Background(), dir, Options{})
		if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.name) {
			t.Errorf("release of %s: %v", c.name, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("release of %s wrote files: %v", c.name, ents)
		}
		if strings.HasSuffix(c.name, ".ami.vmdk") {
			_, err := ImportAMI(context.Background(), &fakeEC2{}, nil, p, AMIOptions{Name: "ecs-1.0", BootMode: "uefi"})
			if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("ImportAMI of %s: %v", c.name, err)
			}
		}
	}
}
