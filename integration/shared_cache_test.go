//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/release"
	"github.com/ecs-image/ecs-image/testenv"
)

// sharedTemplate has two stages run in a chroot on the build host (no
// build VM; the generalisation still boots the offline helper): system
// writes marker, app writes app.
func sharedTemplate(base, marker, app string) string {
	return `name: it-shared
base:
  file: ` + base + `
disk_size: 4G
outputs: [qcow2]
stages:
  - name: system
    mode: chroot
    provisioners:
      - type: shell
        inline:
          - echo "` + marker + `" > /etc/ecs-shared-marker
  - name: app
    mode: chroot
    provisioners:
      - type: shell
        inline:
          - echo "` + app + `" > /etc/ecs-shared-app
`
}

// sharedCache is where the shared-cache tests start: a host that runs
// chroot stages, the local base, a versitygw with bucket "cache" (the
// builders find it through AWS_ENDPOINT_URL) seen through prefix ci, and
// two templates made by tmpl with a fresh marker, whose app stage writes
// "one" (T1) or "two" (T2).
type sharedCache struct {
	St                  *release.S3Target
	Dir, Marker, T1, T2 string
	Remote              []string // the builders' --cache-remote flags
}

func newSharedCache(t *testing.T, markerPrefix string, tmpl func(base, marker, app string) string) *sharedCache {
	t.Helper()
	needChroot(t)
	base := baseImage(t)
	endpoint := testenv.VersityGW(t, "cache")
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	st, err := release.NewS3Target(context.Background(), "cache", "ci", release.S3Options{Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	rnd := make([]byte, 6)
	rand.Read(rnd)
	sc := &sharedCache{St: st, Dir: t.TempDir(), Marker: markerPrefix + "-" + hex.EncodeToString(rnd), Remote: []string{"--cache-remote", "s3://cache/ci"}}
	sc.T1, sc.T2 = filepath.Join(sc.Dir, "t1.yml"), filepath.Join(sc.Dir, "t2.yml")
	for p, app := range map[string]string{sc.T1: "one", sc.T2: "two"} {
		if err := os.WriteFile(p, []byte(tmpl(base, sc.Marker, app)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return sc
}

// builderRun is one `ecs-image build` of a builder with its own local
// cache (ECS_IMAGE_CACHE), as a CI runner with an empty disk.
type builderRun struct {
	Name     string
	Cache    string // ECS_IMAGE_CACHE
	Out      string
	Log      string // stderr
	Err      error
	Manifest *builder.Manifest
	Took     time.Duration
}

// startBuilder starts `ecs-image build TMPL -o OUT ARGS…` for builder name
// (cache dir/name, output dir/name-out-N) and returns a function waiting
// for it.
func startBuilder(t *testing.T, dir, name, tmpl string, args ...string) func() *builderRun {
	t.Helper()
	r := &builderRun{Name: name, Cache: filepath.Join(dir, name)}
	for i := 1; ; i++ {
		r.Out = filepath.Join(dir, fmt.Sprintf("%s-out-%d", name, i))
		if _, err := os.Stat(r.Out); os.IsNotExist(err) {
			break
		}
	}
	cmd := exec.Command(ecsImagePath(), append([]string{"build", tmpl, "-o", r.Out}, args...)...)
	cmd.Env = append(os.Environ(), "ECS_IMAGE_CACHE="+r.Cache)
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() *builderRun {
		r.Err = cmd.Wait()
		r.Took = time.Since(start)
		r.Log = errOut.String()
		if r.Err == nil {
			r.Manifest = readManifest(t, filepath.Join(r.Out, "it-shared.build.json"))
		}
		t.Logf("builder %s: %s (%v)", name, r.Took.Round(time.Second), r.Err)
		return r
	}
}

// localID is the ID (StageEntry.ID) of key in the builder's local cache.
func (r *builderRun) localID(t *testing.T, key string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(r.Cache, "stages", key, "stage.json"))
	if err != nil {
		t.Fatal(err)
	}
	var e builder.StageEntry
	if err := json.Unmarshal(data, &e); err != nil || e.ID == "" {
		t.Fatalf("%s: stage.json of %s: %v %+v", r.Name, key, err, e)
	}
	return e.ID
}

// checkRemote checks the shared cache holds exactly one object per key of
// chains (no other object, no open upload), each whole (sha256 of its
// content = its metadata) and built on the remote's object of its parent.
// It returns the objects' stage IDs.
func checkRemote(t *testing.T, st *release.S3Target, chains ...[][2]string) map[string]string {
	t.Helper()
	ctx := context.Background()
	want := map[string]string{}
	for _, c := range chains {
		for _, kp := range c {
			want[kp[0]] = kp[1]
		}
	}
	objs, err := st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var got, wantObjs []string
	for _, o := range objs {
		got = append(got, o.Key)
	}
	for k := range want {
		wantObjs = append(wantObjs, builder.RemoteObject(k))
	}
	sort.Strings(got)
	sort.Strings(wantObjs)
	if strings.Join(got, " ") != strings.Join(wantObjs, " ") {
		t.Fatalf("shared cache holds\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(wantObjs, "\n  "))
	}
	if ups, err := st.ListUploads(ctx, ""); err != nil || len(ups) != 0 {
		t.Fatalf("open uploads: %v %v", ups, err)
	}
	ids, parents := map[string]string{}, map[string]string{}
	tmp := filepath.Join(t.TempDir(), "object")
	for k := range want {
		meta, found, err := st.GetMeta(ctx, builder.RemoteObject(k), tmp)
		if err != nil || !found {
			t.Fatalf("%s: %v %v", k, found, err)
		}
		data, _ := os.ReadFile(tmp)
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != meta["sha256"] {
			t.Errorf("object of %s: sha256 %x, its metadata %s", k[:12], sum, meta["sha256"])
		}
		ids[k], parents[k] = meta["stage-id"], meta["parent-id"]
	}
	for k, p := range want {
		if ids[k] == "" {
			t.Errorf("object of %s has no stage id", k[:12])
		}
		if p != "" && parents[k] != ids[p] {
			t.Errorf("object of %s was built on build %s of %s, the remote holds build %s", k[:12], parents[k], p[:12], ids[p])
		}
	}
	return ids
}

// TestSharedStageCacheKilledUpload kills a builder (SIGKILL: no clean-up)
// while it uploads a stage multipart: no object appears; the next build,
// from the same local cache, uploads it whole; `cache prune --remote`
// aborts the upload the killed builder left open. No VM: the stage runs in
// a chroot and the build is killed (then fails) before the generalisation.
func TestSharedStageCacheKilledUpload(t *testing.T) {
	needChroot(t)
	base := baseImage(t)
	endpoint := testenv.VersityGW(t, "cache")
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	ctx := context.Background()
	st, err := release.NewS3Target(ctx, "cache", "kill", release.S3Options{Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "big.yml")
	rnd := make([]byte, 6)
	rand.Read(rnd)
	// 96 MiB of random data: the object is about as large (multipart).
	os.WriteFile(tmpl, []byte(`name: it-shared
base:
  file: `+base+`
disk_size: 4G
outputs: [qcow2]
stages:
  - name: big
    mode: chroot
    provisioners:
      - type: shell
        inline:
          - echo `+hex.EncodeToString(rnd)+` > /etc/ecs-big-marker
          - head -c 96M /dev/urandom > /var/tmp/ecs-big
  - name: fails
    mode: chroot
    provisioners:
      - type: shell
        inline: ["exit 3"]
`), 0o644)
	args := []string{"build", tmpl, "-o", filepath.Join(dir, "out"), "--cache-remote", "s3://cache/kill"}
	env := append(os.Environ(), "ECS_IMAGE_CACHE="+filepath.Join(dir, "k"))

	cmd := exec.Command(ecsImagePath(), args...)
	cmd.Env = env
	var log syncBuffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	exited := false
	done := make(chan struct{})
	go func() { cmd.Wait(); mu.Lock(); exited = true; mu.Unlock(); close(done) }()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		ups, err := st.ListUploads(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(ups) > 0 {
			cmd.Process.Kill()
			break
		}
		mu.Lock()
		gone := exited
		mu.Unlock()
		if gone || time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			t.Fatalf("no multipart upload seen before the build ended:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	<-done
	if objs, _ := st.List(ctx, ""); len(objs) != 0 {
		t.Fatalf("a killed upload left an object: %v\n%s", objs, log.String())
	}
	if ups, _ := st.ListUploads(ctx, ""); len(ups) == 0 {
		t.Logf("the killed upload left no open upload (aborted before the kill?)")
	}

	// Next build from the same local cache: the stage is a local hit and
	// is uploaded; its second stage fails.
	cmd = exec.Command(ecsImagePath(), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "uploaded (") {
		t.Fatalf("second build (%v), want the stage uploaded and the build failed:\n%s", err, out)
	}
	objs, err := st.List(ctx, "")
	if err != nil || len(objs) != 1 {
		t.Fatalf("objects after the second build: %v %v", objs, err)
	}
	tmp := filepath.Join(dir, "object")
	meta, _, err := st.GetMeta(ctx, objs[0].Key, tmp)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(tmp)
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != meta["sha256"] || len(data) < 90<<20 {
		t.Fatalf("uploaded object: %d bytes, sha256 %x, metadata %v", len(data), sum, meta)
	}
	if ups, _ := st.ListUploads(ctx, ""); len(ups) > 0 {
		pr := exec.Command(ecsImagePath(), "cache", "prune", "--cache-remote", "s3://cache/kill", "--older-than", "0s")
		pr.Env = env
		pout, err := pr.CombinedOutput()
		if err != nil || !strings.Contains(string(pout), "aborted the upload of "+objs[0].Key) {
			t.Errorf("cache prune --remote: %v\n%s", err, pout)
		}
		if ups, _ := st.ListUploads(ctx, ""); len(ups) != 0 {
			t.Errorf("uploads left open after prune: %v", ups)
		}
	}
}

// stopTemplate is sharedTemplate with a last stage that fails: a build
// uploads its first two stages and stops before the generalisation, so
// that builders run and race without any VM.
func stopTemplate(base, marker, app string) string {
	return sharedTemplate(base, marker, app) + `  - name: stop
    mode: chroot
    provisioners:
      - type: shell
        inline: ["exit 3"]
`
}

// planChain is the keys of the template's stages but the last, each with
// its parent's key ("" for the first), as the build computes them.
func planChain(t *testing.T, tmpl string) [][2]string {
	t.Helper()
	tp, err := template.Load(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	b, err := builder.ResolveBase(context.Background(), tp)
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := builder.PlanJobs(tp, b.Digest, false)
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]string
	parent := ""
	for _, s := range jobs[0].Stages[:len(jobs[0].Stages)-1] {
		out = append(out, [2]string{s.Key, parent})
		parent = s.Key
	}
	return out
}

// stopped checks that r ran to its failing last stage: exit status 1, the
// stop stage built and failed.
func (r *builderRun) stopped(t *testing.T) {
	t.Helper()
	if r.Err == nil || !strings.Contains(r.Log, "stage stop: building (") || !strings.Contains(r.Log, "stage stop:") {
		t.Fatalf("builder %s: %v, want it to fail in its stop stage:\n%s", r.Name, r.Err, r.Log)
	}
}

// fromRemote checks that r took the stages of chain from the shared cache
// (downloaded and verified, not built).
func (r *builderRun) fromRemote(t *testing.T, names []string, chain [][2]string) {
	t.Helper()
	for i, kp := range chain {
		if !strings.Contains(r.Log, "stage "+names[i]+": cached ("+kp[0][:12]+", from the shared cache)") ||
			!strings.Contains(r.Log, "remote cache: "+kp[0][:12]+" downloaded and verified") {
			t.Errorf("builder %s: stage %s not from the shared cache:\n%s", r.Name, names[i], r.Log)
		}
		if strings.Contains(r.Log, "stage "+names[i]+": building (") {
			t.Errorf("builder %s: stage %s built", r.Name, names[i])
		}
	}
}

// TestSharedStageCacheBuilders (no VM: chroot stages and a failing last
// stage, so no build reaches the generalisation) runs builders as separate
// processes with their own empty caches on one versitygw: two started
// together race on the same stages and leave one whole object per stage,
// the second built on the remote's first; a third takes both from the
// remote; a read-only builder with the second stage changed downloads the
// first, builds the second and writes nothing; a flipped byte in an object
// is reported, the stage rebuilt and the object replaced; an unreachable
// remote is one warning.
func TestSharedStageCacheBuilders(t *testing.T) {
	sc := newSharedCache(t, "race", stopTemplate)
	ctx, dir, t1, t2, st, remote := context.Background(), sc.Dir, sc.T1, sc.T2, sc.St, sc.Remote
	c1, c2 := planChain(t, t1), planChain(t, t2)
	names := []string{"system", "app"}

	// D and E together.
	waitD := startBuilder(t, dir, "d", t1, remote...)
	waitE := startBuilder(t, dir, "e", t1, remote...)
	d, e := waitD(), waitE()
	raced := false
	for _, r := range []*builderRun{d, e} {
		r.stopped(t)
		for _, line := range strings.Split(r.Log, "\n") {
			if strings.Contains(line, "remote cache:") {
				t.Logf("builder %s: %s", r.Name, line[strings.Index(line, "remote cache:"):])
				raced = raced || strings.Contains(line, "by another builder") || strings.Contains(line, "not uploaded")
			}
		}
	}
	t.Logf("the builders raced on an upload: %v", raced)
	ids := checkRemote(t, st, c1)
	for _, kp := range c1 {
		if ids[kp[0]] != d.localID(t, kp[0]) && ids[kp[0]] != e.localID(t, kp[0]) {
			t.Errorf("the remote's %s is neither d's nor e's build", kp[0][:12])
		}
	}
	// app left the kernel alone: its entry refers to system's boot files
	// instead of copying them, and its object is small.
	if data, err := os.ReadFile(filepath.Join(d.Cache, "stages", c1[1][0], "stage.json")); err != nil || !strings.Contains(string(data), `"boot_from": "`+c1[0][0]+`"`) {
		t.Errorf("app's stage.json (%v):\n%s", err, data)
	}
	if _, err := os.Stat(filepath.Join(d.Cache, "stages", c1[1][0], "boot")); err == nil {
		t.Errorf("app's entry has its own copy of the boot files")
	}
	if objs, _ := st.List(ctx, builder.RemoteObject(c1[1][0])); len(objs) != 1 || objs[0].Size > 8<<20 {
		t.Errorf("app's object: %+v, want one under 8 MiB", objs)
	}

	// F: both stages from the remote.
	f := startBuilder(t, dir, "f", t1, remote...)()
	f.stopped(t)
	f.fromRemote(t, names, c1)

	// R: read only, app changed: system downloaded, app built, nothing
	// written.
	r := startBuilder(t, dir, "r", t2, append(remote, "--cache-remote-mode", "read")...)()
	r.stopped(t)
	r.fromRemote(t, names[:1], c2[:1])
	if !strings.Contains(r.Log, "stage app: building (") || strings.Contains(r.Log, "uploaded") {
		t.Errorf("builder r (read only): app not built, or something uploaded:\n%s", r.Log)
	}
	checkRemote(t, st, c1)

	// A flipped byte in app's object (metadata kept): G reports it,
	// rebuilds app and replaces the object.
	app := c1[1][0]
	tmp := filepath.Join(dir, "object")
	meta, _, err := st.GetMeta(ctx, builder.RemoteObject(app), tmp)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(tmp)
	data[len(data)/2] ^= 0x10
	os.WriteFile(tmp, data, 0o644)
	if err := st.PutMeta(ctx, builder.RemoteObject(app), tmp, int64(len(data)), meta, false); err != nil {
		t.Fatal(err)
	}
	g := startBuilder(t, dir, "g", t1, remote...)()
	g.stopped(t)
	g.fromRemote(t, names[:1], c1[:1])
	if !strings.Contains(g.Log, "object "+builder.RemoteObject(app)+" refused") || !strings.Contains(g.Log, "corrupt or truncated") ||
		!strings.Contains(g.Log, "stage app: building (") || !strings.Contains(g.Log, "remote cache: "+app[:12]+" uploaded (") {
		t.Errorf("builder g: the corrupt object not reported, rebuilt and replaced:\n%s", g.Log)
	}
	if ids := checkRemote(t, st, c1); ids[app] != g.localID(t, app) {
		t.Errorf("the remote's app is not g's rebuild")
	}

	// Unreachable: F again (both stages local) against a closed port.
	h := startBuilder(t, dir, "f", t1, "--cache-remote", "s3://cache/ci", "--cache-remote-endpoint", "http://127.0.0.1:1")()
	h.stopped(t)
	if n := strings.Count(h.Log, "unreachable"); n != 1 {
		t.Errorf("unreachable remote: %d warnings, want 1:\n%s", n, h.Log)
	}
	for i, kp := range c1 {
		if !strings.Contains(h.Log, "stage "+names[i]+": cached ("+kp[0][:12]+")") {
			t.Errorf("unreachable remote: stage %s not from the local cache:\n%s", names[i], h.Log)
		}
	}
}
