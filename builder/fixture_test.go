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
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/qemuimg"
	"github.com/ecs-image/ecs-image/testenv"
)

// plannedBuild is a template on an empty qcow2 base (base.qcow2 of size
// baseSize), planned with the keys a real build computes (PlanJobs), for
// tests that fill a stage cache by hand and then build from it.
type plannedBuild struct {
	Dir      string // the test's directory (the template, its base)
	Template string // the template file
	Base     *images.Base
	Job      PlanJob // the default variant's
}

func newPlannedBuild(t *testing.T, text, baseSize string, noChroot bool) *plannedBuild {
	t.Helper()
	testenv.Tool(t, "qemu-img", "make deps")
	ctx := context.Background()
	dir := t.TempDir()
	t.Setenv("ECS_IMAGE_CACHE", filepath.Join(dir, "imgcache"))
	if _, err := qemuimg.Run(ctx, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), baseSize); err != nil {
		t.Fatal(err)
	}
	p := &plannedBuild{Dir: dir, Template: writeFile(t, dir, "t.yml", text)}
	tmpl, err := template.Load(p.Template)
	if err != nil {
		t.Fatal(err)
	}
	if p.Base, err = ResolveBase(ctx, tmpl); err != nil {
		t.Fatal(err)
	}
	jobs, err := PlanJobs(tmpl, p.Base.Digest, noChroot)
	if err != nil {
		t.Fatal(err)
	}
	p.Job = jobs[0]
	return p
}

// buildWithoutQEMU runs Build with p's template and qemu-img, but no QEMU,
// on PATH, so that a stage it would build fails at once instead of
// booting. It returns the artifact, every log line ("level: message")
// and the error.
func (p *plannedBuild) buildWithoutQEMU(t *testing.T, o Options) (*Artifact, string, error) {
	t.Helper()
	bin := filepath.Join(p.Dir, "bin")
	if _, err := os.Stat(bin); err != nil {
		qi, err := exec.LookPath("qemu-img")
		if err != nil {
			t.Fatal(err)
		}
		os.Mkdir(bin, 0o755)
		if err := os.Symlink(qi, filepath.Join(bin, "qemu-img")); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin)
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	o.Template, o.Log = p.Template, log
	art, err := Build(context.Background(), o)
	var msgs []string
	for _, e := range hook.AllEntries() {
		msgs = append(msgs, e.Level.String()+": "+e.Message)
	}
	return art, strings.Join(msgs, "\n"), err
}
