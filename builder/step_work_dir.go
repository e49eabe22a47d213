package builder

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// stepWorkDir makes the output directory (once the base is resolved and
// inspected: a refused base leaves no directory behind) and the build's
// work directory in the stage cache (with a pid file) after removing the
// leftovers of builds that crashed. Cleanup removes the work directory,
// unless the build failed and KeepOnError is set, and on failure the output
// directories it created, if they are still empty.
type stepWorkDir struct {
	undoOutput func()
}

func (s *stepWorkDir) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	for _, d := range b.cache.CleanStale() {
		b.log.Warnf("removed the leftovers of a crashed build: %s", d)
	}
	undo, err := atomicfile.MkdirAllUndo(b.opts.OutputDir, 0o755)
	if err != nil {
		return halt(state, fmt.Errorf("output directory: %w", err))
	}
	s.undoOutput = undo
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
	_, failed := state.GetOk("error")
	if failed && s.undoOutput != nil {
		defer s.undoOutput()
	}
	if b.work == "" {
		return
	}
	if aborted(state) {
		return // kept with the stage (--on-error=abort): cleanup.sh removes it
	}
	if failed && b.opts.KeepOnError {
		os.Remove(b.work + "/pid")
		b.log.Warnf("--keep-on-error: the work directory (disks, serial logs) is kept at %s", b.work)
		return
	}
	os.RemoveAll(b.work)
}
