package release

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/qemuimg/qemuimgtest"
)

// TestReleaseRefusesHostileDisks: a release directory holding a disk image
// that names a host file (issue 13's exploits) is refused, naming the file,
// before anything is written; an AMI import refuses it before the upload.
func TestReleaseRefusesHostileDisks(t *testing.T) {
	src := t.TempDir()
	q, _ := qemuimgtest.DataFileQcow2(t, src)
	v, _ := qemuimgtest.FlatExtentVMDK(t, src)
	for _, c := range []struct{ from, name, want string }{
		{q, "ecs-1.0.qcow2", "external data file"},
		{v, "ecs-1.0.vmdk", "VMDK descriptor file"},
		{v, "ecs-1.0.ami.vmdk", "VMDK descriptor file"},
	} {
		dir := t.TempDir()
		data, _ := os.ReadFile(c.from)
		p := filepath.Join(dir, c.name)
		os.WriteFile(p, data, 0o644)
		_, err := Make(context.Background(), dir, Options{})
		if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.name) {
			t.Errorf("release of %s: %v", c.name, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("release of %s wrote files: %v", c.name, ents)
		}
		if strings.HasSuffix(c.name, ".ami.vmdk") {
			_, err := ImportAMI(context.Background(), &fakeEC2{}, nil, p, AMIOptions{Name: "ecs-1.0", BootMode: "uefi"})
			if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("ImportAMI of %s: %v", c.name, err)
			}
		}
	}
}

// TestPublishRefusesHostileDisks: a release directory whose SHA256SUMS was
// written by hand around a disk image that names a host file is refused by
// publish, as by release, before anything is uploaded.
func TestPublishRefusesHostileDisks(t *testing.T) {
	dir := releaseDir(t, 0)
	if _, err := Make(context.Background(), dir, Options{}); err != nil {
		t.Fatal(err)
	}
	q, _ := qemuimgtest.DataFileQcow2(t, t.TempDir())
	data, _ := os.ReadFile(q)
	if err := os.WriteFile(filepath.Join(dir, "ecs-1.0.qcow2"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	sums, err := ReadSums(filepath.Join(dir, SumsFile))
	if err != nil {
		t.Fatal(err)
	}
	for i := range sums {
		if sums[i].Name == "ecs-1.0.qcow2" {
			sums[i].SHA256, _, _ = HashFile(context.Background(), filepath.Join(dir, sums[i].Name))
		}
	}
	os.WriteFile(filepath.Join(dir, SumsFile), FormatSums(sums), 0o644)
	if _, err := Verify(context.Background(), dir); err != nil {
		t.Fatalf("the hand-made release does not verify, so the test proves nothing: %v", err)
	}
	dst := t.TempDir()
	tgt, _ := NewFileTarget(dst)
	_, err = Publish(context.Background(), dir, tgt, PublishOptions{})
	if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), "external data file") || !strings.Contains(err.Error(), "ecs-1.0.qcow2") {
		t.Errorf("publish of a hostile disk: %v", err)
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Errorf("publish uploaded %v", ents)
	}
}
