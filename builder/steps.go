package builder

import (
	"fmt"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// buildSteps is the whole pipeline, in order. Each stage runs the step list
// of its mode (stageModes) inside stepStages.
func buildSteps() []multistep.Step {
	return []multistep.Step{
		&stepValidate{},    // load and validate the template, resolve the variant
		&stepFetchBase{},   // resolve/fetch/verify the base image (cached)
		&stepWorkDir{},     // output dir, work directory with pid file; clean crashed builds
		&stepStageKeys{},   // cache keys of every stage; choose booted/offline
		&stepStages{},      // build each stage not in the cache (see below)
		&stepGeneralise{},  // offline helper: clean-up, package list, kernel drivers, fstrim
		&stepDriverCheck{}, // the kernel has the drivers of every output's hypervisors
		&stepCompact{},     // qemu-img convert -c: one standalone qcow2
		&stepArtifact{},    // other formats, manifest, rename into OutputDir
	}
}

// stageModes is how a stage of each built mode runs: its step list and,
// for the log, where.
var stageModes = map[Mode]struct {
	how   string
	steps func() []multistep.Step
}{
	ModeBoot:    {"booted VM", bootedStageSteps},
	ModeChroot:  {"chroot on the build host", chrootStageSteps},
	ModeOffline: {"offline helper", offlineStageSteps},
}

// bootedStageSteps build a stage that runs commands in the guest.
func bootedStageSteps() []multistep.Step {
	return []multistep.Step{
		&stepOverlayDisk{}, // qcow2 overlay on the parent (resized)
		&stepSeedISO{},     // cidata seed: ephemeral ed25519 key, build user
		&stepDirectBoot{},  // the kernel to boot directly (parent's or base's)
		&stepStartQEMU{},   // KVM or TCG, serial log, QMP
		&stepWaitSSH{},     // until SSH answers and cloud-init is done
		&stepProvision{},   // the stage's provisioners, in order
		&stepBootFiles{},   // keep kernel + initrd for offline stages
		&stepShutdown{},    // ACPI power off, time-out, kill
		&stepCommitStage{}, // into the stage cache
	}
}

// chrootStageSteps build a stage whose provisioners run natively on the
// build host, chrooted into the stage's disk (no VM).
func chrootStageSteps() []multistep.Step {
	return []multistep.Step{
		&stepOverlayDisk{},
		&stepChrootMount{},     // FUSE export, loop mount in a private namespace
		&stepProvision{},       // the stage's provisioners, in order
		&stepChrootBootFiles{}, // keep kernel + initrd for later stages
		&stepChrootFinish{},    // unmount, stop the export
		&stepCommitStage{},
	}
}

// offlineStageSteps build a stage that only places files.
func offlineStageSteps() []multistep.Step {
	return []multistep.Step{
		&stepOverlayDisk{},
		&stepOfflinePlace{}, // helper VM unpacks the files into the disk
		&stepCommitStage{},
	}
}

// stepName is a step's name for logs: its type without "step", in words.
func stepName(s multistep.Step) string {
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
