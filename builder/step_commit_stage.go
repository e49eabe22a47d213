package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepCommitStage moves the finished stage (disk, boot files) into the
// stage cache under its key.
type stepCommitStage struct{}

func (s *stepCommitStage) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	for _, f := range []string{"seed.iso", "serial.log", "helper-serial.log", "base-boot", "boot-initrd.img"} {
		os.RemoveAll(filepath.Join(sr.dir, f))
	}
	if sr.bootFrom == "" {
		sr.bootFrom = b.bootFrom
	}
	if b.opts.NoCache {
		// Replaced by the fresh build; entries built on the old disk
		// would lose their backing file's content, so they go too.
		if err := b.cache.Remove(sr.key); err != nil {
			return halt(state, err)
		}
	}
	e := &StageEntry{
		Key: sr.key, Parent: sr.parent, Name: sr.stage.Name, Template: b.tmpl.Name,
		Mode: sr.mode, BootFrom: sr.bootFrom, Backing: b.parentDisk, Created: timeNow().UTC(),
		Seconds: timeNow().Sub(sr.started).Seconds(), ParentID: b.parentID,
		Packages: sr.packages, Kernel: sr.kernelInfo,
	}
	if err := b.cache.Commit(sr.dir, e); err != nil {
		return halt(state, fmt.Errorf("commit to the stage cache: %w", err))
	}
	sr.dir = ""
	b.remote.push(ctx, b.cache, b.work, sr.key)
	return multistep.ActionContinue
}

func (s *stepCommitStage) Cleanup(multistep.StateBag) {}
