package builder

import (
	"context"
	"fmt"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"
)

// stepChrootMount exports the stage's disk and mounts its root file system
// for chroot commands on the build host (see chroot.go); the stage's
// provisioners then run against it instead of a booted guest.
type stepChrootMount struct {
	// Stage holds the disk and work directory, and receives the chroot
	// session (its guest).
	Stage *stageRun
	// Detachable: --on-error=abort|ask may keep the chroot after
	// ecs-image exits.
	Detachable bool
	Log        logrus.FieldLogger // with the stage's name
}

// chrootMountStep mounts the stage's disk.
func (b *buildState) chrootMountStep(sr *stageRun) *stepChrootMount {
	return &stepChrootMount{Stage: sr, Detachable: b.keepable(), Log: b.log.WithField("stage", sr.stage.Name)}
}

func (s *stepChrootMount) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	sess, err := openChroot(ctx, sr.disk, sr.dir, s.Log, s.Detachable)
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
	if sr := s.Stage; sr.chroot != nil {
		sr.chroot.close()
	}
}
