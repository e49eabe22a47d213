package builder

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/provisioners"
)

// stepProvision runs the stage's provisioners in order in the booted
// guest or the chroot; file placers stream their archive to `sudo tar -x`.
type stepProvision struct {
	// Provisioners are the stage's, Vars its variables.
	Provisioners []template.ProvisionerSpec
	Vars         map[string]string
	// Stage holds the guest (the booted VM's SSH client or the chroot).
	Stage *stageRun
	Log   logrus.FieldLogger // with the stage's name
}

// provisionStep runs the stage's provisioners.
func (b *buildState) provisionStep(sr *stageRun) *stepProvision {
	return &stepProvision{Provisioners: sr.stage.Provisioners, Vars: sr.vars, Stage: sr, Log: b.log.WithField("stage", sr.stage.Name)}
}

func (s *stepProvision) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	for i, ps := range s.Provisioners {
		log := s.Log.WithField("provisioner", fmt.Sprintf("%d:%s", i, ps.Type))
		env := &provisioners.Env{Guest: s.Stage.guest, Log: log, Vars: s.Vars}
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

// guest adapts a communicator.Client to provisioners.Guest and guestFiles.
type guest struct{ c *communicator.Client }

func (g guest) Run(ctx context.Context, command string, stdin io.Reader, out func(string)) error {
	_, err := g.c.Run(ctx, command, communicator.RunOptions{Stdin: stdin, Stdout: out, Stderr: out})
	return err
}

func (g guest) Output(ctx context.Context, command string) (string, error) {
	return g.c.Output(ctx, command, false)
}

// Fetch copies the root-readable guest file src to dst.
func (g guest) Fetch(ctx context.Context, src, dst string) error {
	sess, err := g.c.SSH().NewSession()
	if err != nil {
		return err
	}
	defer sess.Close()
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	sess.Stdout = f
	if err := sess.Run("sudo -n cat " + shellQuote(src)); err != nil {
		return fmt.Errorf("copy %s from the guest: %w", src, err)
	}
	return f.Close()
}
