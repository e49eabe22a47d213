package builder

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/provisioners"
)

// stepProvision runs the stage's provisioners in order in the booted
// guest or the chroot; file placers stream their archive to `sudo tar -x`.
type stepProvision struct{}

func (s *stepProvision) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	for i, ps := range sr.stage.Provisioners {
		log := b.log.WithField("stage", sr.stage.Name).WithField("provisioner", fmt.Sprintf("%d:%s", i, ps.Type))
		env := &provisioners.Env{Guest: sr.guest, Log: log, Vars: sr.vars}
		start := time.Now()
		var err error
		if r, ok := ps.P.(provisioners.Runner); ok && ps.P.Requires().NeedsBoot() {
			err = r.Run(ctx, env)
		} else if p, ok := ps.P.(provisioners.Placer); ok {
			err = provisioners.RunPlacer(ctx, p, env)
		} else {
			err = fmt.Errorf("provisioner %s cannot run", ps.Type)
		}
		if err != nil {
			return halt(state, fmt.Errorf("provisioner %d (%s): %w", i, ps.Type, err))
		}
		log.Infof("done in %.1fs", time.Since(start).Seconds())
	}
	return multistep.ActionContinue
}

func (s *stepProvision) Cleanup(multistep.StateBag) {}

// guest adapts a communicator.Client to provisioners.Guest.
type guest struct{ c *communicator.Client }

func (g guest) Run(ctx context.Context, command string, stdin io.Reader, out func(string)) error {
	_, err := g.c.Run(ctx, command, communicator.RunOptions{Stdin: stdin, Stdout: out, Stderr: out})
	return err
}
