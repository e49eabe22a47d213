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
type stepOfflinePlace struct{}

func (s *stepOfflinePlace) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	boot := bootFiles{Dir: b.cache.BootDir(b.bootFrom)}
	if b.bootFrom == "" || !boot.ok() {
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
		Accel: b.accel, AccelForced: b.accelForced, Timeout: 10 * time.Minute, Log: b.log.WithField("stage", sr.stage.Name)}
	if err := r.run(ctx); err != nil {
		return halt(state, err)
	}
	sr.bootFrom = b.bootFrom
	return multistep.ActionContinue
}

func (s *stepOfflinePlace) Cleanup(multistep.StateBag) {}
