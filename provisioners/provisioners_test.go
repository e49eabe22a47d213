package provisioners

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
	"github.com/sirupsen/logrus/hooks/test"
)

// localGuest runs guest commands with the local /bin/sh: a real shell
// instead of a VM. Commands starting with "sudo " run without it (the tests
// run as root or do not need it); root is where "/" of the guest is.
type localGuest struct {
	root string
	mu   sync.Mutex
	cmds []string
}

func (g *localGuest) Run(ctx context.Context, command string, stdin io.Reader, out func(string)) error {
	g.mu.Lock()
	g.cmds = append(g.cmds, command)
	g.mu.Unlock()
	command = strings.TrimPrefix(command, "sudo -n ")
	if g.root != "" {
		command = strings.Replace(command, "--directory /", "--directory "+g.root, 1)
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Stdin = stdin
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out(sc.Text())
		}
		close(done)
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	return err
}

func testEnv(g Guest, vars map[string]string) (*Env, *test.Hook) {
	log, hook := test.NewNullLogger()
	return &Env{Guest: g, Log: log, Vars: vars}, hook
}

func logLines(h *test.Hook) []string {
	var out []string
	for _, e := range h.AllEntries() {
		out = append(out, e.Message)
	}
	return out
}

func TestShellStreamsOutputAndEnv(t *testing.T) {
	f := false
	s := &Shell{Inline: []string{"echo one", "echo \"v=$GREETING t=$ECS_IMAGE_TEMPLATE\"", "echo err >&2"}, Env: map[string]string{"GREETING": "it's me"}, Sudo: &f}
	if errs := s.Check(""); len(errs) > 0 {
		t.Fatal(errs)
	}
	env, hook := testEnv(&localGuest{}, map[string]string{"ECS_IMAGE_TEMPLATE": "small"})
	if err := s.Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(logLines(hook), "|")
	if got != "one|v=it's me t=small|err" {
		t.Errorf("output lines: %q", got)
	}
}

func TestShellFailureShowsOutput(t *testing.T) {
	f := false
	s := &Shell{Inline: []string{"echo before", "false", "echo never"}, Sudo: &f}
	env, hook := testEnv(&localGuest{}, nil)
	err := s.Run(context.Background(), env)
	if err == nil {
		t.Fatal("a failing command did not fail the provisioner")
	}
	if !strings.Contains(err.Error(), "before") || strings.Contains(strings.Join(logLines(hook), "|"), "never") {
		t.Errorf("error %q / log %v", err, logLines(hook))
	}
}

func TestShellScriptFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "s.sh"), []byte("#!/bin/sh\necho \"script $1$X\"\nread line || echo stdin-empty\n"), 0o644)
	f := false
	s := &Shell{Script: "s.sh", Env: map[string]string{"X": "ok"}, Sudo: &f}
	if errs := s.Check(dir); len(errs) > 0 {
		t.Fatal(errs)
	}
	if got := s.Inputs(); len(got) != 1 || got[0] != filepath.Join(dir, "s.sh") {
		t.Errorf("inputs %v", got)
	}
	env, hook := testEnv(&localGuest{}, nil)
	if err := s.Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(logLines(hook), "|"); got != "script ok|stdin-empty" {
		t.Errorf("output %q", got)
	}
}

func TestShellSudoCommand(t *testing.T) {
	s := &Shell{Inline: []string{"id"}}
	if c := s.Command(nil); !strings.HasPrefix(c, "sudo -n env ") {
		t.Errorf("default must run as root: %s", c)
	}
}

func TestPackagesScript(t *testing.T) {
	p := &Packages{Packages: []string{"jq", "nginx=1.22.1-9"}}
	if errs := p.Check(""); len(errs) > 0 {
		t.Fatal(errs)
	}
	s := p.Script()
	for _, want := range []string{"DEBIAN_FRONTEND=noninteractive", "--no-install-recommends", "retry apt-get $apt_opts update", "install jq nginx=1.22.1-9", "--force-confold"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	rec := &Packages{Packages: []string{"jq"}, InstallRecommends: true}
	if strings.Contains(rec.Script(), "--no-install-recommends") {
		t.Error("install_recommends ignored")
	}
}

// TestPackagesRetry runs the script's retry helper with a real shell and an
// apt-get stand-in that fails twice.
func TestPackagesRetry(t *testing.T) {
	p := &Packages{Packages: []string{"jq"}}
	script := p.Script()
	i := strings.Index(script, "retry() {")
	j := strings.Index(script[i:], "\n")
	retry := script[i : i+j]
	dir := t.TempDir()
	fake := "n=$(cat " + dir + "/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > " + dir + "/n; echo attempt $n; [ $n -ge 3 ]"
	cmd := exec.Command("/bin/sh", "-c", strings.Replace(retry, "sleep $((n*5))", ":", 1)+"\nretry sh -c '"+fake+"'")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "attempt 3") || !strings.Contains(string(out), "retrying (2/3)") {
		t.Errorf("retry: %v\n%s", err, out)
	}
}

func TestFilePlacerWithTar(t *testing.T) {
	testenv.Root(t, "extracting with owners")
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "tree", "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "tree", "a.txt"), []byte("a"), 0o600)
	os.WriteFile(filepath.Join(src, "tree", "sub", "b.sh"), []byte("b"), 0o755)
	os.Symlink("a.txt", filepath.Join(src, "tree", "link"))
	os.WriteFile(filepath.Join(src, "single"), []byte("single\n"), 0o644)
	content := "inline\n"
	fs := []*File{
		{Source: "single", Destination: "/etc/single", Mode: "0600", Owner: "daemon:daemon"},
		{Source: "tree", Destination: "/opt/tree"},
		{Content: &content, Destination: "/app/etc/inline"},
	}
	root := t.TempDir()
	g := &localGuest{root: root}
	for _, f := range fs {
		if errs := f.Check(src); len(errs) > 0 {
			t.Fatal(errs)
		}
		env, _ := testEnv(g, nil)
		if err := RunPlacer(context.Background(), f, env); err != nil {
			t.Fatal(err)
		}
	}
	check := func(p string, mode os.FileMode, data string) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Error(err)
			return
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %o, want %o", p, fi.Mode().Perm(), mode)
		}
		if data != "" {
			b, _ := os.ReadFile(filepath.Join(root, p))
			if string(b) != data {
				t.Errorf("%s: %q", p, b)
			}
		}
	}
	check("etc/single", 0o600, "single\n")
	check("opt/tree/a.txt", 0o600, "a")
	check("opt/tree/sub/b.sh", 0o755, "b")
	check("app/etc/inline", 0o644, "inline\n")
	if l, _ := os.Readlink(filepath.Join(root, "opt/tree/link")); l != "a.txt" {
		t.Errorf("symlink: %q", l)
	}
	if !strings.Contains(g.cmds[0], "tar --extract --preserve-permissions --same-owner") {
		t.Errorf("command: %s", g.cmds[0])
	}
}

func TestArchiveOwnersAndOrder(t *testing.T) {
	var buf bytes.Buffer
	a := NewArchive(&buf)
	a.Parents("/app/images/x.tar", Owner{"root", "root"})
	a.Bytes("/app/images/x.tar", []byte("x"), 0o4755, Owner{"1000", "app"})
	a.Close()
	tr := tar.NewReader(&buf)
	var got []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, h.Name)
		if h.Name == "app/images/x.tar" && (h.Uid != 1000 || h.Uname != "" || h.Gname != "app" || h.Mode != 0o4755) {
			t.Errorf("header %+v", h)
		}
	}
	if strings.Join(got, ",") != "app/,app/images/,app/images/x.tar" {
		t.Errorf("entries %v", got)
	}
}

func TestAgentEnablesUnits(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ecs-agent"), []byte("\x7fELF"), 0o755)
	os.MkdirAll(filepath.Join(dir, "systemd"), 0o755)
	os.WriteFile(filepath.Join(dir, "systemd", "ecs-agent.service"), []byte("[Unit]\nDescription=x\n[Service]\nExecStart=/usr/local/bin/ecs-agent\n[Install]\nWantedBy=multi-user.target cloud-init.target\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "systemd", "ecs-helper.service"), []byte("[Service]\nExecStart=/bin/true\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "systemd", "fail@.service"), []byte("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "systemd", "getty-x@.service"), []byte("[Install]\nWantedBy=multi-user.target\nDefaultInstance=tty9\n"), 0o644)
	g := &Agent{Binary: "ecs-agent"}
	if errs := g.Check(dir); len(errs) > 0 {
		t.Fatal(errs)
	}
	var buf bytes.Buffer
	a := NewArchive(&buf)
	if err := g.Place(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	a.Close()
	tr := tar.NewReader(&buf)
	var got []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		s := h.Name
		if h.Typeflag == tar.TypeSymlink {
			s += "->" + h.Linkname
		}
		got = append(got, s)
	}
	want := "usr/local/bin/ecs-agent,etc/systemd/system/ecs-agent.service," +
		"etc/systemd/system/multi-user.target.wants/ecs-agent.service->/etc/systemd/system/ecs-agent.service," +
		"etc/systemd/system/cloud-init.target.wants/ecs-agent.service->/etc/systemd/system/ecs-agent.service," +
		"etc/systemd/system/ecs-helper.service,etc/systemd/system/fail@.service,etc/systemd/system/getty-x@.service," +
		"etc/systemd/system/multi-user.target.wants/getty-x@tty9.service->/etc/systemd/system/getty-x@.service"
	if strings.Join(got, ",") != want {
		t.Errorf("entries:\n got %s\nwant %s", strings.Join(got, ","), want)
	}
	if len(g.Inputs()) != 5 {
		t.Errorf("inputs %v", g.Inputs())
	}
}

func TestContainersManifest(t *testing.T) {
	dir := t.TempDir()
	// A minimal docker-archive: manifest.json first.
	var img bytes.Buffer
	tw := tar.NewWriter(&img)
	dm := `[{"Config":"c.json","RepoTags":["redis:7"],"Layers":[]}]`
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(dm))})
	tw.Write([]byte(dm))
	tw.Close()
	os.WriteFile(filepath.Join(dir, "redis.tar"), img.Bytes(), 0o644)
	c := &Containers{Images: []ContainerImage{{Path: "redis.tar"}}}
	if errs := c.Check(dir); len(errs) > 0 {
		t.Fatal(errs)
	}
	if c.Requires().NeedsBoot() {
		t.Error("containers without load must not need a boot")
	}
	var buf bytes.Buffer
	a := NewArchive(&buf)
	if err := c.Place(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	a.Close()
	tr := tar.NewReader(&buf)
	var manifest, index string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Name == "app/images/images.json" {
			b, _ := io.ReadAll(tr)
			manifest = string(b)
		}
		if h.Name == "app/images/manifest.json" {
			b, _ := io.ReadAll(tr)
			index = string(b)
		}
	}
	// The agent's image index: the tags come from the archive's RepoTags.
	var entries []AgentIndexEntry
	if err := json.Unmarshal([]byte(index), &entries); err != nil || len(entries) != 1 ||
		entries[0].File != "redis.tar" || strings.Join(entries[0].Tags, ",") != "redis:7" {
		t.Errorf("agent index: %s (%v)", index, err)
	}
	// An archive that names no image needs tags.
	var untagged bytes.Buffer
	tw = tar.NewWriter(&untagged)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: 2})
	tw.Write([]byte("[]"))
	tw.Close()
	os.WriteFile(filepath.Join(dir, "anon.tar"), untagged.Bytes(), 0o644)
	if errs := (&Containers{Images: []ContainerImage{{Path: "anon.tar"}}}).Check(dir); len(errs) != 1 || errs[0].Field != "images[0].tags" {
		t.Errorf("untagged archive: %v", errs)
	}
	if errs := (&Containers{Images: []ContainerImage{{Path: "anon.tar", Tags: []string{"ecs/anon:1"}}}}).Check(dir); len(errs) != 0 {
		t.Errorf("untagged archive with tags: %v", errs)
	}
	if !strings.Contains(manifest, `"file": "redis.tar"`) || !strings.Contains(manifest, `"format": "docker-archive"`) {
		t.Errorf("manifest: %s", manifest)
	}
	bad := &Containers{Images: []ContainerImage{{Path: "t.yml"}}}
	os.WriteFile(filepath.Join(dir, "t.yml"), []byte("not a tar"), 0o644)
	if errs := bad.Check(dir); len(errs) != 1 || !strings.Contains(errs[0].Msg, "not a tar") {
		t.Errorf("non-tar image accepted: %v", errs)
	}
}

// TestRequires checks each type's declared requirement against what it
// implements: NeedFiles only for a Placer, a higher need only for a
// Runner, and the modes the builder derives from it.
func TestRequires(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range []struct {
		p                     Provisioner
		need                  Need
		boot, chroot, running bool
	}{
		{&File{}, NeedFiles, false, true, false},
		{&Agent{}, NeedFiles, false, true, false},
		{&Stack{}, NeedFiles, false, true, false},
		{&Containers{}, NeedFiles, false, true, false},
		{&Containers{Load: true}, NeedRunning, true, false, true},
		{&Packages{}, NeedChroot, true, true, false},
		{&Shell{}, NeedBoot, true, false, false},
	} {
		r := tc.p.Requires()
		seen[tc.p.Type()] = true
		name := tc.p.Type()
		if r.Need != tc.need || r.NeedsBoot() != tc.boot || r.ChrootSafe() != tc.chroot || (r.NeedsRunningSystem() != "") != tc.running {
			t.Errorf("%s: need %d boot %v chroot-safe %v running %q", name, r.Need, r.NeedsBoot(), r.ChrootSafe(), r.NeedsRunningSystem())
		}
		_, placer := tc.p.(Placer)
		_, runner := tc.p.(Runner)
		if r.Need == NeedFiles && !placer || r.Need > NeedFiles && !runner {
			t.Errorf("%s: placer %v runner %v", name, placer, runner)
		}
	}
	for _, typ := range Types() {
		if !seen[typ] {
			t.Errorf("type %s: not in the table", typ)
		}
	}
}
