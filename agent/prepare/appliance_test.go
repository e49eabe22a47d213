package prepare

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
)

// activate runs prepare-env on envText and fails the test on error.
func activate(t *testing.T, a *Agent, envText string) {
	t.Helper()
	put(t, a, "/app/env.yml", []byte(envText), 0o600)
	if err := a.PrepareEnv(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func fakeSystem(t *testing.T, a *Agent) {
	t.Helper()
	put(t, a, "/etc/postgresql/15/main/pg_hba.conf", []byte("local all postgres peer\n"), 0o640)
	if err := os.MkdirAll(a.Host.Path("/etc/postgresql/15/main/conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, a, "/etc/nginx/sites-enabled/default", []byte("server {}\n"), 0o644)
	put(t, a, "/etc/hosts", []byte("127.0.0.1 localhost\n"), 0o644)
}

const siteEnv = `#cloud-config
appliance:
  domain: ecs.example.org
  allowed_hosts: ecs.example.org www.example.org
  extra:
    files:
      - path: /etc/ecs-extra/secret.conf
        contents: |
          token = abc
        owner: www-data:www-data
        permissions: "0640"
    packages:
      - qrencode
ecs:
  settings: |
    DOMAIN = 'ecs.example.org'
`

func TestPrepareApplianceRendersAndIsIdempotent(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, siteEnv)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Files with their modes.
	for p, want := range map[string]os.FileMode{
		ServerKey:                    0o600,
		ServerCert:                   0o644,
		DatabaseEnv:                  0o600,
		NginxSite:                    0o644,
		"/etc/hostname":              0o644,
		StunnelConf:                  0o644,
		"/etc/ecs-extra/secret.conf": 0o640,
		"/etc/postgresql/15/main/conf.d/ecs-agent.conf": 0o644,
	} {
		if m := mode(t, a, p); m != want {
			t.Errorf("%s: mode %o, want %o", p, m, want)
		}
	}
	if got := read(t, a, "/etc/hostname"); got != "ecs.example.org\n" {
		t.Errorf("hostname %q", got)
	}
	if hosts := read(t, a, "/etc/hosts"); !strings.HasPrefix(hosts, "127.0.0.1 localhost\n") || !strings.Contains(hosts, "127.0.1.1\tecs.example.org ecs\n") {
		t.Errorf("hosts:\n%s", hosts)
	}
	site := read(t, a, NginxSite)
	for _, want := range []string{"server_name ecs.example.org www.example.org;", "if (-f /var/www/html/503.html)", "proxy_pass http://127.0.0.1:18000;", "ssl_certificate /app/etc/server.cert.pem;"} {
		if !strings.Contains(site, want) {
			t.Errorf("nginx site lacks %q", want)
		}
	}
	if l, err := os.Readlink(a.Host.Path(NginxEnabled)); err != nil || l != "../sites-available/ecs-appliance" {
		t.Errorf("sites-enabled link: %q %v", l, err)
	}
	if a.Host.Exists("/etc/nginx/sites-enabled/default") {
		t.Error("default site still enabled")
	}
	// /app/etc is a link into /data, so the certificate lives in /data/etc.
	if l, _ := os.Readlink(a.Host.Path("/app/etc")); l != "../data/etc" {
		t.Errorf("/app/etc -> %q", l)
	}
	if !a.Host.Exists("/data/etc/server.cert.pem") || !a.Host.Exists("/app/etc/flags") {
		t.Error("runtime layout incomplete")
	}
	// The self-signed certificate covers the domain and allowed hosts.
	pair, err := tls.X509KeyPair([]byte(read(t, a, ServerCert)), []byte(read(t, a, ServerKey)))
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(pair.Certificate[0])
	for _, n := range []string{"ecs.example.org", "www.example.org"} {
		if err := cert.VerifyHostname(n); err != nil {
			t.Error(err)
		}
	}
	dburl := read(t, a, DatabaseEnv)
	if !strings.HasPrefix(dburl, "DATABASE_URL=postgres://ecs:") || !strings.HasSuffix(dburl, "@host.docker.internal:5432/ecs\n") {
		t.Errorf("database url %q", dburl)
	}
	pw := strings.TrimSuffix(strings.SplitN(strings.SplitN(dburl, "ecs:", 2)[1], "@", 2)[0], "")
	cmds := rec.Recorded()
	for _, c := range cmds {
		if strings.Contains(c, pw) {
			t.Errorf("password on a command line: %s", c)
		}
	}
	for _, want := range []string{
		"hostname ecs.example.org",
		"nginx -t -q",
		"systemctl reload-or-restart nginx.service",
		"chown www-data:www-data /etc/ecs-extra/secret.conf",
		"apt-get install -y -q --no-install-recommends qrencode",
		"systemctl restart postgresql.service",
		"runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres",
		"systemctl restart stunnel@ecs.service",
	} {
		if !slices.Contains(cmds, want) {
			t.Errorf("missing command %q in\n%s", want, strings.Join(cmds, "\n"))
		}
	}
	if hba := read(t, a, "/etc/postgresql/15/main/pg_hba.conf"); strings.Count(hba, "# BEGIN ecs-agent pg_hba") != 1 || !strings.HasPrefix(hba, "local all postgres peer\n") {
		t.Errorf("pg_hba.conf:\n%s", hba)
	}
	pg := read(t, a, "/etc/postgresql/15/main/conf.d/ecs-agent.conf")
	if !strings.Contains(pg, "shared_buffers = 1024MB") || !strings.Contains(pg, "max_parallel_workers = 2") {
		t.Errorf("postgres tuning for 4 GiB/2 cores:\n%s", pg)
	}

	// Second run: same files, no restarts, same password.
	snapshot := map[string]string{}
	for _, p := range []string{ServerCert, ServerKey, DatabaseEnv, NginxSite, "/etc/hosts", "/etc/postgresql/15/main/pg_hba.conf"} {
		snapshot[p] = read(t, a, p)
	}
	rec.Commands = nil
	rec.Responses["dpkg-query -W '-f=${Status}' qrencode"] = host.Response{Stdout: "install ok installed"}
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	for p, before := range snapshot {
		if read(t, a, p) != before {
			t.Errorf("%s changed on the second run", p)
		}
	}
	for _, c := range rec.Recorded() {
		if strings.Contains(c, "restart ") && !strings.Contains(c, "postfix") || strings.HasPrefix(c, "hostname ") || strings.HasPrefix(c, "apt-get") || strings.HasPrefix(c, "chown") {
			t.Errorf("second run: unexpected %q", c)
		}
	}
}

func TestPrepareApplianceBlockedByFailedFlag(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, siteEnv)
	put(t, a, status.FailedFlag, []byte("earlier failure\n"), 0o644)
	err := a.PrepareAppliance(context.Background())
	if !errors.Is(err, ErrBlocked) || !strings.Contains(err.Error(), "earlier failure") {
		t.Fatalf("err = %v", err)
	}
	if err := a.PrepareECS(context.Background()); !errors.Is(err, ErrBlocked) {
		t.Fatalf("prepare-ecs: %v", err)
	}
	if err := a.Appliance(context.Background(), RunOptions{}); !errors.Is(err, ErrBlocked) {
		t.Fatalf("appliance: %v", err)
	}
	if n := len(rec.Recorded()); n != 0 {
		t.Errorf("%d commands ran while blocked", n)
	}
	if a.Host.Exists(ServerCert) {
		t.Error("files written while blocked")
	}
	// The OnFailure handler keeps the first reason.
	if err := a.Failed("appliance.service"); err != nil {
		t.Fatal(err)
	}
	if r, _ := status.FailedReason(a.Host); r != "earlier failure" {
		t.Errorf("reason overwritten: %q", r)
	}
}

func TestFailedStepRecordsReason(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, siteEnv)
	rec.Responses["nginx -t"] = host.Response{Err: errors.New("nginx: [emerg] unknown directive")}
	err := a.PrepareAppliance(context.Background())
	if err == nil {
		t.Fatal("nginx -t failure ignored")
	}
	st, _ := status.Read(a.Host)
	if st.State != status.Failed || st.Step != "prepare-appliance/nginx" || !strings.Contains(st.Reason, "unknown directive") {
		t.Errorf("state %+v", st)
	}
	if !strings.Contains(read(t, a, status.StatusPage), "unknown directive") {
		t.Error("status page lacks the reason")
	}
}

func TestEnvProvidedTLSAndDKIM(t *testing.T) {
	a, _ := testAgent(t)
	fakeSystem(t, a)
	certPEM, keyPEM, err := SelfSigned([]string{"given.example.org"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	dkim := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})
	envText := "#cloud-config\nappliance:\n  domain: given.example.org\n  ssl:\n    key: |\n" + indent(string(keyPEM), 6) +
		"    cert: |\n" + indent(string(certPEM), 6) + "  dkim:\n    key: |\n" + indent(string(dkim), 6)
	activate(t, a, envText)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, a, ServerCert); strings.TrimSpace(got) != strings.TrimSpace(string(certPEM)) {
		t.Error("env certificate not installed")
	}
	if m := mode(t, a, DKIMKey); m != 0o600 {
		t.Errorf("dkim key mode %o", m)
	}
	conf := read(t, a, OpenDKIMConf)
	if !strings.Contains(conf, "Domain                  given.example.org") || !strings.Contains(conf, "KeyFile                 /etc/dkimkeys/dkim.key") {
		t.Errorf("opendkim.conf:\n%s", conf)
	}
	if rec := read(t, a, DKIMRecord); !strings.HasPrefix(rec, "default._domainkey.given.example.org. IN TXT \"v=DKIM1; k=rsa; p=MII") {
		t.Errorf("dkim record %q", rec)
	}
}

func TestMismatchedEnvTLSFails(t *testing.T) {
	a, _ := testAgent(t)
	fakeSystem(t, a)
	c1, _, _ := SelfSigned([]string{"a.example.org"}, time.Now())
	_, k2, _ := SelfSigned([]string{"a.example.org"}, time.Now())
	put(t, a, "/app/env.yml", []byte("#cloud-config\nappliance:\n  domain: a.example.org\n  ssl:\n    key: |\n"+indent(string(k2), 6)+"    cert: |\n"+indent(string(c1), 6)), 0o600)
	// The env validator or the tls step refuses the pair.
	err := a.PrepareEnv(context.Background())
	if err == nil {
		err = a.PrepareAppliance(context.Background())
	}
	if err == nil || !strings.Contains(err.Error(), "appliance.ssl") {
		t.Fatalf("err = %v", err)
	}
	if a.Host.Exists(ServerKey) {
		t.Error("mismatched key installed")
	}
}

func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(pad + l + "\n")
	}
	return b.String()
}

func TestExtraFilesRejectsBadPaths(t *testing.T) {
	for _, bad := range []string{"relative/x", "/etc/../x", "/etc//x"} {
		a, _ := testAgent(t)
		fakeSystem(t, a)
		put(t, a, "/app/env.yml", []byte("#cloud-config\nappliance:\n  domain: x.example.org\n  extra:\n    files:\n      - path: "+bad+"\n        contents: x\n"), 0o600)
		// The env validator or the extra-files step refuses the path.
		err := a.PrepareEnv(context.Background())
		if err == nil {
			err = a.PrepareAppliance(context.Background())
		}
		if err == nil || !strings.Contains(err.Error(), "appliance.extra.files[0].path") {
			t.Errorf("%s: err = %v", bad, err)
		}
	}
}

// dockerArchive writes a minimal docker-archive tarball (docker save layout).
func dockerArchive(t *testing.T, tag string, ports ...string) []byte {
	t.Helper()
	exposed := map[string]struct{}{}
	for _, p := range ports {
		exposed[p] = struct{}{}
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"config": map[string]any{"ExposedPorts": exposed, "Cmd": []string{"/server"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{}}})
	man, _ := json.Marshal([]map[string]any{{"Config": "abc123.json", "RepoTags": []string{tag}, "Layers": []string{"layer1/layer.tar"}}})
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(name string, data []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
	}
	add("abc123.json", cfg)
	add("layer1/layer.tar", make([]byte, 10240))
	add("manifest.json", man)
	tw.Close()
	return b.Bytes()
}

func TestPrepareECSLoadsImagesAndRendersCompose(t *testing.T) {
	a, rec := testAgent(t)
	activate(t, a, siteEnv)
	put(t, a, "/app/images/web.tar", dockerArchive(t, "ecs/web:latest", "8080/tcp"), 0o644)
	put(t, a, "/app/images/worker.tar", dockerArchive(t, "ecs/worker:1"), 0o644)
	put(t, a, ImagesIndex, []byte(`[{"file":"web.tar","tags":["ecs/web:latest","ecs/web:baked"]},{"file":"worker.tar","tags":["ecs/worker:1"],"command":["worker","--x"]}]`), 0o644)
	put(t, a, DatabaseEnv, []byte("DATABASE_URL=postgres://ecs:00@h/ecs\n"), 0o600)
	put(t, a, MigrateHook, []byte("#!/bin/sh\n"), 0o755)
	rec.Responses["docker load -i "+a.Host.Path("/app/images/web.tar")] = host.Response{Stdout: "Loaded image: ecs/web:latest\n"}
	rec.Responses["docker load -i "+a.Host.Path("/app/images/worker.tar")] = host.Response{Stdout: "Loaded image ID: sha256:feed\n"}
	d := startDockerd(t, a) // no image yet
	if err := a.PrepareECS(context.Background()); err != nil {
		t.Fatal(err)
	}
	cmds := d.log()
	for _, want := range []string{
		"docker load -i " + a.Host.Path("/app/images/web.tar"),
		"POST /images/ecs/web:latest/tag?repo=ecs/web&tag=baked",
		"POST /images/sha256:feed/tag?repo=ecs/worker&tag=1",
		a.Host.Path(MigrateHook),
	} {
		if !slices.Contains(cmds, want) {
			t.Errorf("missing %q in\n%s", want, strings.Join(cmds, "\n"))
		}
	}
	if n := countPrefix(cmds, "docker ") - countPrefix(cmds, "docker load "); n != 0 {
		t.Errorf("%d docker commands besides the loads:\n%s", n, strings.Join(cmds, "\n"))
	}
	compose := read(t, a, ComposeFile)
	for _, want := range []string{
		"  web:\n    image: \"ecs/web:latest\"",
		"      - \"127.0.0.1:18000:8080\"",
		"  worker:\n    image: \"ecs/worker:1\"",
		"    command: [\"worker\",\"--x\"]",
		"      - /run/active-env.compose.env\n      - /app/etc/database_url.env",
	} {
		if !strings.Contains(compose, want) {
			t.Errorf("compose lacks %q:\n%s", want, compose)
		}
	}
	// Second run: images already in Docker → no load.
	if err := a.PrepareECS(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.log() {
		if strings.HasPrefix(c, "docker load") {
			t.Errorf("second run loaded again: %s", c)
		}
	}
	// The force flag reloads and is consumed.
	put(t, a, ForceLoadFlag, nil, 0o644)
	if err := a.PrepareECS(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := countPrefix(d.log(), "docker load"); n != 2 || a.Host.Exists(ForceLoadFlag) {
		t.Errorf("force reload: %d loads, flag kept %v", n, a.Host.Exists(ForceLoadFlag))
	}
}

func countPrefix(list []string, p string) int {
	n := 0
	for _, s := range list {
		if strings.HasPrefix(s, p) {
			n++
		}
	}
	return n
}

func TestPrepareECSBadManifest(t *testing.T) {
	a, _ := testAgent(t)
	activate(t, a, siteEnv)
	put(t, a, ImagesIndex, []byte(`[{"file":"../../etc/shadow","tags":["x"]}]`), 0o644)
	err := a.PrepareECS(context.Background())
	if err == nil || !strings.Contains(err.Error(), "must be a relative path") {
		t.Fatalf("err = %v", err)
	}
	if _, ok := status.FailedReason(a.Host); !ok {
		t.Error("no failed flag")
	}
}

// blockingRunner blocks docker-compose until its context ends (like the
// real foreground stack) and records everything else.
type blockingRunner struct {
	host.Recorder
	mu      sync.Mutex
	started bool
}

func (b *blockingRunner) Run(ctx context.Context, c host.Cmd) ([]byte, error) {
	if c.Name == "docker-compose" {
		b.mu.Lock()
		b.started = true
		b.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return b.Recorder.Run(ctx, c)
}

func TestApplianceReadySignal(t *testing.T) {
	a, _ := testAgent(t)
	br := &blockingRunner{}
	a.Host.Runner = br
	activate(t, a, siteEnv)
	put(t, a, "/app/images/web.tar", dockerArchive(t, "ecs/web:latest", "8080/tcp"), 0o644)
	put(t, a, ImagesIndex, []byte(`[{"file":"web.tar","tags":["ecs/web:latest"]}]`), 0o644)
	put(t, a, ComposeFile, []byte("services: {}\n"), 0o644)
	put(t, a, status.StatusPage, []byte("preparing"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	probes := 0
	probe := func(context.Context) bool { probes++; return probes >= 3 }
	errc := make(chan error, 1)
	go func() { errc <- a.Appliance(ctx, RunOptions{Probe: probe, Interval: 10 * time.Millisecond}) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, _ := a.Host.ReadFile("/dev/ttyS0")
		if strings.Contains(string(c), status.ReadyMarker) {
			break
		}
		if time.Now().After(deadline) {
			st, _ := status.Read(a.Host)
			t.Fatalf("not ready: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st, _ := status.Read(a.Host); st.State != status.Ready {
		t.Errorf("state %s", st.State)
	}
	if a.Host.Exists(status.StatusPage) {
		t.Error("status page still served when ready")
	}
	for _, dev := range []string{"/dev/console", "/dev/ttyS0"} {
		if c := read(t, a, dev); !strings.Contains(c, status.ReadyMarker) {
			t.Errorf("%s: %q", dev, c)
		}
	}
	if !a.Host.Exists(TagsDir + "/last_running_appliance") {
		t.Error("no last_running_appliance tag")
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("stop: %v", err)
	}
	st, _ := status.Read(a.Host)
	if st.State != Stopped || !a.Host.Exists(status.StatusPage) {
		t.Errorf("after stop: %+v", st)
	}
}

func TestApplianceComposeExitsBeforeReady(t *testing.T) {
	a, rec := testAgent(t)
	activate(t, a, siteEnv)
	put(t, a, ComposeFile, []byte("services: {}\n"), 0o644)
	rec.Responses["docker-compose"] = host.Response{Err: errors.New("exit status 1")}
	err := a.Appliance(context.Background(), RunOptions{Probe: func(context.Context) bool { return false }, Interval: 10 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "before ready") {
		t.Fatalf("err = %v", err)
	}
}

// With the cluster version's own client binaries installed, the postgresql
// step runs them directly (with the cluster's port), not Debian's Perl
// pg_wrapper; without them, the wrapper.
func TestPostgresClientsSkipPgWrapper(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	put(t, a, "/etc/postgresql/15/main/postgresql.conf", []byte("# port = 1\nport = 5433\t\t# (change requires restart)\n"), 0o644)
	for _, b := range []string{"psql", "pg_isready"} {
		put(t, a, "/usr/lib/postgresql/15/bin/"+b, []byte("#!/bin/sh\n"), 0o755)
	}
	activate(t, a, siteEnv)
	if err := a.stepPostgres(context.Background(), mustEnv(t, a)); err != nil {
		t.Fatal(err)
	}
	cmds := rec.Recorded()
	for _, want := range []string{
		"/usr/lib/postgresql/15/bin/pg_isready -p 5433 -q",
		"runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -p 5433 -X -q -v ON_ERROR_STOP=1 -d postgres",
	} {
		if !slices.Contains(cmds, want) {
			t.Errorf("missing command %q in\n%s", want, strings.Join(cmds, "\n"))
		}
	}

	// No versioned binaries (and no port setting): the wrapper, as before.
	a2, rec2 := testAgent(t)
	fakeSystem(t, a2)
	activate(t, a2, siteEnv)
	if err := a2.stepPostgres(context.Background(), mustEnv(t, a2)); err != nil {
		t.Fatal(err)
	}
	cmds = rec2.Recorded()
	for _, want := range []string{"pg_isready -q", "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres"} {
		if !slices.Contains(cmds, want) {
			t.Errorf("missing command %q in\n%s", want, strings.Join(cmds, "\n"))
		}
	}
}

func mustEnv(t *testing.T, a *Agent) *Env {
	t.Helper()
	e, err := a.loadActive()
	if err != nil {
		t.Fatal(err)
	}
	return e
}
