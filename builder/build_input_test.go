package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/qemuimg"
	"github.com/ecs-image/ecs-image/qemuimg/qemuimgtest"
	"github.com/ecs-image/ecs-image/testenv"
)

// TestBuildRefusedBaseLeavesNoOutput: a base that is no image (an HTML page
// saved as base.file) or a hostile one (a qcow2 whose data file is a host
// file) is refused before the output directory is created (issue 13).
func TestBuildRefusedBaseLeavesNoOutput(t *testing.T) {
	testenv.Tools(t, "qemu-img")
	t.Setenv("ECS_IMAGE_CACHE", t.TempDir())
	dir := t.TempDir()
	page := filepath.Join(dir, "base.qcow2")
	os.WriteFile(page, []byte("<html><body>404 Not Found</body></html>\n"), 0o644)
	evil, _ := qemuimgtest.DataFileQcow2(t, dir)
	for _, base := range []string{page, evil} {
		tmpl := filepath.Join(dir, "t.yml")
		os.WriteFile(tmpl, []byte("base:\n  file: "+base+"\nstages:\n  - name: one\n    provisioners:\n      - type: shell\n        inline: [\"true\"]\n"), 0o644)
		out := filepath.Join(dir, "out", "sub")
		_, err := Build(context.Background(), Options{Template: tmpl, OutputDir: out, Cache: &StageCache{Dir: filepath.Join(dir, "stages")}})
		var ie *qemuimg.ImageError
		if !errors.As(err, &ie) {
			t.Fatalf("base %s: err = %v, want an ImageError", base, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
			t.Errorf("base %s: output directory created", base)
		}
	}
}

// TestUnknownVariantMessage: --variant zzz names the template's variants,
// or says it has none (issue 13: "(variants: )").
func TestUnknownVariantMessage(t *testing.T) {
	tp, err := template.Parse("t.yml", []byte("base:\n  catalog: debian-12\nstages:\n  - name: one\n    provisioners:\n      - type: shell\n        inline: [\"true\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Plan("zzz"); err == nil || err.Error() != `no variant "zzz" (the template defines no variants)` {
		t.Errorf("err = %v", err)
	}
}
