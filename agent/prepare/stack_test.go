package prepare

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/contract"
)

func TestPGDataDir(t *testing.T) {
	a, rec := testAgent(t)
	conf := "# x\ndata_directory = '/var/lib/postgresql/17/main'\t\t# use data in another directory\nport = 5432\n"
	put(t, a, "/etc/postgresql/17/main/postgresql.conf", []byte(conf), 0o644)
	put(t, a, "/var/lib/postgresql/17/main/PG_VERSION", []byte("17\n"), 0o600)
	moved, err := a.pgDataDir(context.Background(), "/etc/postgresql/17/main")
	if err != nil || !moved {
		t.Fatalf("moved %v, %v", moved, err)
	}
	got := read(t, a, "/etc/postgresql/17/main/postgresql.conf")
	if !strings.Contains(got, "\ndata_directory = '/data/postgresql/17/main'") || !strings.Contains(got, "port = 5432\n") || strings.Contains(got, "/var/lib/postgresql") {
		t.Errorf("postgresql.conf:\n%s", got)
	}
	cmds := strings.Join(rec.Commands, "\n")
	if !strings.Contains(cmds, "cp -a --sparse=always "+a.Host.Path("/var/lib/postgresql/17/main")+" "+a.Host.Path("/data/postgresql/17/main.copying")) ||
		!strings.Contains(cmds, "mv -T") {
		t.Errorf("commands:\n%s", cmds)
	}
	// The cluster on /data (e.g. the ecs-data volume of an earlier boot) is used as it is.
	put(t, a, "/data/postgresql/17/main/PG_VERSION", []byte("17\n"), 0o600)
	rec.Commands = nil
	if moved, err := a.pgDataDir(context.Background(), "/etc/postgresql/17/main"); err != nil || moved || len(rec.Commands) != 0 {
		t.Errorf("second run: moved %v, %v, commands %q", moved, err, rec.Commands)
	}
}

func TestDBLocale(t *testing.T) {
	a, _ := testAgent(t)
	if s := a.dbLocaleSQL(); s != "" {
		t.Errorf("without locale.gen: %q", s)
	}
	put(t, a, "/etc/locale.gen", []byte("# de_DE.UTF-8 UTF-8\nen_US.UTF-8 UTF-8\n"), 0o644)
	if s := a.dbLocaleSQL(); s != "" {
		t.Errorf("commented: %q", s)
	}
	put(t, a, "/etc/locale.gen", []byte("en_US.UTF-8 UTF-8\nde_DE.UTF-8 UTF-8\n"), 0o644)
	if s := a.dbLocaleSQL(); s != " LC_COLLATE ''de_DE.UTF-8'' LC_CTYPE ''de_DE.UTF-8''" {
		t.Errorf("generated: %q", s)
	}
}

func TestDeclaredStack(t *testing.T) {
	a, _ := testAgent(t)
	if st, err := a.ReadStack(); st != nil || err != nil {
		t.Fatalf("no stack: %v %v", st, err)
	}
	if a.webPort() != WebPort || a.smtpdPort() != SMTPDPort {
		t.Error("defaults without a stack")
	}
	st := contract.Stack{Project: "ecs", Web: contract.Endpoint{Service: "ecs.web", Port: 5000}, SMTPD: 5025,
		Proxies:  []contract.Proxy{{Path: "/pdf-as-web", Port: 5095}},
		Services: []string{"ecs.web", "redis", "memcached"}}
	data, _ := json.Marshal(st)
	put(t, a, contract.StackFile, data, 0o644)
	compose := "services:\n  ecs.web:\n    image: ecs/ecs\n"
	put(t, a, ComposeFile, []byte(compose), 0o644)
	put(t, a, "/usr/libexec/docker/cli-plugins/docker-compose", []byte("\x7fELF"), 0o755)
	activate(t, a, siteEnv)
	e := mustEnv(t, a)
	if err := a.stepCompose(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if got := read(t, a, ComposeFile); got != compose {
		t.Errorf("the declared compose file was changed:\n%s", got)
	}
	urls := read(t, a, contract.ServiceURLsEnv)
	for _, want := range []string{`REDIS_URL="redis://redis:6379/0"`, `MEMCACHED_URL="memcached://memcached:11211"`, `SMTP_URL="smtp://host.docker.internal:10025"`} {
		if !strings.Contains(urls, want+"\n") {
			t.Errorf("service_urls.env lacks %s:\n%s", want, urls)
		}
	}
	dot := read(t, a, contract.ComposeDotEnv)
	if !strings.Contains(dot, `APPLIANCE_DOMAIN="`+e.Doc.Domain()+`"`) || !strings.Contains(dot, `DOCKER_BRIDGE_IP="172.17.0.1"`) || mode(t, a, contract.ComposeDotEnv) != 0o600 {
		t.Errorf(".env:\n%s", dot)
	}
	if a.webPort() != 5000 || a.smtpdPort() != 5025 || a.composeProject() != "ecs" {
		t.Errorf("stack ports: web %d smtpd %d", a.webPort(), a.smtpdPort())
	}
	// nginx proxies the stack's paths.
	if err := a.stepNginx(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	site := read(t, a, NginxSite)
	if !strings.Contains(site, "location /pdf-as-web {") || !strings.Contains(site, "proxy_pass http://127.0.0.1:5095;") || !strings.Contains(site, "proxy_pass http://127.0.0.1:5000;") {
		t.Errorf("nginx site:\n%s", site)
	}
	// A stack file with a bad proxy is refused.
	put(t, a, contract.StackFile, []byte(`{"web":{"service":"w","port":5000},"proxies":[{"path":"/x; evil","port":1}]}`), 0o644)
	if _, err := a.ReadStack(); err == nil {
		t.Error("bad proxy path accepted")
	}
}

func TestImagesVerifiedAgainstBuildDigest(t *testing.T) {
	for _, c := range []struct {
		inspect string
		ok      bool
	}{{"sha256:aaa", true}, {"sha256:bbb", false}} {
		a, rec := testAgent(t)
		put(t, a, ImagesIndex, []byte(`[{"file": "ecs.tar", "tags": ["ecs/ecs:latest"], "id": "sha256:aaa"}]`), 0o644)
		put(t, a, ImagesDir+"/ecs.tar", []byte("x"), 0o644)
		rec.Responses["docker load"] = host.Response{Stdout: "Loaded image: ecs/ecs:latest\n"}
		d := startDockerd(t, a)
		d.loadID["ecs.tar"] = c.inspect // the image the tarball holds
		err := a.stepImages(context.Background(), nil)
		if (err == nil) != c.ok {
			t.Errorf("inspect %q: %v", c.inspect, err)
		}
		if err != nil && !strings.Contains(err.Error(), "not the baked image sha256:aaa") {
			t.Errorf("error: %v", err)
		}
		// A later boot (stamp matches) does not check again: a deployed
		// image keeps the tag.
		if c.ok {
			d.addImage("sha256:deployed", "ecs/ecs:latest")
			if err := a.stepImages(context.Background(), nil); err != nil {
				t.Errorf("second boot: %v", err)
			}
		}
	}
}

// TestNewerApplianceLoadsItsImage: the data disks of an appliance move to a
// newer one (an upgrade by image). Its baked tarball has the same name,
// size and mtime (the builder's fixed one) as the old appliance's, but
// another image ID: the stamp on the data volume is the old image's, so
// the new image is loaded, not the old one kept.
func TestNewerApplianceLoadsItsImage(t *testing.T) {
	a, rec := testAgent(t)
	put(t, a, ImagesDir+"/ecs.tar", []byte("v1"), 0o644)
	put(t, a, ImagesIndex, []byte(`[{"file": "ecs.tar", "tags": ["ecs/ecs:latest"], "id": "sha256:v1"}]`), 0o644)
	rec.Responses["docker load"] = host.Response{Stdout: "Loaded image: ecs/ecs:latest\n"}
	d := startDockerd(t, a)
	d.loadID["ecs.tar"] = "sha256:v1"
	if err := a.stepImages(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	// The same boot again: loaded already.
	d.log()
	if err := a.stepImages(context.Background(), nil); err != nil || countPrefix(d.log(), "docker load") != 0 {
		t.Fatalf("unchanged image: %v, loads:\n%s", err, strings.Join(rec.Recorded(), "\n"))
	}
	if a.imagesChanged() {
		t.Error("imagesChanged with the loaded image")
	}
	// The newer appliance: a tarball of the same size and mtime, another ID.
	fi, err := os.Stat(a.Host.Path(ImagesDir + "/ecs.tar"))
	if err != nil {
		t.Fatal(err)
	}
	put(t, a, ImagesDir+"/ecs.tar", []byte("v2"), 0o644)
	if err := os.Chtimes(a.Host.Path(ImagesDir+"/ecs.tar"), fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	put(t, a, ImagesIndex, []byte(`[{"file": "ecs.tar", "tags": ["ecs/ecs:latest"], "id": "sha256:v2"}]`), 0o644)
	if !a.imagesChanged() {
		t.Error("imagesChanged misses the newer appliance's image")
	}
	d.loadID["ecs.tar"] = "sha256:v2"
	if err := a.stepImages(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if cmds := d.log(); countPrefix(cmds, "docker load") != 1 {
		t.Errorf("the newer appliance's image loaded %d times, want once:\n%s", countPrefix(cmds, "docker load"), strings.Join(cmds, "\n"))
	}
}

// TestNewImagesRemoveOldContainers: after an upgrade by image, the stack's
// containers of the previous images (restarted by dockerd at boot) are
// stopped and removed before the migration, so that `up` creates every
// service from the new images; with nothing loaded they stay.
func TestNewImagesRemoveOldContainers(t *testing.T) {
	a, rec := testAgent(t)
	put(t, a, ImagesDir+"/ecs.tar", []byte("v2"), 0o644)
	put(t, a, ImagesIndex, []byte(`[{"file": "ecs.tar", "tags": ["ecs/ecs:latest"], "id": "sha256:v2"}]`), 0o644)
	rec.Responses["docker load"] = host.Response{Stdout: "Loaded image: ecs/ecs:latest\n"}
	d := startDockerd(t, a)
	d.loadID["ecs.tar"] = "sha256:v2"
	d.addContainer("c1", "ecs", true) // restarted by dockerd at boot
	d.addContainer("c2", "ecs", false)
	d.addContainer("o1", "other", true) // not the stack's
	if err := a.stepImages(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	cmds := d.log()
	at := func(line string) int { return slices.Index(cmds, line) }
	load := slices.IndexFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "docker load") })
	stop1, stop2 := at("POST /containers/c1/stop?t=30"), at("POST /containers/c2/stop?t=30")
	rm1, rm2 := at("DELETE /containers/c1?force=1"), at("DELETE /containers/c2?force=1")
	if load < 0 || stop1 < load || stop2 < load || rm1 < max(stop1, stop2) || rm2 < max(stop1, stop2) {
		t.Errorf("want docker load, then stop and rm of the old containers:\n%s", strings.Join(cmds, "\n"))
	}
	if ids := d.containerIDs(); !slices.Equal(ids, []string{"o1"}) {
		t.Errorf("containers left: %q", ids)
	}
	if !strings.Contains(a.Log.(*bytes.Buffer).String(), "prepare-ecs/images: new images loaded: removing the stack's 2 containers of the previous images\n") {
		t.Errorf("log:\n%s", a.Log)
	}
	// The next boot loads nothing and leaves the containers alone.
	d.addContainer("c3", "ecs", true)
	if err := a.stepImages(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if cmds := d.log(); slices.ContainsFunc(cmds, func(c string) bool {
		return strings.HasPrefix(c, "POST /containers/") || strings.HasPrefix(c, "DELETE ")
	}) {
		t.Errorf("containers removed with no image loaded:\n%s", strings.Join(cmds, "\n"))
	}
	// A failed listing fails the step (no migration under an old container).
	a2, rec2 := testAgent(t)
	put(t, a2, ImagesDir+"/ecs.tar", []byte("v2"), 0o644)
	put(t, a2, ImagesIndex, []byte(`[{"file": "ecs.tar", "tags": ["ecs/ecs:latest"]}]`), 0o644)
	rec2.Responses["docker load"] = host.Response{Stdout: "Loaded image: ecs/ecs:latest\n"}
	d2 := startDockerd(t, a2)
	d2.fail["GET /containers/json"] = fakeAnswer{http.StatusInternalServerError, "containerd unavailable"}
	if err := a2.stepImages(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "listing the stack's containers: docker API GET /containers/json") || !strings.Contains(err.Error(), "dockerd answered 500 Internal Server Error: containerd unavailable") {
		t.Errorf("failed listing: %v", err)
	}
	// A stop that fails is logged, and the containers are removed by force.
	a3, rec3 := testAgent(t)
	put(t, a3, ImagesDir+"/ecs.tar", []byte("v2"), 0o644)
	put(t, a3, ImagesIndex, []byte(`[{"file": "ecs.tar", "tags": ["ecs/ecs:latest"]}]`), 0o644)
	rec3.Responses["docker load"] = host.Response{Stdout: "Loaded image: ecs/ecs:latest\n"}
	d3 := startDockerd(t, a3)
	d3.addContainer("c1", "ecs", true)
	d3.fail["POST /containers/c1/stop"] = fakeAnswer{http.StatusInternalServerError, "PID 42 is zombie and can not be killed"}
	if err := a3.stepImages(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(a3.Log.(*bytes.Buffer).String(), "prepare-ecs/images: docker stop: docker API POST /containers/c1/stop?t=30: dockerd answered 500 Internal Server Error: PID 42 is zombie and can not be killed (removing them by force)\n") || len(d3.containerIDs()) != 0 {
		t.Errorf("containers %q, log:\n%s", d3.containerIDs(), a3.Log)
	}
}
