package builder

import (
	"context"
	"fmt"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepChrootMount exports the stage's disk and mounts its root file system
// for chroot commands on the build host (see chroot.go); the stage's
// provisioners then run against it instead of a booted guest.
type stepChrootMount struct{}

func (s *stepChrootMount) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	sess, err := openChroot(ctx, sr.disk, sr.dir, b.log.WithField("stage", sr.stage.Name), b.keepable())
	if err != nil {
		if ctx.Err() != nil {
			return halt(state, ctx.Err())
		}
		return halt(state, fmt.Errorf("chroot: %w", err))
	}
	sr.chroot = sess
	sr.guest = sess
	return multistep.ActionContinue
}

// Cleanup drops the mounts and the export if the stage failed before
// stepChrootFinish ran.
func (s *stepChrootMount) Cleanup(state multistep.StateBag) {
	if sr := getStage(state); sr.chroot != nil {
		sr.chroot.close()
	}
}
