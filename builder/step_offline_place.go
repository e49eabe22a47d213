package builder

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/provisioners"
)

// stepOfflinePlace applies a file-only stage without booting the image:
// the offline helper VM unpacks the provisioners' archive into the disk.
type stepOfflinePlace struct {
	// Stage holds the stage, its disk and work directory, and receives
	// the boot files' entry.
	Stage *stageRun
	// BootFrom is the cache entry whose kernel the helper boots, BootDir
	// its boot/ directory.
	BootFrom, BootDir string
	helperVM
}

// offlinePlaceStep is the stage's stepOfflinePlace with the kernel recorded
// for the parent disk.
func (b *buildState) offlinePlaceStep(sr *stageRun) *stepOfflinePlace {
	return &stepOfflinePlace{Stage: sr, BootFrom: b.bootFrom, BootDir: b.parentBootDir(), helperVM: b.helperVMOf()}
}

func (s *stepOfflinePlace) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	boot := bootFiles{Dir: s.BootDir}
	if s.BootFrom == "" || !boot.ok() {
		return halt(state, errNoBootFiles)
	}
	var placers []provisioners.Placer
	for i, ps := range sr.stage.Provisioners {
		p, ok := ps.P.(provisioners.Placer)
		if !ok {
			return halt(state, fmt.Errorf("provisioner %d (%s) cannot run offline", i, ps.Type))
		}
		placers = append(placers, p)
	}
	r := &offlineRun{Disk: sr.disk, Boot: boot, Placers: placers, WorkDir: sr.dir,
		Accel: s.Accel, AccelForced: s.AccelForced, Timeout: 10 * time.Minute, Log: s.Log.WithField("stage", sr.stage.Name)}
	if err := r.run(ctx); err != nil {
		return halt(state, err)
	}
	sr.bootFrom = s.BootFrom
	return multistep.ActionContinue
}

func (s *stepOfflinePlace) Cleanup(multistep.StateBag) {}
