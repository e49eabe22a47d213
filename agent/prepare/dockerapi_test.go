package prepare

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
)

// fakeDockerd serves the calls of dockerd's Engine API the agent makes
// (the build host has no Docker engine), on <root>/run/docker.sock, with
// dockerd's paths, status codes and JSON: images with their tags,
// containers with their labels. It also wraps the agent's runner, so that
// a `docker load` the runner answers ("Loaded image: REF") puts the image
// in the engine as dockerd would, and logs the runner's commands and its
// own requests ("GET /images/json?all=1", API version stripped, query
// unescaped) in one timeline.
type fakeDockerd struct {
	mu         sync.Mutex
	images     []*fakeImage
	containers []*fakeContainer
	timeline   []string
	// loadID is the ID a load of a tarball (its base name) gives the
	// image; otherwise one derived from the file's path.
	loadID map[string]string
	// fail answers a request whose line starts with the key with that
	// status and message.
	fail map[string]fakeAnswer
}

type fakeImage struct {
	id   string
	tags []string
}

type fakeContainer struct {
	id      string
	labels  map[string]string
	running bool
}

type fakeAnswer struct {
	status int
	msg    string
}

// startDockerd serves a fake engine on a's docker socket and wraps a's
// runner (set it before).
func startDockerd(t *testing.T, a *Agent) *fakeDockerd {
	t.Helper()
	d := &fakeDockerd{loadID: map[string]string{}, fail: map[string]fakeAnswer{}}
	sock := a.Host.Path(DockerSocket)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	listen := sock
	if len(sock) > 100 { // a unix socket's path is at most 107 bytes: listen nearby, link it
		dir, err := os.MkdirTemp("", "dockerd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		listen = filepath.Join(dir, "docker.sock")
		if err := os.Symlink(listen, sock); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("unix", listen)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(d.serve))
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	a.Host.Runner = dockerdRunner{a.Host.Runner, d}
	return d
}

// dockerdRunner runs commands through Runner and applies the images a
// successful `docker load -i FILE` reports to the fake engine.
type dockerdRunner struct {
	host.Runner
	d *fakeDockerd
}

func (r dockerdRunner) Run(ctx context.Context, c host.Cmd) ([]byte, error) {
	r.d.note(c.String())
	out, err := r.Runner.Run(ctx, c)
	if err == nil && c.Name == "docker" && len(c.Args) == 3 && c.Args[0] == "load" {
		file := c.Args[2]
		id := r.d.loadID[filepath.Base(file)]
		if id == "" {
			sum := sha256.Sum256([]byte(file))
			id = "sha256:" + hex.EncodeToString(sum[:])
		}
		for _, ref := range loadedRefs(string(out)) {
			if strings.HasPrefix(ref, "sha256:") {
				r.d.addImage(ref)
			} else {
				r.d.addImage(id, ref)
			}
		}
	}
	return out, err
}

func (d *fakeDockerd) note(line string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.timeline = append(d.timeline, line)
}

// log returns the timeline so far (commands and requests) and starts a
// new one.
func (d *fakeDockerd) log() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.timeline
	d.timeline = nil
	return out
}

// requests returns the API requests of the timeline so far (without
// taking them).
func (d *fakeDockerd) requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, l := range d.timeline {
		if strings.HasPrefix(l, "GET ") || strings.HasPrefix(l, "POST ") || strings.HasPrefix(l, "DELETE ") {
			out = append(out, l)
		}
	}
	return out
}

// addImage gives the image id (created if new) the tags, taking them from
// any other image, as a load or a tag does.
func (d *fakeDockerd) addImage(id string, tags ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tagLocked(id, tags...)
}

func (d *fakeDockerd) tagLocked(id string, tags ...string) {
	var im *fakeImage
	for _, x := range d.images {
		x.tags = slices.DeleteFunc(x.tags, func(t string) bool { return slices.Contains(tags, t) })
		if x.id == id {
			im = x
		}
	}
	if im == nil {
		im = &fakeImage{id: id}
		d.images = append(d.images, im)
	}
	im.tags = append(im.tags, tags...)
}

// addContainer adds a container of the compose project (running or not).
func (d *fakeDockerd) addContainer(id, project string, running bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.containers = append(d.containers, &fakeContainer{id: id, labels: map[string]string{"com.docker.compose.project": project}, running: running})
}

// containerIDs lists the containers the engine has.
func (d *fakeDockerd) containerIDs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for _, c := range d.containers {
		ids = append(ids, c.id)
	}
	return ids
}

// fullRef is ref with the tag latest when it names none.
func fullRef(ref string) string {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") || strings.Contains(ref, "@") {
		return ref
	}
	return ref + ":latest"
}

// imageLocked finds an image by ID (also without "sha256:") or tag.
func (d *fakeDockerd) imageLocked(name string) *fakeImage {
	for _, im := range d.images {
		if im.id == name || im.id == "sha256:"+name || slices.Contains(im.tags, fullRef(name)) {
			return im
		}
	}
	return nil
}

func (d *fakeDockerd) containerLocked(id string) (int, *fakeContainer) {
	for i, c := range d.containers {
		if c.id == id {
			return i, c
		}
	}
	return -1, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, map[string]string{"message": fmt.Sprintf(format, args...)})
}

func (d *fakeDockerd) serve(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if !strings.HasPrefix(p, "/v1.41/") {
		writeError(w, http.StatusBadRequest, "the agent asks for API 1.41, not %s", p)
		return
	}
	p = strings.TrimPrefix(p, "/v1.41")
	line := r.Method + " " + p
	if r.URL.RawQuery != "" {
		q, _ := url.QueryUnescape(r.URL.RawQuery)
		line += "?" + q
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.timeline = append(d.timeline, line)
	for prefix, ans := range d.fail {
		if strings.HasPrefix(line, prefix) {
			writeError(w, ans.status, "%s", ans.msg)
			return
		}
	}
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodGet && p == "/images/json":
		list := []map[string]any{}
		for _, im := range d.images {
			if len(im.tags) == 0 && q.Get("all") != "1" {
				continue // (intermediate images are listed with all only)
			}
			list = append(list, map[string]any{"Id": im.id, "RepoTags": im.tags})
		}
		writeJSON(w, http.StatusOK, list)
	case strings.HasPrefix(p, "/images/") && (r.Method == http.MethodGet && strings.HasSuffix(p, "/json") || r.Method == http.MethodPost && strings.HasSuffix(p, "/tag")):
		name, op := path.Split(strings.TrimPrefix(p, "/images/"))
		name = strings.TrimSuffix(name, "/")
		im := d.imageLocked(name)
		switch {
		case im == nil:
			writeError(w, http.StatusNotFound, "No such image: %s", name)
		case op == "json":
			writeJSON(w, http.StatusOK, map[string]any{"Id": im.id, "RepoTags": im.tags})
		case q.Get("repo") == "" || q.Get("tag") == "" || strings.ContainsAny(q.Get("tag"), ":/@"):
			writeError(w, http.StatusBadRequest, "invalid reference format")
		default:
			d.tagLocked(im.id, q.Get("repo")+":"+q.Get("tag"))
			w.WriteHeader(http.StatusCreated)
		}
	case r.Method == http.MethodPost && p == "/images/prune":
		deleted := []map[string]string{}
		d.images = slices.DeleteFunc(d.images, func(im *fakeImage) bool {
			if len(im.tags) == 0 {
				deleted = append(deleted, map[string]string{"Deleted": im.id})
			}
			return len(im.tags) == 0
		})
		writeJSON(w, http.StatusOK, map[string]any{"ImagesDeleted": deleted, "SpaceReclaimed": 0})
	case r.Method == http.MethodGet && p == "/containers/json":
		var filters map[string]map[string]bool
		if f := q.Get("filters"); f != "" {
			if err := json.Unmarshal([]byte(f), &filters); err != nil {
				writeError(w, http.StatusBadRequest, "invalid filter: %v", err)
				return
			}
		}
		list := []map[string]any{}
		for _, c := range d.containers {
			match := c.running || q.Get("all") == "1"
			for l := range filters["label"] {
				k, v, _ := strings.Cut(l, "=")
				match = match && c.labels[k] == v
			}
			if match {
				list = append(list, map[string]any{"Id": c.id, "Labels": c.labels})
			}
		}
		writeJSON(w, http.StatusOK, list)
	case r.Method == http.MethodPost && strings.HasPrefix(p, "/containers/") && strings.HasSuffix(p, "/stop"):
		id := strings.TrimSuffix(strings.TrimPrefix(p, "/containers/"), "/stop")
		_, c := d.containerLocked(id)
		switch {
		case c == nil:
			writeError(w, http.StatusNotFound, "No such container: %s", id)
		case !c.running:
			w.WriteHeader(http.StatusNotModified)
		default:
			c.running = false
			w.WriteHeader(http.StatusNoContent)
		}
	case r.Method == http.MethodDelete && strings.HasPrefix(p, "/containers/"):
		id := strings.TrimPrefix(p, "/containers/")
		i, c := d.containerLocked(id)
		switch {
		case c == nil:
			writeError(w, http.StatusNotFound, "No such container: %s", id)
		case c.running && q.Get("force") != "1":
			writeError(w, http.StatusConflict, "cannot remove container %q: container is running: stop the container before removing or force remove", id)
		default:
			d.containers = slices.Delete(d.containers, i, i+1)
			w.WriteHeader(http.StatusNoContent)
		}
	default:
		writeError(w, http.StatusNotFound, "page not found")
	}
}

// The client's calls against the fake engine: dockerd's paths and
// answers, errors that name the call and what dockerd said.
func TestDockerAPI(t *testing.T) {
	a, _ := testAgent(t)
	fd := startDockerd(t, a)
	ctx := context.Background()
	d := a.docker()
	fd.addImage("sha256:aaa", "ecs/redis:local")
	fd.addImage("sha256:bbb", "registry:5000/x/y:tag")
	fd.addImage("sha256:ccc")

	if ids, err := d.ImageIDs(ctx); err != nil || !slices.Equal(ids, []string{"sha256:aaa", "sha256:bbb", "sha256:ccc"}) {
		t.Errorf("ImageIDs: %q %v", ids, err)
	}
	for ref, want := range map[string]string{"ecs/redis:local": "sha256:aaa", "registry:5000/x/y:tag": "sha256:bbb", "sha256:ccc": "sha256:ccc"} {
		if id, err := d.ImageID(ctx, ref); err != nil || id != want {
			t.Errorf("ImageID(%s): %q %v", ref, id, err)
		}
	}
	_, err := d.ImageID(ctx, "ecs/missing:1")
	if !errors.Is(err, errNoSuchImage) || err.Error() != "docker API GET /images/ecs/missing:1/json: dockerd answered 404 Not Found: No such image: ecs/missing:1" {
		t.Errorf("missing image: %v", err)
	}

	// Tags: repository and tag split as docker tag does.
	for _, c := range []struct{ target, query string }{
		{"redis:local", "repo=redis&tag=local"},
		{"registry:5000/x/y:v2", "repo=registry:5000/x/y&tag=v2"},
		{"registry:5000/x/y", "repo=registry:5000/x/y&tag=latest"},
		{"ecs/ecs", "repo=ecs/ecs&tag=latest"},
	} {
		fd.log()
		if err := d.Tag(ctx, "sha256:aaa", c.target); err != nil {
			t.Errorf("Tag %s: %v", c.target, err)
		}
		if got, want := fd.log(), []string{"POST /images/sha256:aaa/tag?" + c.query}; !slices.Equal(got, want) {
			t.Errorf("Tag %s: %q, want %q", c.target, got, want)
		}
		if id, err := d.ImageID(ctx, c.target); err != nil || id != "sha256:aaa" {
			t.Errorf("after Tag %s: %q %v", c.target, id, err)
		}
	}
	fd.log()
	if err := d.Tag(ctx, "sha256:aaa", "ecs/ecs@sha256:0123"); err == nil || !strings.Contains(err.Error(), "digest") || len(fd.requests()) != 0 {
		t.Errorf("a digest as the target: %v, requests %q", err, fd.requests())
	}
	if err := d.Tag(ctx, "ecs/nothing:1", "ecs/x:1"); err == nil || err.Error() != "docker API POST /images/ecs/nothing:1/tag?repo=ecs/x&tag=1: dockerd answered 404 Not Found: No such image: ecs/nothing:1" {
		t.Errorf("tagging a missing image: %v", err)
	}

	// Containers of a compose project, stopped and removed; a stopped one
	// and one gone already are no error.
	fd.addContainer("c1", "ecs", true)
	fd.addContainer("c2", "ecs", false)
	fd.addContainer("o1", "other", true)
	ids, err := d.ContainersByLabel(ctx, "com.docker.compose.project", "ecs")
	if err != nil || !slices.Equal(ids, []string{"c1", "c2"}) {
		t.Errorf("ContainersByLabel: %q %v", ids, err)
	}
	fd.log()
	if err := d.StopContainers(ctx, 30*time.Second, "c1", "c2"); err != nil {
		t.Errorf("StopContainers: %v", err)
	}
	if err := d.RemoveContainers(ctx, "c1", "c2", "gone"); err != nil {
		t.Errorf("RemoveContainers: %v", err)
	}
	got := fd.log()
	slices.Sort(got[:2])
	if want := []string{"POST /containers/c1/stop?t=30", "POST /containers/c2/stop?t=30"}; !slices.Equal(got[:2], want) {
		t.Errorf("stop requests %q", got)
	}
	if ids := fd.containerIDs(); !slices.Equal(ids, []string{"o1"}) {
		t.Errorf("containers left: %q", ids)
	}
	err = d.StopContainers(ctx, 30*time.Second, "nosuch")
	if err == nil || err.Error() != "docker API POST /containers/nosuch/stop?t=30: dockerd answered 404 Not Found: No such container: nosuch" {
		t.Errorf("stopping a missing container: %v", err)
	}

	// Prune removes the untagged image only.
	if err := d.PruneImages(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ImageID(ctx, "sha256:ccc"); !errors.Is(err, errNoSuchImage) {
		t.Errorf("the dangling image after prune: %v", err)
	}
	if _, err := d.ImageID(ctx, "sha256:aaa"); err != nil {
		t.Errorf("a tagged image after prune: %v", err)
	}

	// A 500 is reported with dockerd's message; no engine, with the socket.
	fd.fail["GET /images/json"] = fakeAnswer{http.StatusInternalServerError, "layer store broken"}
	if _, err := d.ImageIDs(ctx); err == nil || err.Error() != "docker API GET /images/json?all=1: dockerd answered 500 Internal Server Error: layer store broken" {
		t.Errorf("500: %v", err)
	}
	b, _ := testAgent(t)
	if _, err := b.docker().ImageIDs(ctx); err == nil || !strings.Contains(err.Error(), "docker API GET /images/json?all=1: dial unix "+b.Host.Path(DockerSocket)) {
		t.Errorf("no engine: %v", err)
	}
}

func TestSplitImageRef(t *testing.T) {
	for ref, want := range map[string][2]string{
		"ecs/redis:local":           {"ecs/redis", "local"},
		"redis":                     {"redis", "latest"},
		"registry:5000/x/y:tag":     {"registry:5000/x/y", "tag"},
		"registry:5000/x/y":         {"registry:5000/x/y", "latest"},
		"localhost:5000/ecs:1.2.3":  {"localhost:5000/ecs", "1.2.3"},
		"docker.io/library/redis:7": {"docker.io/library/redis", "7"},
	} {
		repo, tag, err := splitImageRef(ref)
		if err != nil || repo != want[0] || tag != want[1] {
			t.Errorf("%s: %q %q %v, want %q", ref, repo, tag, err, want)
		}
	}
	for _, ref := range []string{"ecs/ecs@sha256:0123", "ecs/ecs:1@sha256:0123", "", ":tag", "ecs:"} {
		if _, _, err := splitImageRef(ref); err == nil {
			t.Errorf("%q accepted", ref)
		}
	}
}

// cleanup prunes the dangling images through the API; a failure is
// logged and returned.
func TestCleanupPrunesImages(t *testing.T) {
	a, rec := testAgent(t)
	d := startDockerd(t, a)
	d.addImage("sha256:old")
	d.addImage("sha256:new", "ecs/ecs:latest")
	if err := a.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := d.log(); !slices.Equal(got, []string{"POST /images/prune"}) || len(rec.Recorded()) != 0 {
		t.Errorf("requests %q, commands %q", got, rec.Recorded())
	}
	if ids, err := a.docker().ImageIDs(context.Background()); err != nil || !slices.Equal(ids, []string{"sha256:new"}) {
		t.Errorf("images after the prune: %q %v", ids, err)
	}
	d.fail["POST /images/prune"] = fakeAnswer{http.StatusConflict, "a prune operation is already running"}
	err := a.Cleanup(context.Background())
	if err == nil || !strings.Contains(a.Log.(interface{ String() string }).String(), "cleanup: docker API POST /images/prune: dockerd answered 409 Conflict: a prune operation is already running\n") {
		t.Errorf("failed prune: %v, log:\n%s", err, a.Log)
	}
}
