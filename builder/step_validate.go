package builder

import (
	"context"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/builder/template"
)

// stepValidate loads and validates the template in full and resolves the
// variant's plan. Nothing has run yet when it fails.
type stepValidate struct{}

func (s *stepValidate) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	t, err := template.Load(b.opts.Template)
	if err != nil {
		return halt(state, err)
	}
	if v := b.opts.Version; v != "" {
		if err := t.SetVersion(v); err != nil {
			return halt(state, err)
		}
	}
	p, err := t.Plan(b.opts.Variant)
	if err != nil {
		return halt(state, &template.Error{Problems: []template.Problem{{File: t.File, Path: "variants", Msg: err.Error()}}})
	}
	b.tmpl, b.plan = t, p
	b.log.Infof("template %s version %s: %d stages, variant %q, outputs %v", t.Name, t.Version, len(p.Stages), p.Variant, p.Outputs)
	return multistep.ActionContinue
}

func (s *stepValidate) Cleanup(multistep.StateBag) {}
