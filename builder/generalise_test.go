package builder

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/builder/template"
)

const mergedTemplate = `
name: mergetest
base:
  file: base.qcow2
outputs: [qcow2]
stages:
  - name: system
    mode: boot
    provisioners:
      - type: shell
        inline: ["echo system"]
  - name: files
    provisioners:
      - type: file
        content: "hello\n"
        destination: /etc/motd
`

// TestGeneraliseStageMergedFromCache: a file-only last stage is merged into
// the generalisation, the build's last stage; with the booted stage and the
// generalised disk in the cache, a build runs no stage (no QEMU on PATH),
// records the merged stage as cached and takes the package list from the
// generalised disk's entry.
func TestGeneraliseStageMergedFromCache(t *testing.T) {
	p := newPlannedBuild(t, mergedTemplate, "1G", true)
	b0, job, dir := p.Base, p.Job, p.Dir
	if job.Stages[1].Mode != template.ModeOffline {
		t.Fatalf("the file stage is built %s, want offline (helper: %v)", job.Stages[1].Mode, helperUsable())
	}
	c := &StageCache{Dir: filepath.Join(dir, "stages")}
	work, err := c.WorkDir()
	if err != nil {
		t.Fatal(err)
	}
	s1 := job.Stages[0]
	addStage(t, c, work, &StageEntry{Key: s1.Key, Parent: s1.Parent, Name: s1.Name, Template: "mergetest", Mode: template.ModeBoot, BootFrom: s1.Key}, b0.Path, true)
	// The generalised disk is built on the booted stage: the merged one is
	// never committed on its own.
	addStage(t, c, work, &StageEntry{Key: job.GeneraliseKey, Parent: s1.Key, ParentID: idOf(t, c, s1.Key), Name: GeneraliseStageName, Template: "mergetest",
		Mode: template.ModeOffline, BootFrom: s1.Key, Packages: []string{"base-files\t12.4"}}, c.Disk(s1.Key), false)

	art, all, err := p.buildWithoutQEMU(t, Options{OutputDir: filepath.Join(dir, "out"), Cache: c, NoChroot: true})
	if err != nil {
		t.Fatalf("build: %v\n%s", err, all)
	}
	if strings.Contains(all, ": building (") || !strings.Contains(all, "stage files: applied with the generalisation") {
		t.Errorf("log:\n%s", all)
	}
	m := art.Manifest
	if len(m.Stages) != 2 || !m.Stages[0].Cached || !m.Stages[1].Cached || !m.Stages[1].Merged || m.Stages[1].Mode != template.ModeOffline {
		t.Errorf("manifest stages: %+v", m.Stages)
	}
	if g := m.Generalise; g.Name != GeneraliseStageName || g.Key != job.GeneraliseKey || !g.Cached || g.Mode != template.ModeOffline {
		t.Errorf("manifest generalise: %+v", g)
	}
	if len(m.Packages) != 1 || m.Packages[0] != "base-files\t12.4" {
		t.Errorf("packages: %q", m.Packages)
	}

	// Without the generalised disk, the generalisation is built like a
	// stage (here failing at once: no QEMU), on the booted stage's disk.
	if err := c.Remove(job.GeneraliseKey); err != nil {
		t.Fatal(err)
	}
	_, all, err = p.buildWithoutQEMU(t, Options{OutputDir: filepath.Join(dir, "out2"), Cache: c, NoChroot: true})
	if err == nil || !strings.Contains(err.Error(), "stage generalise: generalise:") || !strings.Contains(all, "stage generalise: building (offline helper: generalise, key "+job.GeneraliseKey[:12]) {
		t.Errorf("build without the generalised disk: %v\n%s", err, all)
	}
	if c.Lookup(job.GeneraliseKey) != nil {
		t.Error("a failed generalisation was committed")
	}
}
