// Package builder turns a template's plan (package builder/template) into
// a provisioned, generalised disk image: a multistep pipeline (steps.go lists it) that boots the base under
// QEMU with a build-time cidata seed, runs the provisioners of each stage
// over SSH, caches every stage as a qcow2 overlay, places files of file-only
// stages offline with a small helper VM, generalises and compacts the result.
package builder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/provisioners"
	"github.com/ecs-image/ecs-image/qemu"
)

// Options are the inputs of one build.
type Options struct {
	// Template is the template file.
	Template string
	// OutputDir receives the artifacts (created if missing).
	OutputDir string
	// Variant to build ("" → the template's default).
	Variant string
	// NoCache rebuilds every stage (results still go into the cache).
	NoCache bool
	// KeepOnError keeps the work directory (disks, serial logs) of a
	// failed build and prints its path.
	KeepOnError bool
	// Cache is the stage cache (nil: DefaultStageCache()).
	Cache *StageCache
	// NoChroot builds every stage that would run in a chroot on the build
	// host in the booted image instead.
	NoChroot bool
	// Accel overrides the template's accelerator ("" keeps it).
	Accel string
	// Version overrides the template's version ("" keeps it).
	Version string
	// OnError is what a failed stage does: OnErrorCleanup (default: stop
	// and remove everything), OnErrorAbort (keep its VM or chroot running
	// and say how to get in; the error is a *KeptError) or OnErrorAsk
	// (call Ask: retry the step, abort or clean up).
	OnError string
	// Ask asks the user what to do about a failed step; it returns
	// AskRetry, AskAbort or AskCleanup. Only with OnErrorAsk.
	Ask func(question string) (string, error)
	// Log receives progress (nil: logrus's standard logger).
	Log logrus.FieldLogger
	// Remote is a shared stage store (nil: local cache only): a stage
	// that misses locally is downloaded from it, a committed stage is
	// uploaded to it.
	Remote RemoteStore
	// RemoteMode is RemoteRead, RemoteWrite or RemoteReadWrite ("": the
	// latter).
	RemoteMode string
}

// buildState is what the steps share (under the state bag key "build").
type buildState struct {
	opts   Options
	log    logrus.FieldLogger
	cache  *StageCache
	remote *remoteCache // nil: none

	validated          // stepValidate's results: the template and the plan
	fetchedBase        // stepFetchBase's: the base and the accelerator
	work        string // work directory (tmp/build-*), removed at the end

	// stages are the plan's stages and, last, the generalisation.
	stages []*stageRun
	// parentKey/parentDisk/bootFrom describe the disk the next stage
	// builds on (after the last stage: the generalised disk).
	parentKey  string
	parentDisk string
	bootFrom   string
	// parentID is the ID of parentKey's entry (StageEntry.ID; "" on the
	// base).
	parentID string

	// generalised: the image's package list and its kernel and drivers
	// (nil when unknown), from the generalisation (stepStages).
	generalised

	compaction compaction // stepCompact's results
	artifact   Artifact   // stepArtifact's (ManifestPath "": none)
	timings    []StepTiming
	started    time.Time
}

// stageRun is one stage of the plan being built: its stage steps (made
// with a pointer to it) write their results into it.
type stageRun struct {
	stage  *template.Stage
	index  int
	shared bool
	key    string
	parent string
	mode   template.Mode // ModeBoot, ModeChroot or ModeOffline
	vars   map[string]string
	cached bool
	// remote: downloaded from the shared cache in this build.
	remote bool
	// merged: a file-only last stage applied in the generalisation's
	// helper run (not cached on its own).
	merged bool
	// generalise: the generalisation, the last stage (key GeneraliseKey),
	// applying merge's files (nil: none) and finding packages and kernel.
	generalise bool
	merge      *stageRun
	packages   []string
	kernelInfo *KernelInfo
	// kernelVersion and aaFeatures: the image kernel's release and the
	// directory of its recorded AppArmor feature set ("": none), for a
	// generalisation in a chroot.
	kernelVersion string
	aaFeatures    string

	dir     string // work directory of this stage
	disk    string
	seed    string
	sshKey  *communicator.Key
	machine *qemu.Machine
	client  *communicator.Client
	chroot  *chrootSession
	// guest runs the provisioners' commands: the SSH client of the booted
	// VM or the chroot session.
	guest provisioners.Guest
	// files reads the booted guest's files (nil in a chroot).
	files    guestFiles
	bootFrom string
	started  time.Time
	// kernel boots the build VM directly (nil: from the disk).
	kernel *bootFiles
}

// StepTiming is how long a step took (Stage: the stage it ran for).
type StepTiming struct {
	Step    string  `json:"step"`
	Stage   string  `json:"stage,omitempty"`
	Seconds float64 `json:"seconds"`
}

func getBuild(state multistep.StateBag) *buildState { return state.Get("build").(*buildState) }

// halt records err in the state bag and stops the runner.
func halt(state multistep.StateBag, err error) multistep.StepAction {
	state.Put("error", err)
	return multistep.ActionHalt
}

// Build runs a template's build and returns its artifact. Cancelling ctx
// stops QEMU, removes temporary files and leaves nothing at the output
// path.
func Build(ctx context.Context, opts Options) (*Artifact, error) {
	if opts.Log == nil {
		opts.Log = logrus.StandardLogger()
	}
	if opts.Cache == nil {
		opts.Cache = DefaultStageCache()
	}
	if opts.OutputDir == "" {
		opts.OutputDir = "output"
	}
	switch opts.OnError {
	case "":
		opts.OnError = OnErrorCleanup
	case OnErrorCleanup, OnErrorAbort, OnErrorAsk:
	default:
		return nil, fmt.Errorf("on-error %q: want one of %s", opts.OnError, strings.Join(OnErrorModes, ", "))
	}
	switch opts.RemoteMode {
	case "":
		opts.RemoteMode = RemoteReadWrite
	case RemoteRead, RemoteWrite, RemoteReadWrite:
	default:
		return nil, fmt.Errorf("cache remote mode %q: want one of %s", opts.RemoteMode, strings.Join(RemoteModes, ", "))
	}
	b := &buildState{opts: opts, log: opts.Log, cache: opts.Cache}
	b.remote = newRemoteCache(opts.Remote, opts.RemoteMode, b.log)
	state := new(multistep.BasicStateBag)
	state.Put("build", b)
	runner := &multistep.BasicRunner{Steps: timedSteps(buildSteps(), "")}
	start := time.Now()
	b.started = start
	runner.Run(ctx, state)
	if raw, ok := state.GetOk("error"); ok {
		err := raw.(error)
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if b.artifact.ManifestPath == "" {
		return nil, errors.New("build produced no artifact")
	}
	b.log.Infof("build finished in %s: %s", time.Since(start).Round(time.Second), b.artifact.Files[0].Path)
	return &b.artifact, nil
}

// timed wraps a step to log its start, end and duration.
type timed struct {
	name  string
	stage string // the stage it runs for ("": none)
	step  multistep.Step
}

// timedSteps wraps the steps of stage ("": the build's own steps).
func timedSteps(steps []multistep.Step, stage string) []multistep.Step {
	out := make([]multistep.Step, len(steps))
	for i, s := range steps {
		out[i] = &timed{name: stepName(s), stage: stage, step: s}
	}
	return out
}

func (t *timed) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	log, stage := b.log, t.stage
	if stage != "" {
		log = log.WithField("stage", stage)
	}
	log.Debugf("%s: start", t.name)
	start := time.Now()
	action := t.step.Run(ctx, state)
	d := time.Since(start)
	b.timings = append(b.timings, StepTiming{Step: t.name, Stage: stage, Seconds: d.Seconds()})
	if action == multistep.ActionContinue {
		if d >= 100*time.Millisecond {
			log.Infof("%s: done in %.1fs", t.name, d.Seconds())
		}
	} else if _, ok := state.GetOk("error"); ok {
		log.Debugf("%s: failed after %.1fs", t.name, d.Seconds())
	}
	return action
}

func (t *timed) Cleanup(state multistep.StateBag) { t.step.Cleanup(state) }
