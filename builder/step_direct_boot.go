package builder

import (
	"context"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"
)

// stepDirectBoot chooses the kernel the build VM boots directly (see
// kernel.go): the parent stage's recorded kernel, or for the first stage
// the base image's own, read from the image without booting it. Without
// one the VM boots from its disk through the firmware and GRUB.
type stepDirectBoot struct {
	// Stage holds the work directory and receives the kernel.
	Stage *stageRun
	// Base and BaseFormat: the base image, when the stage builds on it.
	Base, BaseFormat string
	// BootDir holds the kernel the parent stage recorded ("": none).
	BootDir string
	Log     logrus.FieldLogger
}

// directBootStep is the stage's stepDirectBoot: the base's kernel for the
// first stage, else the one recorded for the parent disk.
func (b *buildState) directBootStep(sr *stageRun) *stepDirectBoot {
	s := &stepDirectBoot{Stage: sr, Log: b.log}
	if b.parentDisk == b.baseDisk() {
		s.Base, s.BaseFormat = b.parentDisk, b.base.Format
	} else {
		s.BootDir = b.parentBootDir()
	}
	return s
}

func (s *stepDirectBoot) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	var bf bootFiles
	if s.Base != "" {
		bf = bootFiles{Dir: filepath.Join(sr.dir, "base-boot")}
		if err := extractBaseBootFiles(ctx, s.Base, s.BaseFormat, sr.dir, bf.Dir); err != nil {
			if ctx.Err() != nil {
				return halt(state, ctx.Err())
			}
			s.Log.Infof("the base's kernel cannot be read (%v): booting from the disk", err)
			return multistep.ActionContinue
		}
	} else if s.BootDir != "" {
		bf = bootFiles{Dir: s.BootDir}
	}
	if bf.Dir == "" || !directBootOK(bf) {
		s.Log.Infof("no kernel recorded for the parent disk: booting from the disk")
		return multistep.ActionContinue
	}
	sr.kernel = &bf
	s.Log.Debugf("direct kernel boot: %s", buildAppend(bf.cmdline(), bf.root()))
	return multistep.ActionContinue
}

func (s *stepDirectBoot) Cleanup(multistep.StateBag) {}
