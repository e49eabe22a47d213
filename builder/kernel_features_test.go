package builder

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/builder/template"
)

// TestKernelFeaturesCache: a feature set as the helper reports it is
// parsed, kept under the kernel's digest and found again as the same tree;
// a kernel without AppArmor is kept as none; paths leaving the tree are
// refused.
func TestKernelFeaturesCache(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "domain"), 0o755)
	os.MkdirAll(filepath.Join(src, "policy", "unix"), 0o755) // an empty directory counts
	os.WriteFile(filepath.Join(src, "domain", "stack"), []byte("yes\n"), 0o644)
	os.WriteFile(filepath.Join(src, "domain", "version"), []byte("1.2\n"), 0o644)

	var report bytes.Buffer
	reportTree(t, &report, src)
	r := &offlineRun{SerialLog: filepath.Join(t.TempDir(), "serial.log"), Log: logrus.New()}
	os.WriteFile(r.SerialLog, []byte("ECS-OFFLINE-START\n"+report.String()+"ECS-OFFLINE-OK\n"), 0o644)
	if err := r.parse(nil); err != nil || r.AppArmorErr != nil {
		t.Fatal(err, r.AppArmorErr)
	}

	k := kernelFeatures{Dir: filepath.Join(t.TempDir(), "kernel-features")}
	if _, _, found := k.lookup("abc"); found {
		t.Fatal("found in an empty cache")
	}
	if err := k.store("abc", &r.AppArmor); err != nil {
		t.Fatal(err)
	}
	dir, none, found := k.lookup("abc")
	if !found || none != "" || dir == "" {
		t.Fatalf("lookup: %q %q %v", dir, none, found)
	}
	if got, want := treeOf(t, dir), treeOf(t, src); !reflect.DeepEqual(got, want) {
		t.Errorf("kept tree %v, want %v", got, want)
	}
	// Into the chroot's /run: the same tree again.
	dst := filepath.Join(t.TempDir(), "run", "features")
	if err := copyFeatures(dir, dst); err != nil {
		t.Fatal(err)
	}
	if got, want := treeOf(t, dst), treeOf(t, src); !reflect.DeepEqual(got, want) {
		t.Errorf("copied tree %v, want %v", got, want)
	}
	// Stored again (another build recorded it meanwhile): kept, no error.
	if err := k.store("abc", &r.AppArmor); err != nil {
		t.Errorf("second store: %v", err)
	}

	if err := k.store("def", &aaFeatureSet{None: "the kernel exports no AppArmor features"}); err != nil {
		t.Fatal(err)
	}
	if dir, none, found := k.lookup("def"); !found || dir != "" || !strings.Contains(none, "no AppArmor") {
		t.Errorf("none: %q %q %v", dir, none, found)
	}
	if err := k.store("ghi", &aaFeatureSet{}); err == nil {
		t.Error("an empty report was kept")
	}
	if ents, _ := os.ReadDir(k.Dir); len(ents) != 2 {
		t.Errorf("cache holds %d entries, want 2 (no temporary left)", len(ents))
	}

	for _, bad := range []string{"d ../x", "d /etc", "f a/../../b eWVz", "f ./a eWVz", "d ", "f a !!", "x a"} {
		var s aaFeatureSet
		if err := s.addLine(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func reportTree(t *testing.T, w *bytes.Buffer, dir string) {
	t.Helper()
	err := offlinehelper.WalkAppArmorFeatures(dir, func(rel string, data []byte, isDir bool) {
		if isDir {
			w.WriteString(offlinehelper.MarkerAAFeature + "d " + rel + "\n")
		} else {
			w.WriteString(offlinehelper.MarkerAAFeature + "f " + rel + " " + base64.StdEncoding.EncodeToString(data) + "\n")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// treeOf lists a tree: directories with a trailing slash, files with content.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := offlinehelper.WalkAppArmorFeatures(dir, func(rel string, data []byte, isDir bool) {
		if isDir {
			m[rel+"/"] = ""
		} else {
			m[rel] = string(data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestKernelVersion reads the release from a bzImage's setup header (a
// made-up one, and a real kernel of the stage cache when there is one).
func TestKernelVersion(t *testing.T) {
	img := make([]byte, 0x400)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
	binary.LittleEndian.PutUint16(img[0x20e:], 0x100)
	copy(img[0x300:], "6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC\x00")
	p := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(p, img, 0o644)
	if v, err := kernelVersion(p); err != nil || v != "6.1.0-28-cloud-amd64" {
		t.Errorf("kernelVersion: %q %v", v, err)
	}
	copy(img[0x202:], "XXXX")
	os.WriteFile(p, img, 0o644)
	if _, err := kernelVersion(p); err == nil {
		t.Error("no setup header: no error")
	}
	os.WriteFile(p, []byte("short"), 0o644)
	if _, err := kernelVersion(p); err == nil {
		t.Error("short file: no error")
	}
	// A real Debian kernel, when a stage cache here holds one.
	real, _ := filepath.Glob(filepath.Join(DefaultStageCache().Dir, "*", "boot", "vmlinuz"))
	if len(real) > 0 {
		src, _ := os.ReadFile(filepath.Join(filepath.Dir(real[0]), "source"))
		v, err := kernelVersion(real[0])
		if err != nil || !strings.Contains(string(src), "vmlinuz-"+v+" ") {
			t.Errorf("%s: %q %v, recorded from %q", real[0], v, err, src)
		}
	}
}

// TestGeneraliseScriptOnHost: in a chroot on the build host the script
// kills no process (the host's /proc), compiles the AppArmor cache for the
// recorded feature set and never mounts the host's securityfs; without a
// recorded set it compiles none.
func TestGeneraliseScriptOnHost(t *testing.T) {
	helper := generaliseScript(template.Generalise{})
	if !strings.Contains(helper, "pkill -KILL -u") || !strings.Contains(helper, "mount -t securityfs") {
		t.Errorf("the helper's script lost its pkill or securityfs mount:\n%s", helper)
	}
	host := generaliseScriptOn(template.Generalise{}, &hostGeneralise{Features: "/run/f eat"})
	for _, bad := range []string{"pkill", "securityfs", "/sys/kernel/security"} {
		if strings.Contains(host, bad) {
			t.Errorf("the host's script has %q:\n%s", bad, host)
		}
	}
	if !strings.Contains(host, "--kernel-features '/run/f eat' --skip-kernel-load --write-cache") {
		t.Errorf("the host's script does not compile for the recorded features:\n%s", host)
	}
	none := generaliseScriptOn(template.Generalise{}, &hostGeneralise{})
	if strings.Contains(none, "--write-cache") || strings.Contains(none, "securityfs") {
		t.Errorf("without features, the host's script compiles a cache:\n%s", none)
	}
	// The rest is the helper's.
	for _, same := range []string{"userdel --remove --force", ": > /etc/machine-id", "rm -f /etc/ssh/ssh_host_*", "ldconfig", "truncate -s 0"} {
		if !strings.Contains(host, same) {
			t.Errorf("the host's script lacks %q", same)
		}
	}
}
