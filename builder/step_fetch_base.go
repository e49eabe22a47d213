package builder

import (
	"context"
	"fmt"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/qemu"
)

// stepFetchBase resolves the template's base (catalog name, URL with
// checksum, or local file) to a verified, cached local image, and chooses
// the accelerator.
type stepFetchBase struct{}

func (s *stepFetchBase) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	base, err := ResolveBase(ctx, b.tmpl)
	if err != nil {
		return halt(state, err)
	}
	b.base = base
	b.log.Infof("base %s (%s, %s, %s)", base.Path, base.Format, base.Digest, base.Firmware)
	accel := b.tmpl.Accel
	if b.opts.Accel != "" {
		accel = b.opts.Accel
	}
	switch accel {
	case "kvm":
		b.accel, b.accelForced = qemu.AccelKVM, true
	case "tcg":
		b.accel = qemu.AccelTCG
	default:
		b.accel = qemu.DetectAccel(ctx)
	}
	return multistep.ActionContinue
}

func (s *stepFetchBase) Cleanup(multistep.StateBag) {}

// ResolveBase resolves the template's base (catalog name, URL with
// checksum, or local file) to a verified, cached local image.
func ResolveBase(ctx context.Context, t *template.Template) (*images.Base, error) {
	tb := t.Base
	ref := tb.Catalog
	opts := images.ResolveOptions{User: tb.User}
	switch {
	case tb.URL != "":
		ref, opts.Checksum = tb.URL, tb.Checksum
	case tb.File != "":
		ref = tb.File
	}
	if t.Firmware != "auto" {
		opts.Firmware = t.Firmware
	}
	base, err := images.Resolve(ctx, ref, opts)
	if err != nil {
		return nil, fmt.Errorf("base %s: %w", ref, err)
	}
	return base, nil
}
