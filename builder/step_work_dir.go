package builder

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// stepWorkDir makes the output directory (once the base is resolved and
// inspected: a refused base leaves no directory behind) and the build's
// work directory in the stage cache (with a pid file) after removing the
// leftovers of builds that crashed. Cleanup removes the work directory,
// unless the build failed and KeepOnError is set, and on failure the output
// directories it created, if they are still empty.
type stepWorkDir struct {
	Cache       *StageCache
	OutputDir   string
	KeepOnError bool
	Log         logrus.FieldLogger
	// Work receives the work directory's path.
	Work *string

	undoOutput func()
}

func (b *buildState) workDirStep() *stepWorkDir {
	return &stepWorkDir{Cache: b.cache, OutputDir: b.opts.OutputDir, KeepOnError: b.opts.KeepOnError, Log: b.log, Work: &b.work}
}

func (s *stepWorkDir) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	for _, d := range s.Cache.CleanStale() {
		s.Log.Warnf("removed the leftovers of a crashed build: %s", d)
	}
	undo, err := atomicfile.MkdirAllUndo(s.OutputDir, 0o755)
	if err != nil {
		return halt(state, fmt.Errorf("output directory: %w", err))
	}
	s.undoOutput = undo
	cleanOutputTemps(s.OutputDir)
	dir, err := s.Cache.WorkDir()
	if err != nil {
		return halt(state, fmt.Errorf("work directory: %w", err))
	}
	*s.Work = dir
	return multistep.ActionContinue
}

func (s *stepWorkDir) Cleanup(state multistep.StateBag) {
	_, failed := state.GetOk("error")
	if failed && s.undoOutput != nil {
		defer s.undoOutput()
	}
	work := *s.Work
	if work == "" {
		return
	}
	if aborted(state) {
		return // kept with the stage (--on-error=abort): cleanup.sh removes it
	}
	if failed && s.KeepOnError {
		os.Remove(work + "/pid")
		s.Log.Warnf("--keep-on-error: the work directory (disks, serial logs) is kept at %s", work)
		return
	}
	os.RemoveAll(work)
}
