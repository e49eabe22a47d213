package builder

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/provisioners"
)

// stepKernelFeatures finds the AppArmor feature set of the image's kernel
// (the one recorded for the parent disk) for a generalisation in a chroot:
// from the kernel feature cache, else from one offline helper boot of that
// kernel, which records it there for every later build.
type stepKernelFeatures struct {
	// Stage holds the disk and work directory (for the helper boot) and
	// receives the kernel's release and its feature set's directory.
	Stage *stageRun
	// BootDir is the boot/ directory of the kernel recorded for the disk
	// ("" when none is).
	BootDir  string
	Features kernelFeatures
	helperVM
}

// kernelFeaturesStep is the generalisation's stepKernelFeatures, for the
// kernel recorded for the parent disk.
func (b *buildState) kernelFeaturesStep(sr *stageRun) *stepKernelFeatures {
	return &stepKernelFeatures{Stage: sr, BootDir: b.parentBootDir(), Features: kernelFeaturesOf(b.cache), helperVM: b.helperVMOf()}
}

func (s *stepKernelFeatures) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	boot := bootFiles{Dir: s.BootDir}
	if s.BootDir == "" || !boot.ok() {
		s.Log.Warnf("generalise: %v: the image's kernel is unknown (no AppArmor policy cache, no driver check)", errNoBootFiles)
		return multistep.ActionContinue
	}
	ver, err := kernelVersion(boot.kernel())
	if err != nil {
		s.Log.Warnf("generalise: %v", err)
	}
	sr.kernelVersion = ver
	digest, err := fileDigest(boot.kernel())
	if err != nil {
		return halt(state, fmt.Errorf("generalise: %w", err))
	}
	dir, none, found := s.Features.lookup(digest)
	if !found {
		if dir, none, err = s.record(ctx, sr, boot, digest); err != nil {
			if ctx.Err() != nil {
				return halt(state, ctx.Err())
			}
			// The generalisation goes on without the cache: the image's
			// first boot compiles its profiles, as before.
			s.Log.Warnf("generalise: the AppArmor features of kernel %s: %v", ver, err)
			return multistep.ActionContinue
		}
	}
	if none != "" {
		s.Log.Infof("generalise: kernel %s has no AppArmor (%s)", ver, none)
		return multistep.ActionContinue
	}
	sr.aaFeatures = dir
	return multistep.ActionContinue
}

// record boots the kernel once in the offline helper (on the stage's
// overlay, which it mounts and leaves as it was) to read its feature set,
// and keeps it.
func (s *stepKernelFeatures) record(ctx context.Context, sr *stageRun, boot bootFiles, digest string) (dir, none string, err error) {
	if err := helperUsable(); err != nil {
		return "", "", fmt.Errorf("offline helper unusable: %w", err)
	}
	s.Log.Infof("generalise: recording the AppArmor features of the image's kernel (one offline helper boot, kept under %s)", digest[:12])
	r := &offlineRun{Disk: sr.disk, Boot: boot, WorkDir: sr.dir, Accel: s.Accel, AccelForced: s.AccelForced, Timeout: 10 * time.Minute,
		Log: s.Log.WithField("step", "kernel features"), Job: offlinehelper.Job{AppArmorFeatures: true}}
	if err := r.run(ctx); err != nil {
		return "", "", err
	}
	if r.AppArmorErr != nil {
		return "", "", r.AppArmorErr
	}
	if err := s.Features.store(digest, &r.AppArmor); err != nil {
		return "", "", err
	}
	dir, none, _ = s.Features.lookup(digest)
	return dir, none, nil
}

func (s *stepKernelFeatures) Cleanup(multistep.StateBag) {}

// stepChrootGeneralise is the generalisation in a chroot on the build
// host (the disk mounted by stepChrootMount): a merged file-only last
// stage's files, then what the offline helper does (generaliseScriptOn:
// the same clean-up; the AppArmor cache for the image kernel's recorded
// feature set), the package list, the kernel's drivers and fstrim.
type stepChrootGeneralise struct {
	// Stage holds the chroot session, the merged stage, the kernel's
	// release and features; it receives the package list, the kernel's
	// drivers and the boot files' entry.
	Stage      *stageRun
	Generalise template.Generalise
	// BootFrom is the cache entry whose kernel the image boots.
	BootFrom string
	Log      logrus.FieldLogger
}

// chrootGeneraliseStep is the generalisation's stepChrootGeneralise.
func (b *buildState) chrootGeneraliseStep(sr *stageRun) *stepChrootGeneralise {
	return &stepChrootGeneralise{Stage: sr, Generalise: b.tmpl.Generalise, BootFrom: b.bootFrom, Log: b.log}
}

// chrootFeatures is where the feature set is copied in the chroot (its
// /run is a tmpfs of the mount namespace: nothing stays in the image).
const chrootFeatures = "/run/ecs-image-apparmor-features"

func (s *stepChrootGeneralise) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	log := s.Log.WithField("step", "generalise")
	if sr.merge != nil {
		for i, ps := range sr.merge.stage.Provisioners {
			p, ok := ps.P.(provisioners.Placer)
			if !ok {
				return halt(state, fmt.Errorf("stage %s: provisioner %d (%s) does not only place files", sr.merge.stage.Name, i, ps.Type))
			}
			plog := log.WithField("stage", sr.merge.stage.Name).WithField("provisioner", fmt.Sprintf("%d:%s", i, ps.Type))
			if err := provisioners.RunPlacer(ctx, p, &provisioners.Env{Guest: sr.chroot, Log: plog}); err != nil {
				return halt(state, fmt.Errorf("stage %s: provisioner %d (%s): %w", sr.merge.stage.Name, i, ps.Type, err))
			}
		}
	}
	g := s.Generalise
	host := &hostGeneralise{}
	if sr.aaFeatures != "" {
		if err := copyFeatures(sr.aaFeatures, sr.chroot.hostPath(chrootFeatures)); err != nil {
			return halt(state, fmt.Errorf("generalise: %w", err))
		}
		host.Features = chrootFeatures
	}
	if g.On() {
		start := time.Now()
		script := generaliseScriptOn(g, host)
		err := sr.chroot.Run(ctx, script, nil, func(l string) {
			// The script's progress lines carry the (host's) uptime.
			if rest, ok := strings.CutPrefix(l, offlinehelper.MarkerLog+"["); ok {
				if _, after, ok := strings.Cut(rest, "] "); ok {
					l = after
				}
			}
			log.Info(l)
		})
		if err != nil {
			return halt(state, fmt.Errorf("generalise: %w", err))
		}
		log.Infof("generalised in %.1f s", time.Since(start).Seconds())
	}
	out, err := sr.chroot.Output(ctx, `dpkg-query -W -f '${Package}\t${Version}\n'`)
	if err != nil {
		log.Warnf("dpkg-query: %v", err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			sr.packages = append(sr.packages, l)
		}
	}
	sr.kernelInfo = s.kernelDrivers(sr)
	if g.Trim() {
		if n, err := offlinehelper.Fstrim(sr.chroot.hostPath("/")); err != nil {
			log.Warnf("fstrim: %v", err)
		} else {
			log.Infof("trimmed %d MiB", n>>20)
		}
	}
	sr.bootFrom = s.BootFrom
	log.Infof("%d packages in the image", len(sr.packages))
	return multistep.ActionContinue
}

// kernelDrivers reads which drivers of the formats' hypervisor table the
// image's kernel (recorded version) has, from the image's modules.
func (s *stepChrootGeneralise) kernelDrivers(sr *stageRun) *KernelInfo {
	why := "the image's kernel version is unknown"
	if sr.kernelVersion != "" {
		drivers := formats.AllDrivers()
		for _, dir := range []string{"/lib/modules", "/usr/lib/modules"} {
			k, err := formats.ReadKernelDrivers(sr.chroot.hostPath(filepath.Join(dir, sr.kernelVersion)))
			if err == nil {
				return &KernelInfo{Version: sr.kernelVersion, Asked: drivers, Drivers: k.Present(drivers)}
			}
			why = strings.ReplaceAll(err.Error(), sr.chroot.hostPath("/"), "")
		}
	}
	s.Log.Warnf("generalise: the image kernel's drivers are unknown (%s): the output formats' drivers are not checked", why)
	return nil
}

func (s *stepChrootGeneralise) Cleanup(multistep.StateBag) {}
