package builder

import (
	"context"
	"fmt"
	"strings"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// buildSteps is the whole pipeline, in order. Each stage runs the step list
// of its mode (stageModes) inside stepStages.
func buildSteps() []multistep.Step {
	return []multistep.Step{
		// Each step is made when it starts, with its inputs from the
		// options and the earlier steps' results (the template, the base,
		// the stages, the generalised disk and its kernel, the compaction)
		// as fields, and a pointer to where its own results go.
		late((*buildState).validateStep),    // load and validate the template, resolve the variant
		late((*buildState).fetchBaseStep),   // resolve/fetch/verify the base image (cached)
		late((*buildState).workDirStep),     // output dir, work directory with pid file; clean crashed builds
		late((*buildState).stageKeysStep),   // cache keys of every stage; choose booted/offline
		late((*buildState).stagesStep),      // build each stage not in the cache, the generalisation last (see below)
		late((*buildState).driverCheckStep), // the kernel has the drivers of every output's hypervisors
		late((*buildState).compactStep),     // qemu-img convert -c: one standalone qcow2
		late((*buildState).artifactStep),    // other formats, manifest, rename into OutputDir
	}
}

// lateStep is a step made when it starts, from the build so far: a step
// whose inputs exist only after earlier steps (the plan, the stages) still
// takes them as fields, and can be tested from plain values.
type lateStep struct {
	name string // the made step's, for the log and the timings
	make func(*buildState) multistep.Step
	step multistep.Step
}

// late returns a lateStep made by make.
func late[S multistep.Step](make func(*buildState) S) *lateStep {
	var zero S
	return &lateStep{name: stepName(zero), make: func(b *buildState) multistep.Step { return make(b) }}
}

func (l *lateStep) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	l.step = l.make(getBuild(state))
	return l.step.Run(ctx, state)
}

func (l *lateStep) Cleanup(state multistep.StateBag) {
	if l.step != nil {
		l.step.Cleanup(state)
	}
}

// stageMode is how a stage runs: its step list and, for the log, where.
type stageMode struct {
	how   string
	steps func(*buildState, *stageRun) []multistep.Step
}

// generaliseStage is how the generalisation runs: like an offline stage,
// with the clean-up, package list, kernel drivers and fstrim added to the
// helper's job.
var generaliseStage = stageMode{"offline helper: generalise", generaliseStageSteps}

// stageModes is how a stage of each built mode runs: its step list and,
// for the log, where.
var stageModes = map[template.Mode]stageMode{
	template.ModeBoot:    {"booted VM", bootedStageSteps},
	template.ModeChroot:  {"chroot on the build host", chrootStageSteps},
	template.ModeOffline: {"offline helper", offlineStageSteps},
}

// The stage step lists are made when the stage starts, each step with its
// inputs from the template and the build so far as fields (the parent disk,
// the kernel recorded for it, the stage's key and provisioners) and the
// stage's stageRun, which receives the results (its work directory, disk,
// VM, guest, boot files) that later steps of the list read.

// bootedStageSteps build a stage that runs commands in the guest.
func bootedStageSteps(b *buildState, sr *stageRun) []multistep.Step {
	return []multistep.Step{
		b.overlayStep(sr), // qcow2 overlay on the parent (resized)
		&stepSeedISO{Key: sr.key, Stage: sr, Log: b.log}, // cidata seed: ephemeral ed25519 key, build user
		b.directBootStep(sr),                             // the kernel to boot directly (parent's or base's)
		b.startQEMUStep(sr),                              // KVM or TCG, serial log, QMP
		// until SSH answers and cloud-init is done
		&stepWaitSSH{Stage: sr, Timeout: b.tmpl.SSHTimeout, Log: b.log},
		b.provisionStep(sr), // the stage's provisioners, in order
		&stepBootFiles{Key: sr.key, Stage: sr, Log: b.log}, // keep kernel + initrd for offline stages
		// ACPI power off, time-out, kill
		&stepShutdown{Stage: sr, Timeout: b.tmpl.ShutdownTimeout, Log: b.log},
		b.commitStep(sr), // into the stage cache
	}
}

// chrootStageSteps build a stage whose provisioners run natively on the
// build host, chrooted into the stage's disk (no VM).
func chrootStageSteps(b *buildState, sr *stageRun) []multistep.Step {
	return []multistep.Step{
		b.overlayStep(sr),
		b.chrootMountStep(sr),        // FUSE export, loop mount in a private namespace
		b.provisionStep(sr),          // the stage's provisioners, in order
		b.chrootBootFilesStep(sr),    // keep kernel + initrd for later stages
		&stepChrootFinish{Stage: sr}, // unmount, stop the export
		b.commitStep(sr),
	}
}

// offlineStageSteps build a stage that only places files.
func offlineStageSteps(b *buildState, sr *stageRun) []multistep.Step {
	return []multistep.Step{
		b.overlayStep(sr),
		b.offlinePlaceStep(sr), // helper VM unpacks the files into the disk
		b.commitStep(sr),
	}
}

// generaliseChrootStage is the generalisation in a chroot on the build host.
var generaliseChrootStage = stageMode{"chroot on the build host: generalise", generaliseChrootSteps}

// generaliseChrootSteps build the generalised disk in a chroot on the
// build host (no VM, unless the image's kernel is new: one helper boot
// records its AppArmor feature set).
func generaliseChrootSteps(b *buildState, sr *stageRun) []multistep.Step {
	return []multistep.Step{
		b.overlayStep(sr),
		b.kernelFeaturesStep(sr),     // the kernel's AppArmor features: cached, else one helper boot
		b.chrootMountStep(sr),        // FUSE export, loop mount in a private namespace
		b.chrootGeneraliseStep(sr),   // the merged stage's files, clean-up, AppArmor cache, package list, drivers, fstrim
		&stepChrootFinish{Stage: sr}, // unmount, stop the export, check the overlay
		b.commitStep(sr),             // with the package list and kernel
	}
}

// generaliseStageSteps build the generalised disk.
func generaliseStageSteps(b *buildState, sr *stageRun) []multistep.Step {
	return []multistep.Step{
		b.overlayStep(sr),
		b.generaliseStep(sr), // helper VM: the merged stage's files, clean-up, package list, drivers, fstrim
		b.commitStep(sr),     // with the package list and kernel
	}
}

// parentBootDir is the boot/ directory of the kernel recorded for the
// parent disk ("" when none is).
func (b *buildState) parentBootDir() string {
	if b.bootFrom == "" {
		return ""
	}
	return b.cache.BootDir(b.bootFrom)
}

// stepName is a step's name for logs: its type without "step", in words.
func stepName(s multistep.Step) string {
	if l, ok := s.(*lateStep); ok {
		return l.name
	}
	n := strings.TrimPrefix(fmt.Sprintf("%T", s), "*builder.step")
	var b strings.Builder
	for i, r := range n {
		if i > 0 && r >= 'A' && r <= 'Z' && !(n[i-1] >= 'A' && n[i-1] <= 'Z') {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToLower(b.String())
}
