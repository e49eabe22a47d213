package builder

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/provisioners"
	"github.com/ecs-image/ecs-image/qemu"
)

// TestMain lets the test binary serve as the offline helper, like
// ecs-image does, when the helper VM starts it as /ecs-offline-helper.
func TestMain(m *testing.M) {
	if offlinehelper.IsHelper(os.Args) {
		os.Exit(offlinehelper.Main())
	}
	os.Exit(m.Run())
}

// TestOfflineHelperVM boots the offline helper on an overlay of a cached
// booted stage (ECS_IMAGE_TEST_STAGE=<stage cache dir>; the test binary
// must be static: CGO_ENABLED=0), places a file and generalises.
func TestOfflineHelperVM(t *testing.T) {
	stage := os.Getenv("ECS_IMAGE_TEST_STAGE")
	if stage == "" {
		t.Skip("set ECS_IMAGE_TEST_STAGE to a booted stage's cache directory")
	}
	if err := helperUsable(); err != nil {
		t.Fatalf("ECS_IMAGE_TEST_STAGE is set but the offline helper cannot run: %v", err)
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	ctx := context.Background()
	if err := qemu.Overlay(ctx, filepath.Join(stage, "disk.qcow2"), "qcow2", disk, 0); err != nil {
		t.Fatal(err)
	}
	content := "offline\n"
	r := &offlineRun{Disk: disk, Boot: bootFiles{Dir: filepath.Join(stage, "boot")}, WorkDir: dir,
		Accel: qemu.AccelTCG, Timeout: 10 * time.Minute, Log: logrus.StandardLogger(),
		Placers: []provisioners.Placer{&provisioners.File{Content: &content, Destination: "/etc/ecs-offline-test"}},
		Job:     offlinehelper.Job{Generalise: true, GeneraliseScript: generaliseScript(template.Generalise{}), Packages: true, Trim: true}}
	if errs := r.Placers[0].Check(""); len(errs) > 0 {
		t.Fatal(errs)
	}
	start := time.Now()
	err := r.run(ctx)
	t.Logf("helper took %s; %d packages", time.Since(start), len(r.Packages))
	if err != nil {
		data, _ := os.ReadFile(r.SerialLog)
		t.Fatalf("%v\n%s", err, data)
	}
	if len(r.Packages) < 50 {
		data, _ := os.ReadFile(r.SerialLog)
		t.Errorf("package list: %v\n%s", r.Packages, data)
	}
}
