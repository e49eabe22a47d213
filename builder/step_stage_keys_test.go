package builder

import (
	"errors"
	"strings"
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
	shellChroot.Mode = template.ModeChroot
	pkgsBoot := pkgs
	pkgsBoot.Mode = template.ModeBoot
	load := template.Stage{Name: "load", Provisioners: []template.ProvisionerSpec{spec(&provisioners.Containers{Load: true})}}
	no := errors.New("no")
	for _, c := range []struct {
		name  string
		st    template.Stage
		env   modeEnv
		want  template.Mode
		noted bool
	}{
		{"files after a boot: chroot", files, modeEnv{haveBoot: true}, template.ModeChroot, false},
		{"files after a boot, no chroot: helper", files, modeEnv{haveBoot: true, chrootErr: no}, template.ModeOffline, false},
		{"files first: chroot", files, modeEnv{}, template.ModeChroot, false},
		{"files first, no chroot: boot", files, modeEnv{chrootErr: no}, template.ModeBoot, true},
		{"files, no chroot, no helper: boot", files, modeEnv{haveBoot: true, chrootErr: no, helperErr: no}, template.ModeBoot, true},
		{"files, no helper: chroot", files, modeEnv{haveBoot: true, helperErr: no}, template.ModeChroot, false},
		{"packages: chroot", pkgs, modeEnv{}, template.ModeChroot, false},
		{"packages, no chroot: boot", pkgs, modeEnv{chrootErr: no}, template.ModeBoot, true},
		{"packages, mode boot", pkgsBoot, modeEnv{}, template.ModeBoot, false},
		{"shell: boot", shell, modeEnv{}, template.ModeBoot, false},
		{"shell, mode chroot", shellChroot, modeEnv{}, template.ModeChroot, false},
		{"shell, mode chroot, no chroot: boot", shellChroot, modeEnv{chrootErr: no}, template.ModeBoot, true},
		{"docker load: boot", load, modeEnv{haveBoot: true}, template.ModeBoot, false},
	} {
		got, note := chooseMode(&c.st, c.env)
		if got != c.want || (note != "") != c.noted {
			t.Errorf("%s: got %s (note %q), want %s (note %v)", c.name, got, note, c.want, c.noted)
		}
	}
}

func TestGeneraliseMode(t *testing.T) {
	if m, note := generaliseMode(modeEnv{}); m != template.ModeChroot || note != "" {
		t.Errorf("host can chroot: %s %q, want chroot", m, note)
	}
	if m, note := generaliseMode(modeEnv{helperErr: errors.New("no helper")}); m != template.ModeChroot || note != "" {
		t.Errorf("host can chroot, no helper: %s %q, want chroot", m, note)
	}
	if m, note := generaliseMode(modeEnv{chrootErr: errors.New("not root")}); m != template.ModeOffline || !strings.Contains(note, "not root") {
		t.Errorf("no chroot: %s %q, want offline saying why", m, note)
	}
}
