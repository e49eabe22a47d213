//go:build integration

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/builder"
)

// runBuilder is startBuilder and its wait; the test stops when it fails.
func runBuilder(t *testing.T, dir, name, tmpl string, args ...string) *builderRun {
	t.Helper()
	r := startBuilder(t, dir, name, tmpl, args...)()
	if r.Err != nil {
		t.Fatalf("builder %s: %v\n%s", name, r.Err, r.Log)
	}
	return r
}

// all are the manifest's stages and its generalised disk.
func (r *builderRun) all() []builder.StageRecord {
	return append(append([]builder.StageRecord{}, r.Manifest.Stages...), r.Manifest.Generalise)
}

// expectAllRemote checks that nothing was built: every stage and the
// generalised disk came from the shared cache, no stage ran, no VM booted.
func (r *builderRun) expectAllRemote(t *testing.T) {
	t.Helper()
	for _, s := range r.all() {
		if !s.Cached || !s.Remote {
			t.Errorf("builder %s: %s %s not from the shared cache (%+v)", r.Name, s.Name, s.Key[:12], s)
		}
		if !strings.Contains(r.Log, "remote cache: "+s.Key[:12]+" downloaded and verified") {
			t.Errorf("builder %s: no download of %s (%s) in the log", r.Name, s.Name, s.Key[:12])
		}
	}
	for _, bad := range []string{": building (", "packages in the image", "qemu started", "helper"} {
		if strings.Contains(r.Log, bad) {
			t.Errorf("builder %s: %q in the log of a build from the shared cache:\n%s", r.Name, bad, r.Log)
		}
	}
}

// chain is the keys of a build's objects, each with its parent's key (""
// for the first stage, on the base).
func (r *builderRun) chain() [][2]string {
	var out [][2]string
	parent := ""
	for _, s := range r.all() {
		out = append(out, [2]string{s.Key, parent})
		parent = s.Key
	}
	return out
}

// checkImage checks the artifact of r: qemu-img check, e2fsck of its root
// file system (a stage overlay on another disk than its own would show as
// file system damage), and the files of both stages.
func checkImage(t *testing.T, r *builderRun, marker, app string) {
	t.Helper()
	img := filepath.Join(r.Out, "it-shared.qcow2")
	if out, err := exec.Command("qemu-img", "check", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("builder %s: qemu-img check: %v %s", r.Name, err, out)
	}
	raw := filepath.Join(t.TempDir(), "image.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v %s", err, out)
	}
	defer os.Remove(raw)
	loop, err := exec.Command("losetup", "--find", "--show", "--read-only", "--offset", "1048576", raw).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(loop))
	defer exec.Command("losetup", "-d", dev).Run()
	if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		t.Errorf("builder %s: e2fsck of the image's root file system: %v\n%s", r.Name, err, out)
	}
	for file, want := range map[string]string{"/etc/ecs-shared-marker": marker, "/etc/ecs-shared-app": app} {
		out, err := exec.Command("debugfs", "-R", "cat "+file, dev).Output()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("builder %s: %s = %q (%v), want %q", r.Name, file, strings.TrimSpace(string(out)), err, want)
		}
	}
}

// TestSharedStageCache builds a template end to end with builders as
// separate processes, each with its own empty local cache (a CI runner),
// sharing one stage cache on a real versitygw (the first test): A
// builds cold and fills it; B takes every stage and the generalised disk
// from it (no stage built, no VM); C, with the last stage changed, takes
// the first stage from it and builds only the last stage and the
// generalisation, and uploads them. Every artifact passes qemu-img check
// and e2fsck and holds both stages' files. (Races, corrupt objects,
// read-only and unreachable remotes: TestSharedStageCacheBuilders, no VM.)
func TestSharedStageCache(t *testing.T) {
	sc := newSharedCache(t, "shared", sharedTemplate)
	dir, marker, t1, t2, st, remote := sc.Dir, sc.Marker, sc.T1, sc.T2, sc.St, sc.Remote

	// A: cold, fills the remote.
	a := runBuilder(t, dir, "a", t1, remote...)
	for _, s := range a.all() {
		if s.Cached || s.Remote {
			t.Errorf("cold build: %+v cached", s)
		}
	}
	checkRemote(t, st, a.chain())
	checkImage(t, a, marker, "one")

	// B: another empty cache, same template: nothing built.
	b := runBuilder(t, dir, "b", t1, remote...)
	b.expectAllRemote(t)
	checkImage(t, b, marker, "one")

	// C: another empty cache, the last stage changed: system downloaded
	// and verified, app and the generalisation built and uploaded.
	c := runBuilder(t, dir, "c", t2, remote...)
	if s := c.Manifest.Stages[0]; !s.Cached || !s.Remote || s.Key != a.Manifest.Stages[0].Key ||
		!strings.Contains(c.Log, "remote cache: "+s.Key[:12]+" downloaded and verified") {
		t.Errorf("builder c: first stage %+v, want it from the shared cache", s)
	}
	if s := c.Manifest.Stages[1]; s.Cached || !strings.Contains(c.Log, "stage app: building (") {
		t.Errorf("builder c: changed last stage %+v not built", s)
	}
	if c.Manifest.Generalise.Cached {
		t.Errorf("builder c: generalisation cached")
	}
	ids := checkRemote(t, st, a.chain(), c.chain())
	for _, s := range c.all()[1:] {
		if ids[s.Key] != c.localID(t, s.Key) {
			t.Errorf("the remote's %s is not c's upload", s.Name)
		}
	}
	checkImage(t, c, marker, "two")
	t.Logf("cold %s, all from the shared cache %s, last stage changed %s", a.Took.Round(time.Second), b.Took.Round(time.Second), c.Took.Round(time.Second))
}
