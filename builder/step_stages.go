package builder

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/provisioners"
)

// stepStages builds the plan's stages in order, the generalisation last. A stage whose key is in
// the cache is not run at all (unless --no-cache); the others run their
// own step list (stageModes) with a nested runner, and are committed to the cache.
type stepStages struct {
	// Stages are the plan's stages and, last, the generalisation.
	Stages     []*stageRun
	Generalise template.Generalise
	NoCache    bool
	Log        logrus.FieldLogger
	// Build is the build whose parent disk advances stage by stage: it
	// looks stages up in the caches, makes each stage's step list and
	// keeps a failed stage (--on-error).
	Build *buildState
	// Out receives the generalised disk's package list and kernel.
	Out *generalised
}

// generalised is what stepStages finds out about the generalised disk:
// its package list and kernel with its drivers (nil when unknown).
type generalised struct {
	packages []string
	kernel   *KernelInfo
}

func (b *buildState) stagesStep() *stepStages {
	return &stepStages{Stages: b.stages, Generalise: b.tmpl.Generalise, NoCache: b.opts.NoCache, Log: b.log, Build: b, Out: &b.generalised}
}

func (s *stepStages) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := s.Build
	b.parentDisk = b.baseDisk()
	if len(s.Stages) > 0 {
		b.parentKey = s.Stages[0].parent
	}
	for i, sr := range s.Stages {
		if ctx.Err() != nil {
			return halt(state, ctx.Err())
		}
		if sr.generalise {
			// Built on the last stage committed (a merged one is not).
			sr.parent = b.parentKey
		}
		// A file-only last stage is applied in the same helper boot as the
		// generalisation; its result is cached as the generalised disk.
		if gen := s.Stages[len(s.Stages)-1]; i == len(s.Stages)-2 && gen.generalise && mergeable(sr, gen) && s.Generalise.On() {
			if e, _ := b.lookup(ctx, sr.key, sr.parent); e == nil || s.NoCache {
				sr.merged = true
				gen.merge = sr
				if !s.NoCache {
					if e, remote := b.lookup(ctx, gen.key, b.parentKey); e != nil {
						sr.cached, sr.remote = true, remote
					}
				}
				how := "one offline helper boot"
				if gen.mode == template.ModeChroot {
					how = "one chroot on the build host"
				}
				s.Log.Infof("stage %s: applied with the generalisation (%s)", sr.stage.Name, how)
				continue
			}
		}
		if !s.NoCache {
			if e, remote := b.lookup(ctx, sr.key, sr.parent); e != nil {
				// A merged last stage looked its generalised disk up first.
				remote = remote || (sr.merge != nil && sr.merge.remote)
				sr.cached, sr.remote = true, remote
				from := ""
				if remote {
					from = ", from the shared cache"
				}
				s.Log.Infof("stage %s: cached (%s%s)", sr.stage.Name, sr.key[:12], from)
				if sr.generalise {
					s.Out.packages, s.Out.kernel = e.Packages, e.Kernel
				}
				s.advance(b, sr.key, e.BootFrom)
				continue
			}
		}
		run := stageModes[sr.mode]
		if sr.generalise {
			run = generaliseStage
			if sr.mode == template.ModeChroot {
				run = generaliseChrootStage
			}
		}
		s.Log.Infof("stage %s: building (%s, key %s)", sr.stage.Name, run.how, sr.key[:12])
		runner := &multistep.BasicRunner{Steps: onErrorSteps(timedSteps(run.steps(b, sr), sr.stage.Name), sr.stage.Name)}
		runner.Run(ctx, state)
		if raw, ok := state.GetOk("error"); ok {
			err := fmt.Errorf("stage %s: %w", sr.stage.Name, raw.(error))
			if aborted(state) {
				if help, kerr := b.keepStage(sr); kerr != nil {
					// Not kept after all: stop it, and clean up as usual.
					s.Log.Errorf("--on-error: cannot keep stage %s: %v", sr.stage.Name, kerr)
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
		if sr.generalise {
			s.Out.packages, s.Out.kernel = sr.packages, sr.kernelInfo
		}
		s.advance(b, sr.key, sr.bootFrom)
	}
	return multistep.ActionContinue
}

// mergeable tells whether stage sr can be applied in the generalisation
// gen: it only places files, where the generalisation runs (the offline
// helper, or a chroot on the build host).
func mergeable(sr, gen *stageRun) bool {
	if sr.mode != gen.mode || (sr.mode != template.ModeOffline && sr.mode != template.ModeChroot) || sr.stage.NeedsBoot() {
		return false
	}
	for _, ps := range sr.stage.Provisioners {
		if _, ok := ps.P.(provisioners.Placer); !ok {
			return false
		}
	}
	return true
}

// lookup finds key in the local cache, else in the remote one (committed
// locally on a verified hit; its disk is rebased onto b.parentDisk, so
// parentKey must be the key of that disk and b.parentID the ID of its
// entry). A local hit missing from the remote is uploaded. remote tells
// that the entry was downloaded.
func (b *buildState) lookup(ctx context.Context, key, parentKey string) (e *StageEntry, remote bool) {
	if e := b.cache.Lookup(key); e != nil {
		if !onBase(parentKey) && e.ParentID != "" && b.parentID != "" && e.ParentID != b.parentID {
			// Built on another build of its parent (whose entry was
			// replaced under it): its overlay is not valid on this one.
			b.log.Warnf("stage cache: %s was built on another build of its parent, removed", key[:12])
			if err := b.cache.Remove(key); err != nil {
				b.log.Warnf("stage cache: %v", err)
				return nil, false
			}
		} else {
			b.cache.ensureIDs(e, b.parentID)
			b.remote.push(ctx, b.cache, b.work, key)
			return e, false
		}
	}
	if b.opts.NoCache {
		return nil, false
	}
	e = b.remote.fetch(ctx, b.cache, b.work, key, parentKey, b.parentID, b.parentDisk, b.parentFormat())
	return e, e != nil
}

// advance makes key's entry the parent of the next stage.
func (s *stepStages) advance(b *buildState, key, bootFrom string) {
	b.parentKey = key
	b.parentDisk = b.cache.Disk(key)
	b.parentID = ""
	if e := b.cache.Lookup(key); e != nil {
		b.parentID = e.ID
	}
	if bootFrom != "" {
		b.bootFrom = bootFrom
	}
}

func (s *stepStages) Cleanup(multistep.StateBag) {}
