package builder

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/provisioners"
	"github.com/ecs-image/ecs-image/qemu"
	"github.com/ecs-image/ecs-image/qemuimg"
	"github.com/ecs-image/ecs-image/testenv"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"
	"go.yaml.in/yaml/v3"
)

func names(steps []multistep.Step) string {
	var n []string
	for _, s := range steps {
		n = append(n, stepName(s))
	}
	return strings.Join(n, ", ")
}

// testStageBuild is a build with a template, a base and a cache, enough to
// make the stage step lists.
func testStageBuild(t *testing.T) *buildState {
	return &buildState{validated: validated{tmpl: &template.Template{}}, log: logrus.New(), fetchedBase: fetchedBase{base: &images.Base{Path: "/base.qcow2"}}, cache: &StageCache{Dir: t.TempDir()}}
}

func TestStepOrder(t *testing.T) {
	b := testStageBuild(t)
	sr := &stageRun{stage: &template.Stage{Name: "s"}}
	for _, c := range []struct {
		steps []multistep.Step
		want  string
	}{
		{buildSteps(), "validate, fetch base, work dir, stage keys, stages, driver check, compact, artifact"},
		{bootedStageSteps(b, sr), "overlay disk, seed iso, direct boot, start qemu, wait ssh, provision, boot files, shutdown, commit stage"},
		{offlineStageSteps(b, sr), "overlay disk, offline place, commit stage"},
		{chrootStageSteps(b, sr), "overlay disk, chroot mount, provision, chroot boot files, chroot finish, commit stage"},
		{generaliseStageSteps(b, sr), "overlay disk, generalise, commit stage"},
		{generaliseChrootSteps(b, sr), "overlay disk, kernel features, chroot mount, chroot generalise, chroot finish, commit stage"},
	} {
		if got := names(c.steps); got != c.want {
			t.Errorf("steps:\n got %s\nwant %s", got, c.want)
		}
	}
	// Every stage step writes into the stage it was made for.
	for _, steps := range [][]multistep.Step{bootedStageSteps(b, sr), offlineStageSteps(b, sr), chrootStageSteps(b, sr), generaliseStageSteps(b, sr)} {
		for _, s := range steps {
			if f := reflect.ValueOf(s).Elem().FieldByName("Stage"); !f.IsValid() || f.Interface() != sr {
				t.Errorf("%s: not made with the stage's run", stepName(s))
			}
		}
	}
}

// TestStageModes: every mode chooseMode can return has a step list.
func TestStageModes(t *testing.T) {
	for _, m := range []template.Mode{template.ModeBoot, template.ModeChroot, template.ModeOffline} {
		if r, ok := stageModes[m]; !ok || r.how == "" || len(r.steps(testStageBuild(t), &stageRun{stage: &template.Stage{Name: "s"}})) == 0 {
			t.Errorf("%s: no step list", m)
		}
	}
	if _, ok := stageModes[template.ModeAuto]; ok {
		t.Error("auto is resolved before a stage runs")
	}
}

// TestStageStepInputs: the stage steps take the parent disk and the kernel
// recorded for it as fields, set when the stage starts.
func TestStageStepInputs(t *testing.T) {
	b := testStageBuild(t)
	tp, err := template.Parse("t.yml", []byte("disk_size: 8G\nbase: {catalog: build}\nstages: [{name: s, provisioners: [{type: shell, inline: [\"true\"]}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b.tmpl = tp
	b.work = "/work"
	sr := &stageRun{stage: &tp.Stages[0], key: "k2", parent: "k1"}
	// The first stage: on the base, grown to disk_size; the base's kernel.
	b.parentDisk, b.base.Format = b.base.Path, "raw"
	if o := b.overlayStep(sr); o.Parent != "/base.qcow2" || o.ParentFormat != "raw" || o.Size != 8<<30 || o.WorkDir != "/work" {
		t.Errorf("first stage's overlay: %+v", o)
	}
	if d := b.directBootStep(sr); d.Base != "/base.qcow2" || d.BaseFormat != "raw" || d.BootDir != "" {
		t.Errorf("first stage's direct boot: %+v", d)
	}
	if p := b.offlinePlaceStep(sr); p.BootFrom != "" || p.BootDir != "" {
		t.Errorf("no kernel recorded: offline place %+v", p)
	}
	// A later stage: on its parent's disk, the parent's recorded kernel.
	b.parentDisk, b.bootFrom = "/cache/k1/disk.qcow2", "k0"
	if o := b.overlayStep(sr); o.Parent != "/cache/k1/disk.qcow2" || o.ParentFormat != "qcow2" || o.Size != 0 {
		t.Errorf("later stage's overlay: %+v", o)
	}
	if d := b.directBootStep(sr); d.Base != "" || d.BootDir != b.cache.BootDir("k0") {
		t.Errorf("later stage's direct boot: %+v", d)
	}
	if p := b.offlinePlaceStep(sr); p.BootFrom != "k0" || p.BootDir != b.cache.BootDir("k0") {
		t.Errorf("offline place: %+v", p)
	}
	if c := b.commitStep(sr); c.Entry.Key != "k2" || c.Entry.Parent != "k1" || c.Entry.Name != "s" || c.Entry.Backing != "/cache/k1/disk.qcow2" || c.BootFrom != "k0" || c.Cache != b.cache {
		t.Errorf("commit: %+v", c)
	}
	if c := b.chrootBootFilesStep(sr); c.Key != "k2" || c.BootFrom != "k0" || c.BootDir != b.cache.BootDir("k0") {
		t.Errorf("chroot boot files: %+v", c)
	}
	if p := b.provisionStep(sr); len(p.Provisioners) != 1 || p.Provisioners[0].Type != "shell" {
		t.Errorf("provision: %+v", p)
	}
	b.base.Firmware = "uefi"
	b.tmpl.Memory, b.tmpl.CPUs = 1024, 3
	if q := b.startQEMUStep(sr); q.Firmware != qemu.FirmwareUEFI || q.Memory != 1024 || q.CPUs != 3 {
		t.Errorf("start qemu: %+v", q)
	}
}

// TestStepOverlayDisk runs the step from plain values on a real qcow2.
func TestStepOverlayDisk(t *testing.T) {
	testenv.Tool(t, "qemu-img", "qemu-utils")
	ctx := context.Background()
	dir := t.TempDir()
	parent := filepath.Join(dir, "parent.qcow2")
	if _, err := qemuimg.Run(ctx, "create", "-q", "-f", "qcow2", parent, "1G"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		size, want int64
		fail       bool
	}{{0, 1 << 30, false}, {2 << 30, 2 << 30, false}, {1 << 20, 0, true}} {
		sr := &stageRun{stage: &template.Stage{Name: "s"}}
		state := new(multistep.BasicStateBag)
		s := &stepOverlayDisk{Stage: sr, WorkDir: dir, Parent: parent, ParentFormat: "qcow2", Size: c.size}
		if got := s.Run(ctx, state); (got == multistep.ActionHalt) != c.fail {
			t.Fatalf("size %d: %v %v", c.size, got, state.Get("error"))
		}
		if !c.fail {
			info, err := qemuimg.ReadInfo(ctx, sr.disk, "qcow2")
			if err != nil || info.VirtualSize != c.want || filepath.Dir(sr.disk) != sr.dir || !strings.HasPrefix(sr.dir, dir) {
				t.Errorf("size %d: %+v %v (disk %s)", c.size, info, err, sr.disk)
			}
		}
		s.Cleanup(state)
		if _, err := os.Stat(sr.dir); sr.dir != "" && !os.IsNotExist(err) {
			t.Errorf("size %d: the work directory %s stays: %v", c.size, sr.dir, err)
		}
	}
}

func TestBuildUserData(t *testing.T) {
	ud, err := buildUserData("ssh-ed25519 AAAAC3 ecs-image\n")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Users []struct {
			Name       string   `yaml:"name"`
			Sudo       string   `yaml:"sudo"`
			LockPasswd bool     `yaml:"lock_passwd"`
			Keys       []string `yaml:"ssh_authorized_keys"`
		} `yaml:"users"`
		SSHPwauth bool `yaml:"ssh_pwauth"`
	}
	if !strings.HasPrefix(string(ud), "#cloud-config\n") {
		t.Fatalf("not cloud-config: %q", ud)
	}
	if err := yaml.Unmarshal(ud, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Users) != 1 || cfg.Users[0].Name != BuildUser || cfg.Users[0].Sudo != "ALL=(ALL) NOPASSWD:ALL" ||
		!cfg.Users[0].LockPasswd || len(cfg.Users[0].Keys) != 1 || cfg.Users[0].Keys[0] != "ssh-ed25519 AAAAC3 ecs-image" || cfg.SSHPwauth {
		t.Errorf("user-data: %+v\n%s", cfg, ud)
	}
}

// TestDriverCheckStep: the driver check runs from plain values (the
// kernel's drivers, the outputs), made from the build when it starts.
func TestDriverCheckStep(t *testing.T) {
	all := formats.AllDrivers()
	run := func(s multistep.Step, b *buildState) error {
		t.Helper()
		state := new(multistep.BasicStateBag)
		state.Put("build", b)
		s.Run(context.Background(), state)
		if err, ok := state.GetOk("error"); ok {
			return err.(error)
		}
		return nil
	}
	log := logrus.New()
	bare := &KernelInfo{Version: "6.1.0-cloud", Asked: all}
	if err := run(&stepDriverCheck{Kernel: bare, Outputs: []string{"qcow2"}, Log: log}, nil); err == nil {
		t.Error("a kernel without drivers passed the check for qcow2")
	}
	full := &KernelInfo{Version: "6.1.0", Asked: all, Drivers: all}
	if err := run(&stepDriverCheck{Kernel: full, Outputs: []string{"qcow2", "vmdk"}, Log: log}, nil); err != nil {
		t.Errorf("a kernel with every driver: %v", err)
	}
	// Unknown or partly known drivers: skipped, not failed.
	for _, k := range []*KernelInfo{nil, {Version: "x", Asked: all[:1]}} {
		if err := run(&stepDriverCheck{Kernel: k, Outputs: []string{"qcow2"}, Log: log}, nil); err != nil {
			t.Errorf("kernel %+v: %v", k, err)
		}
	}
	// In the pipeline, the step is made from the build's kernel and plan
	// when it starts.
	b := testStageBuild(t)
	b.plan = &template.Plan{Outputs: []string{"qcow2"}}
	late := buildSteps()[5]
	if stepName(late) != "driver check" {
		t.Fatalf("step 5 is %s", stepName(late))
	}
	b.kernel = bare
	if err := run(late, b); err == nil {
		t.Error("the pipeline's driver check did not use the build's kernel")
	}
}

// TestMergeable: a file-only last stage is applied in the generalisation
// only where both run (the helper, or a chroot); a stage that boots, or a
// placer-only stage built elsewhere, is not.
func TestMergeable(t *testing.T) {
	files := &template.Stage{Name: "files", Provisioners: []template.ProvisionerSpec{{Type: "file", P: &provisioners.File{}}}}
	pkgs := &template.Stage{Name: "pkgs", Provisioners: []template.ProvisionerSpec{{Type: "packages", P: &provisioners.Packages{}}}}
	shell := &template.Stage{Name: "shell", Provisioners: []template.ProvisionerSpec{{Type: "shell", P: &provisioners.Shell{}}}}
	for _, c := range []struct {
		st        *template.Stage
		mode, gen template.Mode
		want      bool
	}{
		{files, template.ModeChroot, template.ModeChroot, true},
		{files, template.ModeOffline, template.ModeOffline, true},
		{files, template.ModeChroot, template.ModeOffline, false},
		{files, template.ModeBoot, template.ModeOffline, false},
		{pkgs, template.ModeChroot, template.ModeChroot, false},
		{shell, template.ModeChroot, template.ModeChroot, false},
	} {
		if got := mergeable(&stageRun{stage: c.st, mode: c.mode}, &stageRun{mode: c.gen, generalise: true}); got != c.want {
			t.Errorf("%s built %s, generalised %s: merged %v, want %v", c.st.Name, c.mode, c.gen, got, c.want)
		}
	}
}
