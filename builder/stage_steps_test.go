package builder

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/formats"
)

// runStep runs one step from its fields and returns the error it halted
// with (nil: it went on).
func runStep(t *testing.T, ctx context.Context, s multistep.Step) (multistep.StateBag, error) {
	t.Helper()
	state := new(multistep.BasicStateBag)
	if s.Run(ctx, state) == multistep.ActionContinue {
		return state, nil
	}
	err, _ := state.Get("error").(error)
	if err == nil {
		t.Fatal("the step halted without an error")
	}
	return state, err
}

// hostGuest is a directory of the build host standing in for a booted
// guest's root: its commands run in the host's /bin/sh with the guest's
// /boot and /proc/cmdline under root (and root taken out of their output
// again), "sudo -n " dropped.
type hostGuest struct{ root string }

func (g hostGuest) command(cmd string) string {
	cmd = strings.ReplaceAll(cmd, "/boot/", g.root+"/boot/")
	cmd = strings.ReplaceAll(cmd, "/proc/cmdline", g.root+"/proc/cmdline")
	return strings.ReplaceAll(cmd, "sudo -n ", "")
}

func (g hostGuest) Output(ctx context.Context, cmd string) (string, error) {
	out, err := exec.CommandContext(ctx, "/bin/sh", "-c", g.command(cmd)).Output()
	return strings.ReplaceAll(string(out), g.root, ""), err
}

func (g hostGuest) Fetch(ctx context.Context, src, dst string) error {
	data, err := os.ReadFile(filepath.Join(g.root, src))
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

func (g hostGuest) Run(ctx context.Context, cmd string, stdin io.Reader, out func(string)) error {
	w := communicator.NewLineWriter(out)
	defer w.Flush()
	c := exec.CommandContext(ctx, "/bin/sh", "-c", g.command(cmd))
	c.Stdin, c.Stdout, c.Stderr = stdin, w, w
	return c.Run()
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStepSeedISO: the seed in the stage's directory holds the build user
// with the stage's fresh key and an instance-id naming the stage's key.
func TestStepSeedISO(t *testing.T) {
	sr := &stageRun{dir: t.TempDir()}
	if _, err := runStep(t, context.Background(), &stepSeedISO{Key: "0123456789abcdef", Stage: sr, Log: logrus.New()}); err != nil {
		t.Fatal(err)
	}
	if sr.sshKey == nil || sr.seed != filepath.Join(sr.dir, "seed.iso") {
		t.Fatalf("stage: key %v, seed %q", sr.sshKey, sr.seed)
	}
	if _, label, err := cidata.Probe(sr.seed); err != nil || label != "cidata" {
		t.Fatalf("seed: label %q, %v", label, err)
	}
	im, err := cidata.Open(sr.seed)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	ud, err := im.ReadFile("user-data")
	if err != nil || !strings.Contains(string(ud), "name: "+BuildUser) || !strings.Contains(string(ud), strings.TrimSpace(sr.sshKey.AuthorizedKey)) {
		t.Errorf("user-data (%v):\n%s", err, ud)
	}
	md, err := im.ReadFile("meta-data")
	if err != nil || !strings.Contains(string(md), "instance-id: ecs-build-0123456789ab-") {
		t.Errorf("meta-data (%v):\n%s", err, md)
	}
	// No work directory: the step fails, it does not write elsewhere.
	if _, err := runStep(t, context.Background(), &stepSeedISO{Key: "k", Stage: &stageRun{dir: filepath.Join(t.TempDir(), "gone")}, Log: logrus.New()}); err == nil {
		t.Error("a seed was written without the stage's directory")
	}
}

// TestStepBootFiles: the guest's newest kernel, its initrd, root= and
// command line are kept in the stage's boot/ directory; the kernel the VM
// booted directly is linked from the host's copy instead of read again.
func TestStepBootFiles(t *testing.T) {
	ctx := context.Background()
	guestRoot := t.TempDir()
	writeFiles(t, guestRoot, map[string]string{
		"boot/vmlinuz-6.1.0-9-cloud-amd64":     "old kernel",
		"boot/initrd.img-6.1.0-9-cloud-amd64":  "old initrd",
		"boot/vmlinuz-6.1.0-10-cloud-amd64":    "new kernel",
		"boot/initrd.img-6.1.0-10-cloud-amd64": "new initrd",
		"proc/cmdline":                         "BOOT_IMAGE=/boot/vmlinuz-6.1.0-10-cloud-amd64 root=PARTUUID=1234 ro console=ttyS0\n",
	})
	run := func(sr *stageRun) *stageRun {
		t.Helper()
		sr.dir, sr.files = t.TempDir(), hostGuest{guestRoot}
		if _, err := runStep(t, ctx, &stepBootFiles{Key: "k1", Stage: sr, Log: logrus.New()}); err != nil {
			t.Fatal(err)
		}
		return sr
	}
	sr := run(&stageRun{})
	bf := bootFiles{Dir: filepath.Join(sr.dir, "boot")}
	if sr.bootFrom != "k1" || !bf.ok() || string(mustReadFile(t, bf.kernel())) != "new kernel" || string(mustReadFile(t, bf.initrd())) != "new initrd" {
		t.Fatalf("boot files of %q in %s", sr.bootFrom, bf.Dir)
	}
	if bf.root() != "PARTUUID=1234" || !strings.Contains(bf.cmdline(), "console=ttyS0") ||
		!strings.HasPrefix(bf.source(), "/boot/vmlinuz-6.1.0-10-cloud-amd64 10 ") || strings.Count(bf.source(), "\n") != 1 {
		t.Errorf("root %q, cmdline %q, source %q", bf.root(), bf.cmdline(), bf.source())
	}

	// Booted directly with that very kernel: the host's copy is kept.
	direct := bootFiles{Dir: t.TempDir()}
	writeFiles(t, direct.Dir, map[string]string{"vmlinuz": "host copy", "initrd.img": "host initrd", "source": bf.source() + "\n"})
	sr = run(&stageRun{kernel: &direct})
	if got := string(mustReadFile(t, filepath.Join(sr.dir, "boot", "vmlinuz"))); got != "host copy" {
		t.Errorf("direct boot: kernel %q, want the host's copy", got)
	}
	// A kernel installed since (another source): read from the guest.
	writeFiles(t, direct.Dir, map[string]string{"source": "/boot/vmlinuz-6.1.0-9-cloud-amd64 10 1\n"})
	sr = run(&stageRun{kernel: &direct})
	if got := string(mustReadFile(t, filepath.Join(sr.dir, "boot", "vmlinuz"))); got != "new kernel" {
		t.Errorf("after a kernel update: kernel %q", got)
	}

	// No kernel in /boot: a warning, no boot files, the stage goes on.
	guestRoot = t.TempDir()
	writeFiles(t, guestRoot, map[string]string{"proc/cmdline": "root=/dev/vda1\n"})
	if sr = run(&stageRun{}); sr.bootFrom != "" {
		t.Errorf("without a kernel: boot files of %q", sr.bootFrom)
	}
}

// TestStepProvision: the stage's provisioners run in order in the stage's
// guest with its variables; the first failure stops the stage naming it.
func TestStepProvision(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	tp, err := template.Parse("t.yml", []byte("disk_size: 8G\nbase: {catalog: build}\nstages: [{name: s, provisioners: [\n"+
		"  {type: shell, inline: ['echo \"one $ECS_IMAGE_TEMPLATE\" >> "+out+"']},\n"+
		"  {type: shell, inline: ['echo two >> "+out+"', 'exit 3']},\n"+
		"  {type: shell, inline: ['echo three >> "+out+"']}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	sr := &stageRun{guest: hostGuest{"/nonexistent"}}
	s := &stepProvision{Provisioners: tp.Stages[0].Provisioners, Vars: map[string]string{"ECS_IMAGE_TEMPLATE": "small"}, Stage: sr, Log: quietLog()}
	_, err = runStep(t, context.Background(), s)
	if err == nil || !strings.Contains(err.Error(), "provisioner 1 (shell)") {
		t.Errorf("error %v, want provisioner 1's", err)
	}
	if got := string(mustReadFile(t, out)); got != "one small\ntwo\n" {
		t.Errorf("ran %q", got)
	}
}

// TestStepCommitStage: the stage's directory becomes its cache entry, with
// what the stage found and the parent's boot files when it recorded none.
func TestStepCommitStage(t *testing.T) {
	ctx := context.Background()
	cache := &StageCache{Dir: t.TempDir()}
	work := t.TempDir()
	backing := filepath.Join(work, "parent.qcow2") // an entry whose backing file is gone is a miss
	writeFiles(t, work, map[string]string{"parent.qcow2": "parent"})
	commit := func(sr *stageRun, replace bool) error {
		t.Helper()
		s := &stepCommitStage{
			Entry:    StageEntry{Key: "k2", Parent: "k1", Name: "s", Template: "t", Mode: template.ModeBoot, Backing: backing, ParentID: "id1"},
			BootFrom: "k0", Replace: replace, Cache: cache, WorkDir: work, Stage: sr,
		}
		_, err := runStep(t, ctx, s)
		return err
	}
	newStage := func(files map[string]string) *stageRun {
		dir, err := os.MkdirTemp(work, "stage-")
		if err != nil {
			t.Fatal(err)
		}
		writeFiles(t, dir, files)
		return &stageRun{dir: dir, started: time.Now().Add(-time.Minute), packages: []string{"bash\t5.2"}}
	}
	sr := newStage(map[string]string{"disk.qcow2": "disk", "seed.iso": "seed", "serial.log": "log"})
	if err := commit(sr, false); err != nil {
		t.Fatal(err)
	}
	e := cache.Lookup("k2")
	if sr.dir != "" || e == nil {
		t.Fatalf("committed: dir %q, entry %+v", sr.dir, e)
	}
	if e.Parent != "k1" || e.Name != "s" || e.Template != "t" || e.Mode != template.ModeBoot || e.Backing != backing || e.ParentID != "id1" ||
		e.BootFrom != "k0" || sr.bootFrom != "k0" || e.ID == "" || e.Seconds < 59 || len(e.Packages) != 1 {
		t.Errorf("entry %+v", e)
	}
	for _, f := range []string{"seed.iso", "serial.log"} {
		if _, err := os.Stat(filepath.Join(cache.Path("k2"), f)); !os.IsNotExist(err) {
			t.Errorf("%s committed: %v", f, err)
		}
	}
	// Its own boot files; --no-cache replaces the entry.
	sr = newStage(map[string]string{"disk.qcow2": "disk 2"})
	sr.bootFrom = "k2"
	if err := commit(sr, true); err != nil {
		t.Fatal(err)
	}
	if e2 := cache.Lookup("k2"); e2 == nil || e2.BootFrom != "k2" || e2.ID == e.ID || string(mustReadFile(t, cache.Disk("k2"))) != "disk 2" {
		t.Errorf("replaced entry %+v", e2)
	}
}

// TestStepArtifact: the compacted qcow2 is renamed into place beside the
// other formats, with the build manifest listing them; a failure of the
// other formats leaves nothing at the output paths.
func TestStepArtifact(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	compacted := func() *compaction {
		f, err := os.CreateTemp(dir, tempName("t.qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("qcow2 bytes")
		f.Close()
		return &compaction{Path: f.Name(), SHA256: "ab12", Size: 11}
	}
	emitted := func(err error, arts ...formats.Artifact) *emission {
		e := &emission{cancel: func() {}, done: make(chan struct{}), arts: arts, err: err}
		close(e.done)
		return e
	}
	ova := filepath.Join(dir, "t.ova")
	writeFiles(t, dir, map[string]string{"t.ova": "ova bytes"})
	c := compacted()
	c.emit = emitted(nil, formats.Artifact{Format: "ova", Path: ova, Size: 9})
	var out Artifact
	started := time.Now().Add(-time.Minute)
	s := &stepArtifact{Compacted: c, OutputDir: dir, BaseName: "t", Manifest: &Manifest{Template: "t", Version: "1.2"}, Started: started, Log: quietLog(), Out: &out}
	if _, err := runStep(t, ctx, s); err != nil {
		t.Fatal(err)
	}
	qcow := filepath.Join(dir, "t.qcow2")
	if c.Path != "" || !c.kept || string(mustReadFile(t, qcow)) != "qcow2 bytes" {
		t.Errorf("compaction %+v", c)
	}
	if fi, err := os.Stat(qcow); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("qcow2: %v %v", fi, err)
	}
	if out.ManifestPath != filepath.Join(dir, "t.build.json") || len(out.Files) != 2 || out.Files[0].Path != qcow || out.Files[1].Path != ova {
		t.Fatalf("artifact %+v", out)
	}
	var m Manifest
	if err := json.Unmarshal(mustReadFile(t, out.ManifestPath), &m); err != nil {
		t.Fatal(err)
	}
	if m.Template != "t" || m.Version != "1.2" || m.Seconds < 59 || m.Created.IsZero() || len(m.Files) != 2 ||
		m.Files[0] != (ArtifactFile{Format: "qcow2", Path: "t.qcow2", Size: 11, SHA256: "ab12"}) || m.Files[1].Path != "t.ova" {
		t.Errorf("manifest %+v", m)
	}
	if s.Manifest.Files != nil {
		t.Error("the step changed its input manifest")
	}

	// The other formats failed: nothing at the output paths, the
	// compacted qcow2 left to stepCompact's clean-up.
	dir = t.TempDir()
	writeFiles(t, dir, map[string]string{"t.ova": "ova bytes"})
	c = compacted()
	c.emit = emitted(errors.New("disk full"), formats.Artifact{Format: "ova", Path: filepath.Join(dir, "t.ova")})
	out = Artifact{}
	s = &stepArtifact{Compacted: c, OutputDir: dir, BaseName: "t", Manifest: &Manifest{}, Log: quietLog(), Out: &out}
	state, err := runStep(t, ctx, s)
	if err == nil || !strings.Contains(err.Error(), "formats: disk full") || out.ManifestPath != "" {
		t.Errorf("error %v, artifact %+v", err, out)
	}
	s.Cleanup(state)
	for _, f := range []string{"t.qcow2", "t.build.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s written: %v", f, err)
		}
	}
}
