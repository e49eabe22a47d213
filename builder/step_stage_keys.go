package builder

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
)

// stepStageKeys computes every stage's cache key and decides how each
// stage is built (chooseMode), on this host (Env); it appends to Stages
// the plan's stages and, last, the generalisation.
type stepStageKeys struct {
	Plan       *template.Plan
	BaseDigest string
	Env        modeEnv
	Log        logrus.FieldLogger
	Stages     *[]*stageRun
}

func (b *buildState) stageKeysStep() *stepStageKeys {
	return &stepStageKeys{Plan: b.plan, BaseDigest: b.base.Digest, Env: hostModeEnv(b.opts.NoChroot), Log: b.log, Stages: &b.stages}
}

func (s *stepStageKeys) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	env := s.Env
	keys, err := planStageKeys(s.Plan, s.BaseDigest, env)
	if err != nil {
		return halt(state, err)
	}
	var lines []string
	for i, k := range keys {
		if k.Note != "" {
			s.Log.Infof("stage %s: %s", k.Name, k.Note)
		}
		st := &s.Plan.Stages[i]
		*s.Stages = append(*s.Stages, &stageRun{stage: st, index: i, shared: k.Shared, key: k.Key, parent: k.Parent,
			mode: k.Mode, vars: s.Plan.VarsFor(i)})
		lines = append(lines, fmt.Sprintf("%s=%s(%s)", k.Name, k.Key[:12], k.Mode))
	}
	s.Log.Infof("stages: %s", strings.Join(lines, " "))
	last := keys[len(keys)-1].Key
	gm, note := generaliseMode(env)
	if note != "" {
		s.Log.Infof("stage %s: %s", GeneraliseStageName, note)
	}
	*s.Stages = append(*s.Stages, &stageRun{stage: &template.Stage{Name: GeneraliseStageName}, index: len(keys), key: GeneraliseKey(last, s.Plan.Template.Generalise, gm),
		mode: gm, generalise: true})
	return multistep.ActionContinue
}

// GeneraliseStageName names the build's last stage, the generalisation.
const GeneraliseStageName = "generalise"

// hostModeEnv is what this host offers for building stages.
func hostModeEnv(noChroot bool) modeEnv {
	env := modeEnv{helperErr: helperUsable(), chrootErr: ChrootUsable()}
	if noChroot {
		env.chrootErr = errors.New("--no-chroot")
	}
	return env
}

// PlannedStage is a stage of a plan with its cache key and how it is built.
type PlannedStage struct {
	Name   string `json:"name"`
	Key    string `json:"key"`
	Parent string `json:"parent"`
	// Mode is ModeBoot, ModeChroot or ModeOffline.
	Mode   template.Mode `json:"mode"`
	Shared bool          `json:"shared"` // a template stage (not the variant's)
	Note   string        `json:"-"`
}

// planStageKeys computes every stage's key and mode, on the base of the
// given digest.
func planStageKeys(p *template.Plan, baseDigest string, env modeEnv) ([]PlannedStage, error) {
	parent := "base:" + RootKey(baseDigest, p.Template.DiskSizeBytes())
	var out []PlannedStage
	for i := range p.Stages {
		st := &p.Stages[i]
		mode, note := chooseMode(st, env)
		key, err := StageKey(parent, st, p.VarsFor(i), mode)
		if err != nil {
			return nil, err
		}
		out = append(out, PlannedStage{Name: st.Name, Key: key, Parent: parent, Mode: mode, Shared: i < p.Shared, Note: note})
		parent = key
		if mode != template.ModeOffline {
			env.haveBoot = true // booted and chroot stages record a kernel
		}
	}
	return out, nil
}

// PlanJob is one build of a template (a variant, with all its outputs).
type PlanJob struct {
	Variant    string         `json:"variant"`
	Production bool           `json:"production"`
	Outputs    []string       `json:"outputs"`
	Stages     []PlannedStage `json:"stages"`
	// GeneraliseKey is the key of the generalised disk (the last entry),
	// GeneraliseMode how it is built (ModeChroot or ModeOffline).
	GeneraliseKey  string        `json:"generalise_key"`
	GeneraliseMode template.Mode `json:"generalise_mode"`
}

// PlanJobs lists the builds of a template — each variant (or the template
// alone when it has none) with its outputs and stage keys — on the base of
// the given digest, with the stage modes this host would use (noChroot as
// --no-chroot).
func PlanJobs(t *template.Template, baseDigest string, noChroot bool) ([]PlanJob, error) {
	variants := []string{""}
	if len(t.Variants) > 0 {
		variants = variants[:0]
		for n := range t.Variants {
			variants = append(variants, n)
		}
		sort.Strings(variants)
	}
	env := hostModeEnv(noChroot)
	var jobs []PlanJob
	for _, v := range variants {
		p, err := t.Plan(v)
		if err != nil {
			return nil, err
		}
		keys, err := planStageKeys(p, baseDigest, env)
		if err != nil {
			return nil, err
		}
		gm, _ := generaliseMode(env)
		jobs = append(jobs, PlanJob{Variant: v, Production: p.Production, Outputs: p.Outputs, Stages: keys,
			GeneraliseKey: GeneraliseKey(keys[len(keys)-1].Key, t.Generalise, gm), GeneraliseMode: gm})
	}
	return jobs, nil
}

func (s *stepStageKeys) Cleanup(multistep.StateBag) {}

// modeEnv is what chooseMode knows about the host and the earlier stages.
type modeEnv struct {
	haveBoot  bool  // an earlier stage recorded a kernel for the helper
	helperErr error // why the offline helper cannot run (nil: it can)
	chrootErr error // why chroot stages cannot run (nil: they can)
}

// generaliseMode decides how the generalisation runs: in a chroot on the
// build host when it can (the AppArmor cache then needs the image kernel's
// feature set, recorded once per kernel), else in the offline helper VM.
func generaliseMode(env modeEnv) (template.Mode, string) {
	if env.chrootErr == nil {
		return template.ModeChroot, ""
	}
	return template.ModeOffline, "offline helper: chroot unavailable: " + env.chrootErr.Error()
}

// chooseMode decides how a stage is built — ModeBoot, ModeChroot or
// ModeOffline — and returns a note when it falls back from what the
// stage asked for or would get by default.
func chooseMode(st *template.Stage, env modeEnv) (mode template.Mode, note string) {
	if st.Mode == template.ModeBoot {
		return template.ModeBoot, ""
	}
	if !st.NeedsBoot() && st.Mode != template.ModeChroot {
		// Placing files natively on the build host costs no VM; the
		// offline helper is the way without root.
		if env.chrootErr == nil {
			return template.ModeChroot, ""
		}
		if env.haveBoot && env.helperErr == nil {
			return template.ModeOffline, ""
		}
		why := "no earlier stage recorded a kernel"
		if env.helperErr != nil {
			why = env.helperErr.Error()
		}
		return template.ModeBoot, "only places files but boots: chroot unavailable: " + env.chrootErr.Error() + "; offline helper: " + why
	}
	if st.Mode == template.ModeChroot || st.ChrootDefault() {
		if env.chrootErr == nil {
			return template.ModeChroot, ""
		}
		return template.ModeBoot, "boots: chroot unavailable: " + env.chrootErr.Error()
	}
	return template.ModeBoot, ""
}
