package builder

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/provisioners"
)

// stepGeneralise makes the image safe to clone, offline in the helper VM
// on the generalisation stage's overlay (cached like a stage): removes the
// build user and its key, cloud-init state (clean --logs --seed),
// machine-id (truncated), SSH host keys, apt lists and caches, logs;
// records the package list and the kernel's drivers; trims free blocks. A
// merged file-only last stage's files are placed in the same helper boot.
// It also runs, without the clean-up, when generalisation is off, for the
// package list.
type stepGeneralise struct {
	// Stage holds the disk, work directory and merged stage, and receives
	// the package list, kernel and boot files' entry.
	Stage      *stageRun
	Generalise template.Generalise
	// BootFrom is the cache entry whose kernel the helper boots, BootDir
	// its boot/ directory.
	BootFrom, BootDir string
	helperVM
	// Features keeps the kernel's AppArmor feature set the helper reports
	// (for later generalisations in a chroot).
	Features kernelFeatures
}

// generaliseStep is the generalisation's stepGeneralise with the kernel
// recorded for the parent disk.
func (b *buildState) generaliseStep(sr *stageRun) *stepGeneralise {
	return &stepGeneralise{Stage: sr, Generalise: b.tmpl.Generalise, BootFrom: b.bootFrom, BootDir: b.parentBootDir(),
		helperVM: b.helperVMOf(), Features: kernelFeaturesOf(b.cache)}
}

func (s *stepGeneralise) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	g := s.Generalise
	boot := bootFiles{Dir: s.BootDir}
	if s.BootFrom == "" || !boot.ok() {
		return halt(state, fmt.Errorf("generalise: %w", errNoBootFiles))
	}
	var placers []provisioners.Placer
	if sr.merge != nil {
		for _, ps := range sr.merge.stage.Provisioners {
			placers = append(placers, ps.P.(provisioners.Placer))
		}
	}
	r := &offlineRun{Disk: sr.disk, Boot: boot, WorkDir: sr.dir, Accel: s.Accel, AccelForced: s.AccelForced, Timeout: 10 * time.Minute, Placers: placers,
		Log: s.Log.WithField("step", "generalise"),
		Job: offlinehelper.Job{Generalise: g.On(), GeneraliseScript: generaliseScript(g), Packages: true, Trim: g.Trim(), Drivers: formats.AllDrivers(), AppArmorFeatures: true}}
	if err := r.run(ctx); err != nil {
		return halt(state, fmt.Errorf("generalise: %w", err))
	}
	os.Remove(r.SerialLog)
	if digest, err := fileDigest(boot.kernel()); err == nil && r.AppArmorErr == nil && !r.AppArmor.empty() {
		if err := s.Features.store(digest, &r.AppArmor); err != nil {
			s.Log.Debugf("generalise: keeping the kernel's AppArmor features: %v", err)
		}
	}
	sr.packages, sr.kernelInfo, sr.bootFrom = r.Packages, r.Kernel, s.BootFrom
	if r.Kernel == nil {
		s.Log.Warnf("generalise: the image kernel's drivers are unknown (%s): the output formats' drivers are not checked", r.KernelUnknown)
	}
	s.Log.Infof("generalise: %d packages in the image", len(r.Packages))
	return multistep.ActionContinue
}

func (s *stepGeneralise) Cleanup(multistep.StateBag) {}

// manifestJSON is a helper for tests and the artifact step.
func manifestJSON(m *Manifest) ([]byte, error) { return json.MarshalIndent(m, "", "  ") }
