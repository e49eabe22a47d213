package builder

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/provisioners"
	"github.com/ecs-image/ecs-image/qemu"
)

// stepGeneralise makes the image safe to clone, offline in the helper VM
// on a last overlay (cached like a stage): removes the build user and its
// key, cloud-init state (clean --logs --seed), machine-id (truncated), SSH
// host keys, apt lists and caches, logs; records the package list; trims
// free blocks. It also runs, without the clean-up, when generalisation is
// off, for the package list.
type stepGeneralise struct{}

func (s *stepGeneralise) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	g := b.tmpl.Generalise
	lastKey := b.parentKey
	if b.deferred != nil {
		lastKey = b.deferred.key
	}
	b.genKey = GeneraliseKey(lastKey, g)
	if !b.opts.NoCache {
		if e, remote := b.lookup(ctx, b.genKey, b.parentKey); e != nil {
			// A merged last stage looked its generalised disk up first.
			remote = remote || (b.deferred != nil && b.deferred.remote)
			from := ""
			if remote {
				from = ", from the shared cache"
			}
			b.log.Infof("generalise: cached (%s%s)", b.genKey[:12], from)
			b.genDisk, b.packages, b.genCached, b.genRemote, b.kernel = b.cache.Disk(b.genKey), e.Packages, true, remote, e.Kernel
			return multistep.ActionContinue
		}
	}
	boot := bootFiles{Dir: b.cache.BootDir(b.bootFrom)}
	if b.bootFrom == "" || !boot.ok() {
		return halt(state, fmt.Errorf("generalise: %w", errNoBootFiles))
	}
	start := timeNow()
	dir, err := os.MkdirTemp(b.work, "generalise-")
	if err != nil {
		return halt(state, err)
	}
	disk := filepath.Join(dir, "disk.qcow2")
	if err := qemu.Overlay(ctx, b.parentDisk, b.parentFormat(), disk, 0); err != nil {
		return halt(state, err)
	}
	var placers []provisioners.Placer
	if b.deferred != nil {
		for _, ps := range b.deferred.stage.Provisioners {
			placers = append(placers, ps.P.(provisioners.Placer))
		}
	}
	r := &offlineRun{Disk: disk, Boot: boot, WorkDir: dir, Accel: b.accel, AccelForced: b.accelForced, Timeout: 10 * time.Minute, Placers: placers,
		Log: b.log.WithField("step", "generalise"),
		Job: helperJob{Generalise: g.On(), GeneraliseScript: generaliseScript(g), Packages: true, Trim: g.Trim(), Drivers: formats.AllDrivers()}}
	if err := r.run(ctx); err != nil {
		return halt(state, fmt.Errorf("generalise: %w", err))
	}
	os.Remove(r.SerialLog)
	b.packages, b.kernel = r.Packages, r.Kernel
	if r.Kernel == nil {
		b.log.Warnf("generalise: the image kernel's drivers are unknown (%s): the output formats' drivers are not checked", r.KernelUnknown)
	}
	e := &StageEntry{Key: b.genKey, Parent: b.parentKey, Name: "generalise", Template: b.tmpl.Name, Mode: ModeOffline,
		BootFrom: b.bootFrom, Backing: b.parentDisk, Created: timeNow().UTC(), Seconds: timeNow().Sub(start).Seconds(), Packages: r.Packages, Kernel: r.Kernel, ParentID: b.parentID}
	if b.opts.NoCache {
		b.cache.Remove(b.genKey)
	}
	if err := b.cache.Commit(dir, e); err != nil {
		return halt(state, err)
	}
	b.genDisk = b.cache.Disk(b.genKey)
	b.remote.push(ctx, b.cache, b.work, b.genKey)
	b.log.Infof("generalise: %d packages in the image", len(b.packages))
	return multistep.ActionContinue
}

func (s *stepGeneralise) Cleanup(multistep.StateBag) {}

// manifestJSON is a helper for tests and the artifact step.
func manifestJSON(m *Manifest) ([]byte, error) { return json.MarshalIndent(m, "", "  ") }
