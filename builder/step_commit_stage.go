package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepCommitStage moves the finished stage (disk, boot files) into the
// stage cache under its key, and uploads it to the shared cache.
type stepCommitStage struct {
	// Entry is the stage's cache entry but for what the stage's steps
	// found (boot files, package list, kernel) and its times.
	Entry StageEntry
	// BootFrom is the entry whose boot files the parent disk boots with:
	// the stage's own unless it recorded some.
	BootFrom string
	// Replace removes an entry of the same key first (--no-cache).
	Replace bool
	Cache   *StageCache
	Remote  *remoteCache // nil: none
	WorkDir string       // the build's, for the upload
	// Stage holds the stage's work directory and what its steps found;
	// its directory is "" once committed.
	Stage *stageRun
}

// commitStep commits the stage on the build's parent disk.
func (b *buildState) commitStep(sr *stageRun) *stepCommitStage {
	return &stepCommitStage{
		Entry: StageEntry{Key: sr.key, Parent: sr.parent, Name: sr.stage.Name, Template: b.tmpl.Name, Mode: sr.mode,
			Backing: b.parentDisk, ParentID: b.parentID},
		BootFrom: b.bootFrom, Replace: b.opts.NoCache, Cache: b.cache, Remote: b.remote, WorkDir: b.work, Stage: sr,
	}
}

func (s *stepCommitStage) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	for _, f := range []string{"seed.iso", "serial.log", "helper-serial.log", "base-boot", "boot-initrd.img"} {
		os.RemoveAll(filepath.Join(sr.dir, f))
	}
	if sr.bootFrom == "" {
		sr.bootFrom = s.BootFrom
	}
	if s.Replace {
		// Replaced by the fresh build; entries built on the old disk
		// would lose their backing file's content, so they go too.
		if err := s.Cache.Remove(s.Entry.Key); err != nil {
			return halt(state, err)
		}
	}
	e := s.Entry
	e.BootFrom, e.Packages, e.Kernel = sr.bootFrom, sr.packages, sr.kernelInfo
	e.Created = timeNow().UTC()
	e.Seconds = timeNow().Sub(sr.started).Seconds()
	if err := s.Cache.Commit(sr.dir, &e); err != nil {
		return halt(state, fmt.Errorf("commit to the stage cache: %w", err))
	}
	sr.dir = ""
	s.Remote.push(ctx, s.Cache, s.WorkDir, e.Key)
	return multistep.ActionContinue
}

func (s *stepCommitStage) Cleanup(multistep.StateBag) {}
