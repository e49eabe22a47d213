package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// stepChrootFinish restores the chroot's policy-rc.d and resolv.conf,
// unmounts the disk and stops its export, so that the stage's overlay
// holds every write, and checks the overlay before it is committed.
type stepChrootFinish struct {
	Stage *stageRun // its chroot session and disk
}

func (s *stepChrootFinish) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	if err := sr.chroot.finish(ctx); err != nil {
		return halt(state, fmt.Errorf("chroot: %w", err))
	}
	for _, f := range []string{sr.chroot.export, sr.chroot.root} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return halt(state, fmt.Errorf("chroot: %w", err))
		}
	}
	sr.chroot = nil
	// The overlay was written by another process: check its metadata
	// before it becomes a cache entry that later stages build on.
	if _, err := qemuimg.Run(ctx, "check", "-q", "-f", "qcow2", sr.disk); err != nil {
		return halt(state, fmt.Errorf("chroot: %s: %w", filepath.Base(sr.disk), err))
	}
	return multistep.ActionContinue
}

func (s *stepChrootFinish) Cleanup(multistep.StateBag) {}
