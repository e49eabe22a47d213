package builder

import (
	"context"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/qemu"
)

// stepOverlayDisk creates the stage's disk: a qcow2 overlay whose backing
// file is the parent stage's disk (or the cached base, grown to disk_size
// for the first stage). It makes the stage's work directory (Stage.dir)
// with the disk in it (Stage.disk).
type stepOverlayDisk struct {
	// Stage receives the work directory, the disk and the start time.
	Stage        *stageRun
	WorkDir      string // the build's work directory
	Parent       string // the parent disk
	ParentFormat string
	// Size grows the disk to this many bytes (0: the parent's size).
	Size int64
	// KeepOnError keeps the work directory of a failed stage.
	KeepOnError bool
}

// overlayStep is the stage's stepOverlayDisk on the build's parent disk;
// the first stage's disk (on the base) is grown to disk_size.
func (b *buildState) overlayStep(sr *stageRun) *stepOverlayDisk {
	s := &stepOverlayDisk{Stage: sr, WorkDir: b.work, Parent: b.parentDisk, ParentFormat: b.parentFormat(), KeepOnError: b.opts.KeepOnError}
	if b.parentDisk == b.baseDisk() {
		s.Size = b.tmpl.DiskSizeBytes()
	}
	return s
}

func (s *stepOverlayDisk) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	sr.started = timeNow()
	dir, err := os.MkdirTemp(s.WorkDir, "stage-"+sr.stage.Name+"-")
	if err != nil {
		return halt(state, err)
	}
	sr.dir = dir
	sr.disk = filepath.Join(dir, "disk.qcow2")
	if err := qemu.Overlay(ctx, s.Parent, s.ParentFormat, sr.disk, s.Size); err != nil {
		return halt(state, err)
	}
	return multistep.ActionContinue
}

// Cleanup removes the stage's work directory unless it was committed.
func (s *stepOverlayDisk) Cleanup(state multistep.StateBag) {
	sr := s.Stage
	if sr.dir != "" {
		if _, err := os.Stat(sr.dir); err == nil {
			if _, failed := state.GetOk("error"); !failed || !s.KeepOnError {
				os.RemoveAll(sr.dir)
			}
		}
	}
}

// parentFormat is the format of parentDisk: the base's for the base, qcow2
// for a stage disk.
func (b *buildState) parentFormat() string {
	if b.parentDisk == b.baseDisk() && b.base.Format != "" {
		return b.base.Format
	}
	return "qcow2"
}
