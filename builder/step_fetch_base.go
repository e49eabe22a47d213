package builder

import (
	"context"
	"fmt"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/qemu"
)

// stepFetchBase resolves the template's base (catalog name, URL with
// checksum, or local file) to a verified, cached local image, and chooses
// the accelerator, into Out.
type stepFetchBase struct {
	Template *template.Template
	Accel    string // overrides the template's accelerator ("" keeps it)
	// CacheDir holds the uncompressed copies of compressed bases ("":
	// none are made).
	CacheDir string
	Log      logrus.FieldLogger
	Out      *fetchedBase
}

// fetchedBase is stepFetchBase's result: the base and the accelerator.
type fetchedBase struct {
	base *images.Base
	// disk is what the first stage is an overlay of: base.Path, or its
	// uncompressed copy (plainBase). Its format is base.Format.
	disk  string
	accel qemu.Accel
	// accelForced: the template or --accel asked for KVM (no TCG fallback).
	accelForced bool
}

func (b *buildState) fetchBaseStep() *stepFetchBase {
	return &stepFetchBase{Template: b.tmpl, Accel: b.opts.Accel, CacheDir: images.CacheDir(), Log: b.log, Out: &b.fetchedBase}
}

func (s *stepFetchBase) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	base, err := ResolveBase(ctx, s.Template)
	if err != nil {
		return halt(state, err)
	}
	s.Out.base = base
	s.Log.Infof("base %s (%s, %s, %s)", base.Path, base.Format, base.Digest, base.Firmware)
	s.Out.disk = plainBase(ctx, base, s.CacheDir, s.Log)
	if s.Out.disk != base.Path {
		s.Log.Infof("base read from its uncompressed copy %s", s.Out.disk)
	}
	accel := s.Template.Accel
	if s.Accel != "" {
		accel = s.Accel
	}
	switch accel {
	case "kvm":
		s.Out.accel, s.Out.accelForced = qemu.AccelKVM, true
	case "tcg":
		s.Out.accel = qemu.AccelTCG
	default:
		s.Out.accel = qemu.DetectAccel(ctx)
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
