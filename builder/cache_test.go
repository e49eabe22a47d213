package builder

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/builder/template"
)

const keyTemplate = `
base:
  file: base.qcow2
stages:
  - name: one
    provisioners:
      - type: packages
        packages: [jq]
  - name: two
    provisioners:
      - type: file
        source: motd
        destination: /etc/motd
  - name: three
    provisioners:
      - type: shell
        inline: ["echo LAST"]
variants:
  dev:
    stages:
      - name: dev-extra
        provisioners:
          - type: shell
            inline: ["echo dev"]
  prod:
    production: true
    stages:
      - name: prod-extra
        provisioners:
          - type: shell
            inline: ["echo prod"]
`

// writeFile writes content to dir/name and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// planKeys loads the template text and returns its stage keys for variant.
func planKeys(t *testing.T, dir, text, variant string) []string {
	t.Helper()
	tp, err := template.Load(writeFile(t, dir, "t.yml", text))
	if err != nil {
		t.Fatal(err)
	}
	p, err := tp.Plan(variant)
	if err != nil {
		t.Fatal(err)
	}
	parent := "base:" + RootKey("sha256:base", tp.DiskSizeBytes())
	var keys []string
	for i := range p.Stages {
		mode := template.ModeBoot
		if !p.Stages[i].NeedsBoot() {
			mode = template.ModeOffline
		}
		k, err := StageKey(parent, &p.Stages[i], p.VarsFor(i), mode)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		parent = k
	}
	return keys
}

func keyDir(t *testing.T) string {
	dir := t.TempDir()
	writeFile(t, dir, "base.qcow2", "x")
	writeFile(t, dir, "motd", "hello\n")
	return dir
}

func TestStageKeysLastStageOnly(t *testing.T) {
	dir := keyDir(t)
	a := planKeys(t, dir, keyTemplate, "")
	b := planKeys(t, dir, strings.Replace(keyTemplate, "echo LAST", "echo CHANGED", 1), "")
	if len(a) != 3 || a[0] != b[0] || a[1] != b[1] {
		t.Errorf("changing the last stage changed earlier keys:\n%v\n%v", a, b)
	}
	if a[2] == b[2] {
		t.Error("changing the last stage kept its key")
	}
	// Comments and formatting do not matter.
	c := planKeys(t, dir, strings.Replace(keyTemplate, "packages: [jq]", "packages:   # tools\n          - jq", 1), "")
	if strings.Join(a, ",") != strings.Join(c, ",") {
		t.Errorf("reformatting changed keys:\n%v\n%v", a, c)
	}
}

func TestStageKeysFileContent(t *testing.T) {
	dir := keyDir(t)
	a := planKeys(t, dir, keyTemplate, "")
	writeFile(t, dir, "motd", "changed\n")
	b := planKeys(t, dir, keyTemplate, "")
	if a[0] != b[0] {
		t.Error("the first stage's key changed with a file of the second")
	}
	if a[1] == b[1] || a[2] == b[2] {
		t.Errorf("changing an uploaded file's content did not change its stage's key and its descendants':\n%v\n%v", a, b)
	}
	// The mode counts too.
	os.Chmod(filepath.Join(dir, "motd"), 0o600)
	c := planKeys(t, dir, keyTemplate, "")
	if c[1] == b[1] {
		t.Error("changing an uploaded file's mode kept the key")
	}
}

func TestStageKeysVariantsShareStages(t *testing.T) {
	dir := keyDir(t)
	dev := planKeys(t, dir, keyTemplate, "dev")
	prod := planKeys(t, dir, keyTemplate, "prod")
	none := planKeys(t, dir, keyTemplate, "")
	if len(dev) != 4 || len(prod) != 4 {
		t.Fatalf("plans: %v %v", dev, prod)
	}
	for i := 0; i < 3; i++ {
		if dev[i] != prod[i] || dev[i] != none[i] {
			t.Errorf("shared stage %d differs between variants: %s %s %s", i, dev[i], prod[i], none[i])
		}
	}
	if dev[3] == prod[3] {
		t.Error("variant stages share a key")
	}
}

func TestStageKeysBaseAndOffline(t *testing.T) {
	dir := keyDir(t)
	tp, err := template.Load(writeFile(t, dir, "t.yml", keyTemplate))
	if err != nil {
		t.Fatal(err)
	}
	s := &tp.Stages[1]
	k1, _ := StageKey("base:"+RootKey("sha256:a", 0), s, nil, template.ModeOffline)
	k2, _ := StageKey("base:"+RootKey("sha256:b", 0), s, nil, template.ModeOffline)
	k3, _ := StageKey("base:"+RootKey("sha256:a", 8<<30), s, nil, template.ModeOffline)
	k4, _ := StageKey("base:"+RootKey("sha256:a", 0), s, nil, template.ModeBoot)
	k5, _ := StageKey("base:"+RootKey("sha256:a", 0), s, nil, template.ModeChroot)
	if k1 == k2 || k1 == k3 || k1 == k4 || k1 == k5 || k4 == k5 {
		t.Errorf("keys must depend on the base digest, disk size and mode: %s %s %s %s %s", k1, k2, k3, k4, k5)
	}
	if GeneraliseKey(k1, template.Generalise{}, template.ModeOffline) == GeneraliseKey(k1, template.Generalise{KeepLogs: true}, template.ModeOffline) {
		t.Error("generalise key ignores its options")
	}
	if GeneraliseKey(k1, template.Generalise{}, template.ModeOffline) == GeneraliseKey(k1, template.Generalise{}, template.ModeChroot) {
		t.Error("generalise key ignores where it runs (helper or chroot)")
	}
}

func TestStageCacheCommitListPrune(t *testing.T) {
	c := &StageCache{Dir: t.TempDir()}
	mk := func(key, parent string, used time.Time) {
		work, err := c.WorkDir()
		if err != nil {
			t.Fatal(err)
		}
		d := filepath.Join(work, key)
		os.MkdirAll(d, 0o755)
		writeFile(t, d, "disk.qcow2", "disk")
		if err := c.Commit(d, &StageEntry{Key: key, Parent: parent, Name: key, Created: used}); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(filepath.Join(c.Path(key), "stage.json"), used, used)
	}
	old := time.Now().Add(-48 * time.Hour)
	mk("aaaa00000000", "base:x", old)
	mk("bbbb00000000", "aaaa00000000", time.Now()) // child of an old entry
	mk("cccc00000000", "base:y", time.Now())
	if e := c.Lookup("cccc00000000"); e == nil || e.Parent != "base:y" {
		t.Fatalf("lookup: %+v", e)
	}
	if c.Lookup("dddd00000000") != nil {
		t.Fatal("lookup of a missing key")
	}
	ents, _ := c.List()
	if len(ents) != 3 {
		t.Fatalf("list: %d entries", len(ents))
	}
	removed, err := c.Prune(time.Now().Add(-24 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 || c.Lookup("bbbb00000000") != nil || c.Lookup("cccc00000000") == nil {
		t.Errorf("prune must remove the old entry and its child only: removed %d", len(removed))
	}
}

func TestCleanStaleWorkDirs(t *testing.T) {
	c := &StageCache{Dir: t.TempDir()}
	dead := filepath.Join(c.Dir, "tmp", "build-dead")
	os.MkdirAll(dead, 0o755)
	// A pid that cannot be running: above the kernel's pid_max.
	writeFile(t, dead, "pid", "99999999\n")
	live, err := c.WorkDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Error("the work directory of a dead build was not removed")
	}
	c.CleanStale()
	if _, err := os.Stat(live); err != nil {
		t.Error("the work directory of this (running) build was removed")
	}
}
