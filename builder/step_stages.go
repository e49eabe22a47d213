package builder

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepStages builds the plan's stages in order. A stage whose key is in
// the cache is not run at all (unless --no-cache); the others run their
// own step list (stageModes) with a nested runner, and are committed to the cache.
type stepStages struct{}

func (s *stepStages) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	b.parentDisk = b.base.Path
	for i, sr := range b.stages {
		if ctx.Err() != nil {
			return halt(state, ctx.Err())
		}
		// A file-only last stage is applied in the same helper boot as the
		// generalisation; its result is cached as the generalised disk.
		if i == len(b.stages)-1 && sr.mode == ModeOffline && b.tmpl.Generalise.On() {
			if e := b.lookup(ctx, sr.key, sr.parent); e == nil || b.opts.NoCache {
				sr.merged = true
				b.deferred = sr
				if !b.opts.NoCache && b.lookup(ctx, GeneraliseKey(sr.key, b.tmpl.Generalise), b.parentKey) != nil {
					sr.cached = true
				}
				b.log.Infof("stage %s: applied with the generalisation (one offline helper boot)", sr.stage.Name)
				continue
			}
		}
		if !b.opts.NoCache {
			if e := b.lookup(ctx, sr.key, sr.parent); e != nil {
				sr.cached = true
				b.log.Infof("stage %s: cached (%s)", sr.stage.Name, sr.key[:12])
				s.advance(b, sr.key, e.BootFrom)
				continue
			}
		}
		run := stageModes[sr.mode]
		b.log.Infof("stage %s: building (%s, key %s)", sr.stage.Name, run.how, sr.key[:12])
		state.Put("stage", sr)
		runner := &multistep.BasicRunner{Steps: onErrorSteps(timedSteps(run.steps()))}
		runner.Run(ctx, state)
		state.Remove("stage")
		if raw, ok := state.GetOk("error"); ok {
			err := fmt.Errorf("stage %s: %w", sr.stage.Name, raw.(error))
			if aborted(state) {
				if help, kerr := b.keepStage(sr); kerr != nil {
					// Not kept after all: stop it, and clean up as usual.
					b.log.Errorf("--on-error: cannot keep stage %s: %v", sr.stage.Name, kerr)
					state.Remove(stateAborted)
					if sr.machine != nil {
						sr.machine.Kill()
						<-sr.machine.Done()
					}
					if sr.chroot != nil {
						sr.chroot.close()
					}
					if sr.dir != "" {
						os.RemoveAll(sr.dir)
					}
				} else {
					err = &KeptError{Err: err, Help: help}
				}
			}
			state.Put("error", err)
			return multistep.ActionHalt
		}
		if ctx.Err() != nil {
			return halt(state, ctx.Err())
		}
		s.advance(b, sr.key, sr.bootFrom)
	}
	return multistep.ActionContinue
}

// lookup finds key in the local cache, else in the remote one (committed
// locally on a verified hit; its disk is rebased onto b.parentDisk, so
// parentKey must be the key of that disk). A local hit missing from the
// remote is uploaded.
func (b *buildState) lookup(ctx context.Context, key, parentKey string) *StageEntry {
	if e := b.cache.Lookup(key); e != nil {
		b.remote.push(ctx, b.cache, b.work, key)
		return e
	}
	if b.opts.NoCache {
		return nil
	}
	return b.remote.fetch(ctx, b.cache, b.work, key, parentKey, b.parentDisk, b.parentFormat())
}

func (s *stepStages) advance(b *buildState, key, bootFrom string) {
	b.parentKey = key
	b.parentDisk = b.cache.Disk(key)
	if bootFrom != "" {
		b.bootFrom = bootFrom
	}
}

func (s *stepStages) Cleanup(multistep.StateBag) {}
