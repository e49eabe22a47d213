package builder

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepWorkDir makes the build's work directory in the stage cache (with a
// pid file) after removing the leftovers of builds that crashed. Cleanup
// removes it, unless the build failed and KeepOnError is set.
type stepWorkDir struct{}

func (s *stepWorkDir) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	for _, d := range b.cache.CleanStale() {
		b.log.Warnf("removed the leftovers of a crashed build: %s", d)
	}
	if err := os.MkdirAll(b.opts.OutputDir, 0o755); err != nil {
		return halt(state, fmt.Errorf("output directory: %w", err))
	}
	cleanOutputTemps(b.opts.OutputDir)
	dir, err := b.cache.WorkDir()
	if err != nil {
		return halt(state, fmt.Errorf("work directory: %w", err))
	}
	b.work = dir
	return multistep.ActionContinue
}

func (s *stepWorkDir) Cleanup(state multistep.StateBag) {
	b := getBuild(state)
	if b.work == "" {
		return
	}
	_, failed := state.GetOk("error")
	if failed && b.opts.KeepOnError {
		os.Remove(b.work + "/pid")
		b.log.Warnf("--keep-on-error: the work directory (disks, serial logs) is kept at %s", b.work)
		return
	}
	os.RemoveAll(b.work)
}
