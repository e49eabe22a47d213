package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/qemu"
)

// stepArtifact waits for the other output formats (started by stepCompact),
// then renames the qcow2 into place and writes the build manifest. On failure or Ctrl-C nothing is left at the output paths.
type stepArtifact struct {
	// Compacted is stepCompact's results; its qcow2 is renamed into place.
	Compacted *compaction
	// OutputDir and BaseName: where and under which name.
	OutputDir, BaseName string
	// Manifest is the build manifest but for the files, the time it is
	// written and the build's duration since Started.
	Manifest *Manifest
	Started  time.Time
	Log      logrus.FieldLogger
	// Out receives the artifact.
	Out *Artifact

	written []string
}

// artifactStep puts the compaction's files into place with the build's
// manifest.
func (b *buildState) artifactStep() *stepArtifact {
	return &stepArtifact{Compacted: &b.compaction, OutputDir: b.opts.OutputDir, BaseName: b.baseName(),
		Manifest: b.manifest(), Started: b.started, Log: b.log, Out: &b.artifact}
}

func (s *stepArtifact) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	name, dir, c := s.BaseName, s.OutputDir, s.Compacted
	var files []ArtifactFile
	qcow := filepath.Join(dir, name+".qcow2")
	if e := c.emit; e != nil {
		select {
		case <-e.done:
		case <-ctx.Done():
			return halt(state, ctx.Err())
		}
		if e.err != nil {
			return halt(state, fmt.Errorf("formats: %w", e.err))
		}
		for _, a := range e.arts {
			s.written = append(s.written, a.Path)
			files = append(files, ArtifactFile{Format: a.Format, Path: filepath.Base(a.Path), Size: a.Size})
		}
	}
	if err := os.Chmod(c.Path, 0o644); err != nil {
		return halt(state, err)
	}
	qf := ArtifactFile{Format: "qcow2", Path: filepath.Base(qcow), Size: c.Size, SHA256: c.SHA256}
	files = append([]ArtifactFile{qf}, files...)
	if err := atomicfile.CheckTarget(qcow); err != nil {
		return halt(state, err)
	}
	if err := os.Rename(c.Path, qcow); err != nil {
		return halt(state, err)
	}
	c.Path = ""
	s.written = append(s.written, qcow)

	m := *s.Manifest
	m.Files, m.Created, m.Seconds = files, timeNow().UTC(), timeNow().Sub(s.Started).Seconds()
	data, err := manifestJSON(&m)
	if err != nil {
		return halt(state, err)
	}
	mpath := filepath.Join(dir, name+".build.json")
	if err := atomicfile.Write(mpath, append(data, '\n'), 0o644, atomicfile.TempPattern(tempName(name+".build.json"))); err != nil {
		return halt(state, err)
	}
	s.written = append(s.written, mpath)
	abs := make([]ArtifactFile, len(files))
	for i, f := range files {
		f.Path = filepath.Join(dir, f.Path)
		abs[i] = f
	}
	*s.Out = Artifact{Files: abs, ManifestPath: mpath, Manifest: &m}
	c.kept = true
	for _, f := range abs {
		s.Log.Infof("artifact %s (%s, %.1f MiB)", f.Path, f.Format, float64(f.Size)/(1<<20))
	}
	return multistep.ActionContinue
}

// Cleanup removes what was written when the build did not finish.
func (s *stepArtifact) Cleanup(state multistep.StateBag) {
	if _, failed := state.GetOk("error"); failed || !s.Compacted.kept {
		for _, p := range s.written {
			os.Remove(p)
		}
	}
}

// manifest is the build's manifest but for the files, the time it is
// written and the build's duration.
func (b *buildState) manifest() *Manifest {
	m := &Manifest{
		Template: b.tmpl.Name, Version: b.tmpl.Version, TemplateFile: absOrSelf(b.tmpl.File), TemplateDigest: "sha256:" + sha256Hex(b.tmpl.Raw),
		Variant: b.plan.Variant, Production: b.plan.Production,
		Base:     ManifestBase{Name: b.base.Name, Path: b.base.Path, Digest: b.base.Digest, Format: b.base.Format, Firmware: b.base.Firmware},
		Packages: b.packages, Accel: string(qemu.Effective(b.accel)), Builder: fmt.Sprintf("ecs-image builder v%d", Version),
		Steps: b.timings,
	}
	if m.Packages == nil {
		m.Packages = []string{}
	}
	for _, sr := range b.stages {
		if sr.generalise {
			m.Generalise = StageRecord{Name: sr.stage.Name, Key: sr.key, Cached: sr.cached, Mode: sr.mode, Remote: sr.remote}
			continue
		}
		m.Stages = append(m.Stages, StageRecord{Name: sr.stage.Name, Key: sr.key, Cached: sr.cached, Mode: sr.mode, Merged: sr.merged, Remote: sr.remote})
	}
	return m
}

func absOrSelf(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
