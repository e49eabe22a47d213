package builder

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// modeOffline is a stage applied by the offline helper VM.
const modeOffline = "offline"

// stepStageKeys computes every stage's cache key and decides how each
// stage is built (chooseMode).
type stepStageKeys struct{}

func (s *stepStageKeys) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	env := modeEnv{helperErr: helperUsable(), chrootErr: ChrootUsable()}
	if b.opts.NoChroot {
		env.chrootErr = errors.New("--no-chroot")
	}
	parent := "base:" + RootKey(b.base.Digest, b.tmpl.DiskSizeBytes())
	var lines []string
	for i := range b.plan.Stages {
		st := &b.plan.Stages[i]
		mode, note := chooseMode(st, env)
		if note != "" {
			b.log.Infof("stage %s: %s", st.Name, note)
		}
		vars := b.plan.VarsFor(i)
		key, err := StageKey(parent, st, vars, mode)
		if err != nil {
			return halt(state, err)
		}
		b.stages = append(b.stages, &stageRun{stage: st, index: i, shared: i < b.plan.Shared, key: key, parent: parent,
			offline: mode == modeOffline, chrootMode: mode == ModeChroot, vars: vars})
		lines = append(lines, fmt.Sprintf("%s=%s(%s)", st.Name, key[:12], mode))
		parent = key
		if mode != modeOffline {
			env.haveBoot = true // booted and chroot stages record a kernel
		}
	}
	b.log.Infof("stages: %s", strings.Join(lines, " "))
	return multistep.ActionContinue
}

func (s *stepStageKeys) Cleanup(multistep.StateBag) {}

// modeEnv is what chooseMode knows about the host and the earlier stages.
type modeEnv struct {
	haveBoot  bool  // an earlier stage recorded a kernel for the helper
	helperErr error // why the offline helper cannot run (nil: it can)
	chrootErr error // why chroot stages cannot run (nil: they can)
}

// chooseMode decides how a stage is built — ModeBoot, ModeChroot or
// modeOffline — and returns a note when it falls back from what the
// stage asked for or would get by default.
func chooseMode(st *Stage, env modeEnv) (mode, note string) {
	if st.Mode == ModeBoot {
		return ModeBoot, ""
	}
	if !st.NeedsBoot() && st.Mode != ModeChroot {
		if env.haveBoot && env.helperErr == nil {
			return modeOffline, ""
		}
		why := "no earlier stage recorded a kernel"
		if env.helperErr != nil {
			why = env.helperErr.Error()
		}
		if env.chrootErr == nil {
			return ModeChroot, "only places files; offline helper unavailable (" + why + "): chroot"
		}
		return ModeBoot, "only places files but boots: " + why + "; chroot unavailable: " + env.chrootErr.Error()
	}
	if st.Mode == ModeChroot || st.ChrootDefault() {
		if env.chrootErr == nil {
			return ModeChroot, ""
		}
		return ModeBoot, "boots: chroot unavailable: " + env.chrootErr.Error()
	}
	return ModeBoot, ""
}
