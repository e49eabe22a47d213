package builder

import (
	"errors"
	"testing"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/provisioners"
)

func TestChooseMode(t *testing.T) {
	spec := func(p provisioners.Provisioner) template.ProvisionerSpec {
		return template.ProvisionerSpec{Type: p.Type(), P: p}
	}
	files := template.Stage{Name: "files", Provisioners: []template.ProvisionerSpec{spec(&provisioners.File{})}}
	pkgs := template.Stage{Name: "pkgs", Provisioners: []template.ProvisionerSpec{spec(&provisioners.Packages{}), spec(&provisioners.File{})}}
	shell := template.Stage{Name: "shell", Provisioners: []template.ProvisionerSpec{spec(&provisioners.Packages{}), spec(&provisioners.Shell{})}}
	shellChroot := shell
	shellChroot.Mode = ModeChroot
	pkgsBoot := pkgs
	pkgsBoot.Mode = ModeBoot
	load := template.Stage{Name: "load", Provisioners: []template.ProvisionerSpec{spec(&provisioners.Containers{Load: true})}}
	no := errors.New("no")
	for _, c := range []struct {
		name  string
		st    template.Stage
		env   modeEnv
		want  Mode
		noted bool
	}{
		{"files after a boot: helper", files, modeEnv{haveBoot: true}, ModeOffline, false},
		{"files first: chroot", files, modeEnv{}, ModeChroot, true},
		{"files first, no chroot: boot", files, modeEnv{chrootErr: no}, ModeBoot, true},
		{"files, no helper: chroot", files, modeEnv{haveBoot: true, helperErr: no}, ModeChroot, true},
		{"packages: chroot", pkgs, modeEnv{}, ModeChroot, false},
		{"packages, no chroot: boot", pkgs, modeEnv{chrootErr: no}, ModeBoot, true},
		{"packages, mode boot", pkgsBoot, modeEnv{}, ModeBoot, false},
		{"shell: boot", shell, modeEnv{}, ModeBoot, false},
		{"shell, mode chroot", shellChroot, modeEnv{}, ModeChroot, false},
		{"shell, mode chroot, no chroot: boot", shellChroot, modeEnv{chrootErr: no}, ModeBoot, true},
		{"docker load: boot", load, modeEnv{haveBoot: true}, ModeBoot, false},
	} {
		got, note := chooseMode(&c.st, c.env)
		if got != c.want || (note != "") != c.noted {
			t.Errorf("%s: got %s (note %q), want %s (note %v)", c.name, got, note, c.want, c.noted)
		}
	}
}
