package builder

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/qemuimg"
	"github.com/ecs-image/ecs-image/testenv"
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
	testenv.Tool(t, "qemu-img", "make deps")
	ctx := context.Background()
	dir := t.TempDir()
	t.Setenv("ECS_IMAGE_CACHE", filepath.Join(dir, "imgcache"))
	if _, err := qemuimg.Run(ctx, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "1G"); err != nil {
		t.Fatal(err)
	}
	tmplPath := filepath.Join(dir, "t.yml")
	os.WriteFile(tmplPath, []byte(mergedTemplate), 0o644)
	tmpl, err := template.Load(tmplPath)
	if err != nil {
		t.Fatal(err)
	}
	b0, err := ResolveBase(ctx, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := PlanJobs(tmpl, b0.Digest, true)
	if err != nil {
		t.Fatal(err)
	}
	job := jobs[0]
	if job.Stages[1].Mode != ModeOffline {
		t.Fatalf("the file stage is built %s, want offline (helper: %v)", job.Stages[1].Mode, helperUsable())
	}
	c := &StageCache{Dir: filepath.Join(dir, "stages")}
	work, err := c.WorkDir()
	if err != nil {
		t.Fatal(err)
	}
	s1 := job.Stages[0]
	addStage(t, c, work, &StageEntry{Key: s1.Key, Parent: s1.Parent, Name: s1.Name, Template: "mergetest", Mode: ModeBoot, BootFrom: s1.Key}, b0.Path, true)
	// The generalised disk is built on the booted stage: the merged one is
	// never committed on its own.
	addStage(t, c, work, &StageEntry{Key: job.GeneraliseKey, Parent: s1.Key, ParentID: idOf(t, c, s1.Key), Name: GeneraliseStageName, Template: "mergetest",
		Mode: ModeOffline, BootFrom: s1.Key, Packages: []string{"base-files\t12.4"}}, c.Disk(s1.Key), false)

	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	qi, _ := exec.LookPath("qemu-img")
	os.Symlink(qi, filepath.Join(bin, "qemu-img"))
	t.Setenv("PATH", bin)
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	art, err := Build(ctx, Options{Template: tmplPath, OutputDir: filepath.Join(dir, "out"), Cache: c, Log: log, NoChroot: true})
	var msgs []string
	for _, e := range hook.AllEntries() {
		msgs = append(msgs, e.Level.String()+": "+e.Message)
	}
	all := strings.Join(msgs, "\n")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, all)
	}
	if strings.Contains(all, ": building (") || !strings.Contains(all, "stage files: applied with the generalisation") {
		t.Errorf("log:\n%s", all)
	}
	m := art.Manifest
	if len(m.Stages) != 2 || !m.Stages[0].Cached || !m.Stages[1].Cached || !m.Stages[1].Merged || m.Stages[1].Mode != ModeOffline {
		t.Errorf("manifest stages: %+v", m.Stages)
	}
	if g := m.Generalise; g.Name != GeneraliseStageName || g.Key != job.GeneraliseKey || !g.Cached || g.Mode != ModeOffline {
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
	hook.Reset()
	_, err = Build(ctx, Options{Template: tmplPath, OutputDir: filepath.Join(dir, "out2"), Cache: c, Log: log, NoChroot: true})
	msgs = msgs[:0]
	for _, e := range hook.AllEntries() {
		msgs = append(msgs, e.Level.String()+": "+e.Message)
	}
	all = strings.Join(msgs, "\n")
	if err == nil || !strings.Contains(err.Error(), "stage generalise: generalise:") || !strings.Contains(all, "stage generalise: building (offline helper: generalise, key "+job.GeneraliseKey[:12]) {
		t.Errorf("build without the generalised disk: %v\n%s", err, all)
	}
	if c.Lookup(job.GeneraliseKey) != nil {
		t.Error("a failed generalisation was committed")
	}
}
