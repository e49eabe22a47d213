package builder

import (
	"context"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
)

// stepValidate loads and validates the template in full and resolves the
// variant's plan into Out. Nothing has run yet when it fails.
type stepValidate struct {
	Template string // the template file
	Version  string // overrides the template's version ("" keeps it)
	Variant  string // "" → the template's default
	Log      logrus.FieldLogger
	Out      *validated
}

// validated is stepValidate's result: the template and the variant's plan.
type validated struct {
	tmpl *template.Template
	plan *template.Plan
}

func (b *buildState) validateStep() *stepValidate {
	return &stepValidate{Template: b.opts.Template, Version: b.opts.Version, Variant: b.opts.Variant, Log: b.log, Out: &b.validated}
}

func (s *stepValidate) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	t, err := template.Load(s.Template)
	if err != nil {
		return halt(state, err)
	}
	if v := s.Version; v != "" {
		if err := t.SetVersion(v); err != nil {
			return halt(state, err)
		}
	}
	p, err := t.Plan(s.Variant)
	if err != nil {
		return halt(state, &template.Error{Problems: []template.Problem{{File: t.File, Path: "variants", Msg: err.Error()}}})
	}
	s.Out.tmpl, s.Out.plan = t, p
	s.Log.Infof("template %s version %s: %d stages, variant %q, outputs %v", t.Name, t.Version, len(p.Stages), p.Variant, p.Outputs)
	return multistep.ActionContinue
}

func (s *stepValidate) Cleanup(multistep.StateBag) {}
