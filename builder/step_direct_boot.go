package builder

import (
	"context"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepDirectBoot chooses the kernel the build VM boots directly (see
// kernel.go): the parent stage's recorded kernel, or for the first stage
// the base image's own, read from the image without booting it. Without
// one the VM boots from its disk through the firmware and GRUB.
type stepDirectBoot struct{}

func (s *stepDirectBoot) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	var bf bootFiles
	if b.parentDisk == b.base.Path {
		bf = bootFiles{Dir: filepath.Join(sr.dir, "base-boot")}
		if err := extractBaseBootFiles(ctx, b.base.Path, b.base.Format, sr.dir, bf.Dir); err != nil {
			if ctx.Err() != nil {
				return halt(state, ctx.Err())
			}
			b.log.Infof("the base's kernel cannot be read (%v): booting from the disk", err)
			return multistep.ActionContinue
		}
	} else if b.bootFrom != "" {
		bf = bootFiles{Dir: b.cache.BootDir(b.bootFrom)}
	}
	if bf.Dir == "" || !directBootOK(bf) {
		b.log.Infof("no kernel recorded for the parent disk: booting from the disk")
		return multistep.ActionContinue
	}
	sr.kernel = &bf
	b.log.Debugf("direct kernel boot: %s", buildAppend(bf.cmdline(), bf.root()))
	return multistep.ActionContinue
}

func (s *stepDirectBoot) Cleanup(multistep.StateBag) {}
