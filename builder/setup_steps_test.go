package builder

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/qemu"
	"github.com/ecs-image/ecs-image/qemuimg"
	"github.com/ecs-image/ecs-image/testenv"
)

// bufLog is a logger writing into a buffer, for asserting log lines.
func bufLog() (*logrus.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	l := logrus.New()
	l.SetOutput(&buf)
	return l, &buf
}

// TestStepWorkDir runs the step from plain values: it makes the output and
// work directories (with a pid file), removes a crashed build's leftovers,
// and its clean-up removes the work directory, keeps it on a failure with
// KeepOnError, and removes an output directory it created on a failure.
func TestStepWorkDir(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name         string
		failed, keep bool
	}{{"success", false, false}, {"failure", true, false}, {"failure, keep on error", true, true}} {
		cache := &StageCache{Dir: t.TempDir()}
		stale := filepath.Join(cache.Dir, "tmp", "build-crashed")
		if err := os.MkdirAll(stale, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, stale, "pid", strconv.Itoa(1<<30)+"\n")
		out := filepath.Join(t.TempDir(), "a", "out")
		log, buf := bufLog()
		var work string
		s := &stepWorkDir{Cache: cache, OutputDir: out, KeepOnError: c.keep, Log: log, Work: &work}
		state := new(multistep.BasicStateBag)
		if a := s.Run(ctx, state); a != multistep.ActionContinue {
			t.Fatalf("%s: %v %v", c.name, a, state.Get("error"))
		}
		if _, err := os.Stat(stale); !os.IsNotExist(err) || !strings.Contains(buf.String(), "removed the leftovers of a crashed build: "+stale) {
			t.Errorf("%s: the crashed build's leftovers: %v\n%s", c.name, err, buf)
		}
		if fi, err := os.Stat(out); err != nil || !fi.IsDir() {
			t.Errorf("%s: no output directory: %v", c.name, err)
		}
		pid, err := os.ReadFile(filepath.Join(work, "pid"))
		if err != nil || strings.TrimSpace(string(pid)) != strconv.Itoa(os.Getpid()) || filepath.Dir(work) != filepath.Join(cache.Dir, "tmp") {
			t.Fatalf("%s: work directory %q: pid %q %v", c.name, work, pid, err)
		}
		if c.failed {
			state.Put("error", errors.New("boom"))
		}
		s.Cleanup(state)
		_, werr := os.Stat(work)
		_, perr := os.Stat(filepath.Join(work, "pid"))
		_, oerr := os.Stat(out)
		switch {
		case c.keep:
			if werr != nil || !os.IsNotExist(perr) || !strings.Contains(buf.String(), "--keep-on-error: the work directory (disks, serial logs) is kept at "+work) {
				t.Errorf("%s: work directory %v, pid file %v\n%s", c.name, werr, perr, buf)
			}
		case !os.IsNotExist(werr):
			t.Errorf("%s: the work directory stays: %v", c.name, werr)
		}
		if c.failed != os.IsNotExist(oerr) {
			t.Errorf("%s: output directory after the clean-up: %v", c.name, oerr)
		}
		if _, err := os.Stat(filepath.Dir(out)); c.failed != os.IsNotExist(err) {
			t.Errorf("%s: the output directory's parent it made: %v", c.name, err)
		}
	}
	// An output path that cannot be a directory: the error names it, no
	// work directory.
	file := writeFile(t, t.TempDir(), "f", "x")
	var work string
	state := new(multistep.BasicStateBag)
	s := &stepWorkDir{Cache: &StageCache{Dir: t.TempDir()}, OutputDir: filepath.Join(file, "out"), Log: quietLog(), Work: &work}
	if a := s.Run(ctx, state); a != multistep.ActionHalt || work != "" || !strings.HasPrefix(state.Get("error").(error).Error(), "output directory: ") {
		t.Errorf("output under a file: %v %q %v", a, work, state.Get("error"))
	}
	s.Cleanup(state)
}

// TestStepStageKeys runs the step from a plan, a base digest and the
// host's modes as plain values: a stage run per stage, chained by key,
// with the mode chooseMode gives, and the generalisation last.
func TestStepStageKeys(t *testing.T) {
	tp, err := template.Parse("t.yml", []byte(`disk_size: 8G
base: {catalog: build}
stages:
  - name: sys
    provisioners: [{type: shell, inline: ["true"]}]
  - name: pkgs
    provisioners: [{type: packages, packages: [jq]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := tp.Plan("")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		env   modeEnv
		modes []template.Mode
		notes []string
	}{
		{"chroot", modeEnv{}, []template.Mode{template.ModeBoot, template.ModeChroot, template.ModeChroot}, nil},
		{"no chroot", modeEnv{chrootErr: errors.New("not root")}, []template.Mode{template.ModeBoot, template.ModeBoot, template.ModeOffline},
			[]string{"stage pkgs: boots: chroot unavailable: not root", "stage generalise: offline helper: chroot unavailable: not root"}},
	} {
		log, buf := bufLog()
		var stages []*stageRun
		s := &stepStageKeys{Plan: p, BaseDigest: "sha256:00", Env: c.env, Log: log, Stages: &stages}
		state := new(multistep.BasicStateBag)
		if a := s.Run(context.Background(), state); a != multistep.ActionContinue {
			t.Fatalf("%s: %v %v", c.name, a, state.Get("error"))
		}
		if len(stages) != 3 {
			t.Fatalf("%s: %d stage runs", c.name, len(stages))
		}
		parent := "base:" + RootKey("sha256:00", 8<<30)
		var lines []string
		for i, sr := range stages {
			if sr.index != i || sr.mode != c.modes[i] || sr.generalise != (i == 2) {
				t.Errorf("%s: stage %d: %+v", c.name, i, sr)
			}
			if i < 2 {
				want, err := StageKey(parent, &p.Stages[i], p.VarsFor(i), c.modes[i])
				if err != nil || sr.key != want || sr.parent != parent || sr.stage != &p.Stages[i] {
					t.Errorf("%s: stage %s: key %s parent %s, want %s on %s (%v)", c.name, sr.stage.Name, sr.key, sr.parent, want, parent, err)
				}
				lines = append(lines, sr.stage.Name+"="+sr.key[:12]+"("+sr.mode.String()+")")
				parent = sr.key
			} else if want := GeneraliseKey(parent, tp.Generalise, c.modes[2]); sr.key != want || sr.stage.Name != GeneraliseStageName {
				t.Errorf("%s: generalisation %+v, want key %s", c.name, sr, want)
			}
		}
		if want := "stages: " + strings.Join(lines, " "); !strings.Contains(buf.String(), want) {
			t.Errorf("%s: log lacks %q:\n%s", c.name, want, buf)
		}
		for _, n := range c.notes {
			if !strings.Contains(buf.String(), n) {
				t.Errorf("%s: log lacks %q:\n%s", c.name, n, buf)
			}
		}
	}
}

// TestStepFetchBase runs the step on a local qcow2 file: the base is
// inspected in place, and the accelerator is the template's unless
// overridden.
func TestStepFetchBase(t *testing.T) {
	testenv.Tool(t, "qemu-img", "qemu-utils")
	ctx := context.Background()
	disk := filepath.Join(t.TempDir(), "base.qcow2")
	if _, err := qemuimg.Run(ctx, "create", "-q", "-f", "qcow2", disk, "64M"); err != nil {
		t.Fatal(err)
	}
	tp := &template.Template{Base: template.Base{File: disk}, Firmware: "bios", Accel: "kvm"}
	for _, c := range []struct {
		override string
		want     qemu.Accel
		forced   bool
	}{{"", qemu.AccelKVM, true}, {"tcg", qemu.AccelTCG, false}} {
		log, buf := bufLog()
		var out fetchedBase
		state := new(multistep.BasicStateBag)
		if a := (&stepFetchBase{Template: tp, Accel: c.override, Log: log, Out: &out}).Run(ctx, state); a != multistep.ActionContinue {
			t.Fatalf("%q: %v %v", c.override, a, state.Get("error"))
		}
		if out.base == nil || out.base.Path != disk || out.base.Format != "qcow2" || !strings.HasPrefix(out.base.Digest, "sha256:") || out.base.Firmware != "bios" {
			t.Fatalf("%q: base %+v", c.override, out.base)
		}
		if out.accel != c.want || out.accelForced != c.forced {
			t.Errorf("%q: accel %v forced %v, want %v %v", c.override, out.accel, out.accelForced, c.want, c.forced)
		}
		if !strings.Contains(buf.String(), "base "+disk+" (qcow2, ") {
			t.Errorf("%q: log:\n%s", c.override, buf)
		}
	}
	// A missing file: the error names it, nothing resolved.
	var out fetchedBase
	state := new(multistep.BasicStateBag)
	missing := filepath.Join(t.TempDir(), "none.qcow2")
	bad := &template.Template{Base: template.Base{File: missing}, Firmware: "bios"}
	if a := (&stepFetchBase{Template: bad, Log: quietLog(), Out: &out}).Run(ctx, state); a != multistep.ActionHalt || out.base != nil ||
		!strings.Contains(state.Get("error").(error).Error(), "base "+missing) {
		t.Errorf("missing base: %v %+v %v", a, out.base, state.Get("error"))
	}
}

// TestStepStagesCached runs stepStages on stages that are all in the
// cache: nothing is built, the parent disk advances to the generalised
// disk, and the generalised entry's package list and kernel are the
// step's results.
func TestStepStagesCached(t *testing.T) {
	testenv.Tool(t, "qemu-img", "qemu-utils")
	c, base, work := testCache(t)
	addStage(t, c, work, &StageEntry{Key: keyS1, Parent: keyBase, Name: "s1", BootFrom: keyS1}, base, true)
	kernel := &KernelInfo{Version: "6.1.0-test"}
	addStage(t, c, work, &StageEntry{Key: keyS2, Parent: keyS1, ParentID: idOf(t, c, keyS1), Name: GeneraliseStageName, BootFrom: keyS1,
		Packages: []string{"jq 1.6"}, Kernel: kernel}, c.Disk(keyS1), false)
	log, buf := bufLog()
	b := &buildState{cache: c, log: log, work: work, fetchedBase: fetchedBase{base: &images.Base{Path: base, Format: "qcow2"}}}
	stages := []*stageRun{
		{stage: &template.Stage{Name: "s1"}, key: keyS1, parent: keyBase, mode: template.ModeBoot},
		{stage: &template.Stage{Name: GeneraliseStageName}, index: 1, key: keyS2, mode: template.ModeChroot, generalise: true},
	}
	var out generalised
	s := &stepStages{Stages: stages, Log: log, Build: b, Out: &out}
	state := new(multistep.BasicStateBag)
	if a := s.Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("%v %v", a, state.Get("error"))
	}
	if !stages[0].cached || !stages[1].cached || stages[1].parent != keyS1 {
		t.Errorf("stages: %+v %+v", stages[0], stages[1])
	}
	if len(out.packages) != 1 || out.packages[0] != "jq 1.6" || out.kernel == nil || out.kernel.Version != kernel.Version {
		t.Errorf("results: %+v", out)
	}
	if b.parentKey != keyS2 || b.parentDisk != c.Disk(keyS2) || b.bootFrom != keyS1 || b.parentID != idOf(t, c, keyS2) {
		t.Errorf("parent after the stages: %s %s %s %s", b.parentKey, b.parentDisk, b.bootFrom, b.parentID)
	}
	for _, want := range []string{"stage s1: cached (" + keyS1[:12] + ")", "stage generalise: cached (" + keyS2[:12] + ")"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, buf)
		}
	}
	if strings.Contains(buf.String(), "building") {
		t.Errorf("a cached stage was built:\n%s", buf)
	}
}
