package prepare

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ecs-image/ecs-image/agent/host"
)

func randomImage(t *testing.T) (v1.Image, string) {
	t.Helper()
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	id, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return img, id.String()
}

func pushImage(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

// bake writes img as the docker-archive file in /app/images, tagged tag,
// and the stamp prepare-ecs leaves once it loaded it.
func bake(t *testing.T, a *Agent, file, tag string, img v1.Image) {
	t.Helper()
	p := a.Host.Path(path.Join(ImagesDir, file))
	if err := os.MkdirAll(path.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(p, *ptrTag(t, tag), img); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	put(t, a, path.Join(TagsDir, "images", unsafeName().ReplaceAllString(file, "_")+".loaded"), []byte(imageStamp(fi, configName(t, img))), 0o644)
}

// tarballImage reads the config digest and the tag of a docker-archive in
// /app/images.
func tarballImage(t *testing.T, a *Agent, file, tag string) string {
	t.Helper()
	img, err := tarball.ImageFromPath(a.Host.Path(path.Join(ImagesDir, file)), ptrTag(t, tag))
	if err != nil {
		t.Fatalf("%s (tag %s): %v", file, tag, err)
	}
	id, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

func ptrTag(t *testing.T, s string) *name.Tag {
	t.Helper()
	tag, err := name.NewTag(s)
	if err != nil {
		t.Fatal(err)
	}
	return &tag
}

// `ecs-agent update` against a real registry (go-containerregistry's, in
// process): an image whose ref is a tag is replaced in /app/images when the
// registry has a newer one (ID in the index, restart, metric), left alone
// when it is current; an image pinned by digest is not pulled; an
// unreachable registry keeps the image and the run succeeds.
func TestUpdatePullsImages(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	web1, web1ID := randomImage(t)
	web2, web2ID := randomImage(t)
	redis, redisID := randomImage(t)
	webRef := reg + "/ecs/web:latest"
	pushImage(t, webRef, web1)
	pushImage(t, reg+"/ecs/redis:7", redis)
	redisDigest, err := redis.Digest()
	if err != nil {
		t.Fatal(err)
	}
	redisRef := reg + "/ecs/redis:7@" + redisDigest.String()

	a, rec := testAgent(t)
	activate(t, a, siteEnv)
	rec.Responses["apt-get -s"] = host.Response{Stdout: "Reading package lists...\n0 upgraded, 0 newly installed.\n"}
	bake(t, a, "web.tar", "ecs/web:latest", web1)
	bake(t, a, "redis.tar", "ecs/redis:7", redis)
	index := []ImageEntry{
		{File: "web.tar", Tags: []string{"ecs/web:latest"}, ID: web1ID, Ref: webRef},
		{File: "redis.tar", Tags: []string{"ecs/redis:7"}, ID: redisID, Ref: redisRef},
	}
	data, _ := json.Marshal(index)
	put(t, a, ImagesIndex, data, 0o644)
	restarted := func() bool { return slices.Contains(rec.Recorded(), "systemctl restart --no-block appliance.service") }
	results := func() map[string]string {
		m := map[string]string{}
		for _, r := range mustRead(t, a) {
			m[r.Ref] = r.ID
		}
		return m
	}

	// The registry holds what is baked: nothing to do.
	if err := a.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
	if restarted() || tarballImage(t, a, "web.tar", "ecs/web:latest") != web1ID {
		t.Fatalf("current images: restarted %v, web.tar %s", restarted(), tarballImage(t, a, "web.tar", "ecs/web:latest"))
	}
	logText := a.Log.(interface{ String() string }).String()
	if !strings.Contains(logText, webRef+" is current") || !strings.Contains(logText, redisRef+" is pinned by digest") {
		t.Errorf("log:\n%s", logText)
	}

	// A newer image under the tag: the tarball and the index change, the
	// appliance restarts (prepare-ecs loads, checks the ID, migrates).
	pushImage(t, webRef, web2)
	if err := a.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := tarballImage(t, a, "web.tar", "ecs/web:latest"); got != web2ID {
		t.Errorf("web.tar holds %s, want the registry's new %s", got, web2ID)
	}
	if got := results(); got[webRef] != web2ID || got[redisRef] != redisID {
		t.Errorf("index after the pull: %v", got)
	}
	if tarballImage(t, a, "redis.tar", "ecs/redis:7") != redisID {
		t.Error("the pinned image changed")
	}
	if !restarted() || !a.imagesChanged() {
		t.Errorf("no restart for the new image (restart %v, images changed %v): %v", restarted(), a.imagesChanged(), rec.Recorded())
	}
	if prom := read(t, a, UpdateMetrics); !strings.Contains(prom, "appliance_update_last_images_updated 1\n") || !strings.Contains(prom, "appliance_update_last_success 1\n") {
		t.Errorf("metrics:\n%s", prom)
	}
	if ents, _ := os.ReadDir(a.Host.Path(ImagesDir)); len(ents) != 3 {
		t.Errorf("%s holds %d files (a temp file left?)", ImagesDir, len(ents))
	}

	// The registry gone: a warning, the image stays, the run succeeds.
	srv.Close()
	before, _ := os.ReadFile(a.Host.Path(path.Join(ImagesDir, "web.tar")))
	if err := a.Update(context.Background()); err != nil {
		t.Fatalf("update with the registry unreachable: %v", err)
	}
	after, _ := os.ReadFile(a.Host.Path(path.Join(ImagesDir, "web.tar")))
	if string(before) != string(after) {
		t.Error("web.tar changed while the registry was unreachable")
	}
	if logText := a.Log.(interface{ String() string }).String(); !strings.Contains(logText, "warning: "+webRef) || !strings.Contains(logText, "the loaded image stays") {
		t.Errorf("no warning for the unreachable registry:\n%s", logText)
	}
	if prom := read(t, a, UpdateMetrics); !strings.Contains(prom, "appliance_update_last_images_updated 0\n") || !strings.Contains(prom, "appliance_update_last_success 1\n") {
		t.Errorf("metrics:\n%s", prom)
	}
}

func mustRead(t *testing.T, a *Agent) []ImageEntry {
	t.Helper()
	list, err := a.ReadImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// configName is img's config digest (its image ID in Docker).
func configName(t *testing.T, img v1.Image) string {
	t.Helper()
	id, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}
