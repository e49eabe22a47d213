package prepare

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
)

// Branches run at the same time: each of these two waits for the other.
func TestChainBranchesRunConcurrently(t *testing.T) {
	a, _ := testAgent(t)
	activate(t, a, siteEnv)
	aStarted, bStarted := make(chan struct{}), make(chan struct{})
	wait := func(mine, other chan struct{}) func(context.Context, *Env) error {
		return func(context.Context, *Env) error {
			close(mine)
			select {
			case <-other:
				return nil
			case <-time.After(10 * time.Second):
				return errors.New("the other branch never started: branches ran one after the other")
			}
		}
	}
	var after atomic.Bool
	err := a.runChain(context.Background(), "chain", []Step{
		{Name: "both", Branches: [][]Step{
			{{Name: "a", Run: wait(aStarted, bStarted)}},
			{{Name: "b", Run: wait(bStarted, aStarted)}},
		}},
		{Name: "after", Run: func(context.Context, *Env) error { after.Store(true); return nil }},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !after.Load() {
		t.Error("the step after the branches did not run")
	}
}

// A failing branch stops at its failing step and fails the chain under that
// step's name; the other branches run to their end; later steps do not run.
func TestChainBranchFailureNamesTheStep(t *testing.T) {
	a, _ := testAgent(t)
	activate(t, a, siteEnv)
	var ran []string
	var mu sync.Mutex
	mark := func(name string, err error) func(context.Context, *Env) error {
		return func(context.Context, *Env) error {
			mu.Lock()
			defer mu.Unlock()
			ran = append(ran, name)
			return err
		}
	}
	err := a.runChain(context.Background(), "chain", []Step{
		{Name: "group", Branches: [][]Step{
			{{Name: "db", Run: mark("db", errors.New("no socket"))}, {Name: "db2", Run: mark("db2", nil)}},
			{{Name: "mail", Run: mark("mail", nil)}, {Name: "stunnel", Run: mark("stunnel", nil)}},
		}},
		{Name: "later", Run: mark("later", nil)},
	})
	if err == nil || err.Error() != "no socket" {
		t.Fatalf("err = %v, want the step's own error", err)
	}
	slices.Sort(ran)
	if strings.Join(ran, " ") != "db mail stunnel" {
		t.Errorf("ran %v, want db, mail and stunnel only", ran)
	}
	reason, ok := status.FailedReason(a.Host)
	if !ok || reason != "chain/db: no socket" {
		t.Errorf("failed flag %q %v, want the failing step's name and error", reason, ok)
	}
}

// prepare-appliance loads the images while the services start, enables
// stunnel without a daemon-reload, starts postfix through its quick-start
// file, and prepare-ecs then finds the images loaded. A preload that fails is left to prepare-ecs, which reports it.
func TestPrepareAppliancePreloadsImages(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, "#cloud-config\nappliance:\n  domain: pre.example.org\n")
	put(t, a, "/app/images/web.tar", dockerArchive(t, "ecs/web:latest", "8080/tcp"), 0o644)
	put(t, a, ImagesIndex, []byte(`[{"file":"web.tar","tags":["ecs/web:latest"]}]`), 0o644)
	if err := os.MkdirAll(a.Host.Path(PostfixQueueDir), 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, a, PostfixFiles, []byte(postfixFilesDebian13), 0o644)
	load := "docker load -i " + a.Host.Path("/app/images/web.tar")
	rec.Responses[load] = host.Response{Stdout: "Loaded image: ecs/web:latest\n"}
	d := startDockerd(t, a)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	cmds := rec.Recorded()
	for _, want := range []string{"systemctl start docker.service", load, "systemctl restart stunnel@ecs.service"} {
		if !slices.Contains(cmds, want) {
			t.Errorf("prepare-appliance: missing %q in\n%s", want, strings.Join(cmds, "\n"))
		}
	}
	if !a.Host.Exists(PostfixQueueDir+"/quick-start") || !slices.Contains(cmds, "systemctl restart postfix.service") {
		t.Error("postfix started without its quick-start file")
	}
	// The directories the skipped check would have created, from
	// postfix-files (Debian 13's lines), with its owners and modes.
	for _, d := range []struct {
		name string
		mode os.FileMode
	}{{"active", 0o700}, {"hold", 0o700}, {"trace", 0o700}, {"private", 0o700}, {"maildrop", 0o730}, {"public", 0o710}, {"pid", 0o755}} {
		if st, err := os.Stat(a.Host.Path(PostfixQueueDir + "/" + d.name)); err != nil || !st.IsDir() || st.Mode().Perm() != d.mode {
			t.Errorf("queue directory %s: %v %v, want mode %v", d.name, st, err, d.mode)
		}
	}
	q := func(names ...string) string {
		var p []string
		for _, n := range names {
			p = append(p, a.Host.Path(n))
		}
		return strings.Join(p, " ")
	}
	for _, want := range []string{
		"chown postfix " + q("/var/lib/postfix", PostfixQueueDir+"/active", PostfixQueueDir+"/hold", PostfixQueueDir+"/private", PostfixQueueDir+"/trace"),
		"chown postfix:postdrop " + q(PostfixQueueDir+"/maildrop", PostfixQueueDir+"/public"),
	} {
		if !slices.Contains(cmds, want) {
			t.Errorf("missing %q in\n%s", want, strings.Join(cmds, "\n"))
		}
	}
	if slices.ContainsFunc(cmds, func(c string) bool { return strings.Contains(c, "/pid") }) {
		t.Errorf("pid (root's) chowned:\n%s", strings.Join(cmds, "\n"))
	}
	for _, c := range cmds {
		if strings.HasPrefix(c, "postconf -n") || c == "postconf -M" {
			t.Errorf("prepare-appliance ran %q (reads main.cf and master.cf instead)", c)
		}
		if strings.Contains(c, "daemon-reload") || strings.HasPrefix(c, "systemctl enable") {
			t.Errorf("prepare-appliance ran %q", c)
		}
	}
	if l, err := os.Readlink(a.Host.Path(StunnelWantsLink)); err != nil || !strings.HasSuffix(l, "lib/systemd/system/stunnel@.service") {
		t.Errorf("%s -> %q, %v", StunnelWantsLink, l, err)
	}
	d.log()
	if err := a.PrepareECS(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := countPrefix(d.log(), "docker load"); n != 0 {
		t.Errorf("prepare-ecs loaded %d images again", n)
	}

	// A load that fails in prepare-appliance does not fail it.
	b, rec2 := testAgent(t)
	fakeSystem(t, b)
	activate(t, b, "#cloud-config\nappliance:\n  domain: pre.example.org\n")
	put(t, b, "/app/images/web.tar", dockerArchive(t, "ecs/web:latest", "8080/tcp"), 0o644)
	put(t, b, ImagesIndex, []byte(`[{"file":"web.tar","tags":["ecs/web:latest"]}]`), 0o644)
	rec2.Responses["docker load -i "+b.Host.Path("/app/images/web.tar")] = host.Response{Err: errors.New("no space left on device")}
	startDockerd(t, b)
	if err := b.PrepareAppliance(context.Background()); err != nil {
		t.Fatalf("prepare-appliance failed on the preload: %v", err)
	}
	if err := b.PrepareECS(context.Background()); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Errorf("prepare-ecs: %v, want the load error", err)
	}
	if r, _ := status.FailedReason(b.Host); !strings.HasPrefix(r, "prepare-ecs/images: ") {
		t.Errorf("failed flag %q, want prepare-ecs/images", r)
	}
}

// postfixFilesDebian13 is an excerpt of Debian 13's /etc/postfix/postfix-files.
const postfixFilesDebian13 = `# comment
$config_directory:d:root:-:755:u
$data_directory:d:$mail_owner:-:700:uc
$daemon_directory:d:root:-:755:u
$queue_directory:d:root:-:755:uc
$queue_directory/active:d:$mail_owner:-:700:ucr
$queue_directory/hold:d:$mail_owner:-:700:ucr
$queue_directory/private:d:$mail_owner:-:700:uc
$queue_directory/maildrop:d:$mail_owner:$setgid_group:730:uc
$queue_directory/public:d:$mail_owner:$setgid_group:710:uc
$queue_directory/pid:d:root:-:755:uc
$queue_directory/trace:d:$mail_owner:-:700:ucr
$daemon_directory/master:f:root:-:755
$config_directory/main.cf:f:root:-:644:p
`
