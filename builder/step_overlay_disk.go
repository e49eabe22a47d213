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
// for the first stage).
type stepOverlayDisk struct{}

func (s *stepOverlayDisk) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	sr.started = timeNow()
	dir, err := os.MkdirTemp(b.work, "stage-"+sr.stage.Name+"-")
	if err != nil {
		return halt(state, err)
	}
	sr.dir = dir
	sr.disk = filepath.Join(dir, "disk.qcow2")
	var size int64
	if b.parentDisk == b.base.Path {
		size = b.tmpl.DiskSizeBytes()
	}
	if err := qemu.Overlay(ctx, b.parentDisk, b.parentFormat(), sr.disk, size); err != nil {
		return halt(state, err)
	}
	return multistep.ActionContinue
}

// Cleanup removes the stage's work directory unless it was committed.
func (s *stepOverlayDisk) Cleanup(state multistep.StateBag) {
	sr := getStage(state)
	if sr.dir != "" {
		if _, err := os.Stat(sr.dir); err == nil {
			if _, failed := state.GetOk("error"); !failed || !getBuild(state).opts.KeepOnError {
				os.RemoveAll(sr.dir)
			}
		}
	}
}

// parentFormat is the format of parentDisk: the base's for the base, qcow2
// for a stage disk.
func (b *buildState) parentFormat() string {
	if b.parentDisk == b.base.Path && b.base.Format != "" {
		return b.base.Format
	}
	return "qcow2"
}
