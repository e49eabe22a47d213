package builder

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepStageKeys computes every stage's cache key and decides which stages
// run offline: a stage that only places files runs in the helper VM when a
// kernel and initrd of its parent disk are known (an earlier booted stage
// recorded them) and this ecs-image can serve as the helper.
type stepStageKeys struct{}

func (s *stepStageKeys) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	helperErr := helperUsable()
	parent := "base:" + RootKey(b.base.Digest, b.tmpl.DiskSizeBytes())
	haveBoot := false
	var lines []string
	for i := range b.plan.Stages {
		st := &b.plan.Stages[i]
		offline := !st.NeedsBoot() && haveBoot && helperErr == nil
		if !st.NeedsBoot() && !offline {
			why := "no earlier booted stage recorded a kernel"
			if helperErr != nil {
				why = helperErr.Error()
			}
			b.log.Infof("stage %s only places files but boots: %s", st.Name, why)
		}
		vars := b.plan.VarsFor(i)
		key, err := StageKey(parent, st, vars, offline)
		if err != nil {
			return halt(state, err)
		}
		b.stages = append(b.stages, &stageRun{stage: st, index: i, shared: i < b.plan.Shared, key: key, parent: parent, offline: offline, vars: vars})
		mode := "booted"
		if offline {
			mode = "offline"
		}
		lines = append(lines, fmt.Sprintf("%s=%s(%s)", st.Name, key[:12], mode))
		parent = key
		if !offline {
			haveBoot = true
		}
	}
	b.log.Infof("stages: %s", strings.Join(lines, " "))
	return multistep.ActionContinue
}

func (s *stepStageKeys) Cleanup(multistep.StateBag) {}
