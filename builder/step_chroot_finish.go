package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepChrootFinish restores the chroot's policy-rc.d and resolv.conf,
// unmounts the disk and stops its export, so that the stage's overlay
// holds every write before it is committed.
type stepChrootFinish struct{}

func (s *stepChrootFinish) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := getStage(state)
	if err := sr.chroot.finish(ctx); err != nil {
		return halt(state, fmt.Errorf("chroot: %w", err))
	}
	for _, f := range []string{sr.chroot.export, sr.chroot.root} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return halt(state, fmt.Errorf("chroot: %w", err))
		}
	}
	sr.chroot = nil
	os.Remove(filepath.Join(sr.dir, "export.raw"))
	return multistep.ActionContinue
}

func (s *stepChrootFinish) Cleanup(multistep.StateBag) {}
