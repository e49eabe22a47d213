package provisioners

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestContainersPullFromRegistry pulls a reference from a registry (the
// distribution API served by go-containerregistry's registry package) on
// the host and bakes it as a docker-archive whose image is the pushed one.
func TestContainersPullFromRegistry(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/ecs/pulled:v1"
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(context.Background())); err != nil {
		t.Fatal(err)
	}
	wantID, _ := img.ConfigName()

	pullDir := t.TempDir()
	c := &Containers{Images: []ContainerImage{{Ref: ref}}, PullDir: pullDir}
	if errs := c.Check(t.TempDir()); len(errs) > 0 {
		t.Fatal(errs)
	}
	var buf bytes.Buffer
	a := NewArchive(&buf)
	if err := c.Place(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	a.Close()

	files := map[string][]byte{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
	baked, ok := files["app/images/"+c.Images[0].Name]
	if !ok {
		t.Fatalf("no image tarball in the archive: %v", keys(files))
	}
	p := filepath.Join(t.TempDir(), "baked.tar")
	os.WriteFile(p, baked, 0o644)
	got, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		t.Fatalf("the baked tarball is not a docker-archive: %v", err)
	}
	if id, _ := got.ConfigName(); id != wantID {
		t.Errorf("baked image %s, pushed %s", id, wantID)
	}
	var man ImageManifest
	if err := json.Unmarshal(files["app/images/images.json"], &man); err != nil || len(man.Images) != 1 || man.Images[0].Source != ref {
		t.Errorf("images.json %s (%v): want the reference as source", files["app/images/images.json"], err)
	}
	var index []AgentIndexEntry
	if err := json.Unmarshal(files["app/images/manifest.json"], &index); err != nil || len(index) != 1 || strings.Join(index[0].Tags, ",") != ref || index[0].Ref != ref {
		t.Errorf("agent index %s (%v): want tag and ref %s (ecs-agent update pulls the ref again)", files["app/images/manifest.json"], err, ref)
	}

	// A reference the registry does not have fails with the reference named.
	missing := &Containers{Images: []ContainerImage{{Ref: host + "/ecs/missing:v9"}}, PullDir: pullDir}
	if errs := missing.Check(t.TempDir()); len(errs) > 0 {
		t.Fatal(errs)
	}
	err = missing.Place(context.Background(), NewArchive(io.Discard))
	if err == nil || !strings.Contains(err.Error(), "ecs/missing:v9") {
		t.Errorf("missing image: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(pullDir, "*missing*")); len(left) > 0 {
		t.Errorf("a failed pull left %v", left)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
