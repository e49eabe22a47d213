package provisioners

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func writeArchive(t *testing.T, file, tag string) {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.NewTag(tag)
	if err := tarball.WriteToFile(file, ref, img); err != nil {
		t.Fatal(err)
	}
}

const goodCompose = `services:
  web:
    image: ecs/ecs:latest
    volumes:
      - /data/ecs-storage-vault:/app/ecs-storage-vault
      - {type: bind, source: /app/etc/server.cert.pem, target: /app/import/server.cert.pem, read_only: true}
    ports: ["127.0.0.1:5000:5000"]
  smtpd:
    image: ecs/ecs
    ports: ["127.0.0.1:5025:8025"]
  redis:
    image: redis:7
    volumes: ["/volatile/redis:/data"]
`

func stackFixture(t *testing.T, compose string) (*Stack, string) {
	t.Helper()
	dir := t.TempDir()
	writeArchive(t, filepath.Join(dir, "ecs.tar"), "ecs/ecs:latest")
	if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(compose), 0o644); err != nil {
		t.Fatal(err)
	}
	return &Stack{Compose: "docker-compose.yml", Web: StackEndpoint{Service: "web", Port: 5000}, SMTPD: 5025,
		Images: []ContainerImage{{Path: "ecs.tar"}}}, dir
}

func msgs(errs []FieldError) string {
	var b strings.Builder
	for _, e := range errs {
		b.WriteString(e.Field + ": " + e.Msg + "\n")
	}
	return b.String()
}

func TestStackCheck(t *testing.T) {
	s, dir := stackFixture(t, goodCompose)
	if errs := s.Check(dir); len(errs) > 0 {
		t.Fatalf("good stack refused:\n%s", msgs(errs))
	}
	c := s.Contract()
	if strings.Join(c.Services, ",") != "web,smtpd,redis" || c.Project != "ecs" || c.Web.Port != 5000 || len(c.Volumes) != 3 {
		t.Errorf("contract: %+v", c)
	}
	if v := c.Volumes[1]; v.Service != "web" || v.Source != "/app/etc/server.cert.pem" || !v.ReadOnly {
		t.Errorf("long volume: %+v", v)
	}
	// Outside production an unbaked image is pulled at first boot; a
	// production variant refuses it, with the compose file's line.
	prod := msgs(s.CheckProduction())
	if !strings.Contains(prod, "docker-compose.yml:12:12: services.redis.image: \"redis:7\" is not baked and has no digest") {
		t.Errorf("production check:\n%s", prod)
	}
	if strings.Contains(prod, "services.web") || strings.Contains(prod, "services.smtpd") {
		t.Errorf("baked images refused:\n%s", prod)
	}
	s.Images = append(s.Images, ContainerImage{Ref: "memcached:1.6", Name: "m.tar"})
	if prod := msgs(s.CheckProduction()); !strings.Contains(prod, `images[1].ref: "memcached:1.6" has no digest`) {
		t.Errorf("production check of a ref:\n%s", prod)
	}
}

func TestStackCheckRefuses(t *testing.T) {
	cases := map[string]struct{ compose, want string }{
		"volume outside the layout": {strings.Replace(goodCompose, "/volatile/redis:/data", "/srv/redis:/data", 1),
			"docker-compose.yml:13:15: services.redis.volumes[0]: /srv/redis: outside the runtime layout"},
		"named volume": {strings.Replace(goodCompose, "/volatile/redis:/data", "redisdata:/data", 1),
			"services.redis.volumes[0]: redisdata: not an absolute host path"},
		"top-level volumes": {goodCompose + "volumes:\n  redisdata: {}\n", "docker-compose.yml:15:3: volumes.redisdata: named volumes"},
		"build": {strings.Replace(goodCompose, "    image: redis:7\n", "    image: redis:7\n    build: ./redis\n", 1),
			"services.redis.build: the appliance builds no images"},
		"variable host path": {strings.Replace(goodCompose, "/volatile/redis:/data", "${DIR}:/data", 1), "no variables in host paths"},
		"web not published":  {strings.Replace(goodCompose, "127.0.0.1:5000:5000", "5000:5000", 1), "web.port: "},
		"tmpfs volume":       {strings.Replace(goodCompose, "{type: bind,", "{type: volume,", 1), `"volume": only bind mounts`},
		"dotdot":             {strings.Replace(goodCompose, "/volatile/redis:/data", "/data/../etc:/data", 1), "not a clean path"},
	}
	for n, c := range cases {
		s, dir := stackFixture(t, c.compose)
		got := msgs(s.Check(dir))
		if !strings.Contains(got, c.want) {
			t.Errorf("%s: want %q in\n%s", n, c.want, got)
		}
	}
	s, dir := stackFixture(t, goodCompose)
	s.Compose = ""
	if got := msgs(s.Check(dir)); !strings.Contains(got, "compose: required") {
		t.Errorf("no compose: %s", got)
	}
	s, dir = stackFixture(t, goodCompose)
	s.Proxies = []StackProxy{{Path: "/pdf-as-web", Port: 5095}, {Path: "relative", Port: 1}}
	if got := msgs(s.Check(dir)); !strings.Contains(got, "proxies[0].port: no service") || !strings.Contains(got, "proxies[1].path") {
		t.Errorf("proxies: %s", got)
	}
}
