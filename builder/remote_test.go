package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/klauspost/compress/zstd"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/qemuimg"
	"github.com/ecs-image/ecs-image/release"
	"github.com/ecs-image/ecs-image/testenv"
)

// remoteFixture is a local stage cache with a base disk and a chain of two
// stages (the first with boot/ files), a versitygw bucket and a store on it.
type remoteFixture struct {
	endpoint string
	store    *release.S3Target
	client   *s3.Client
}

func newRemoteFixture(t *testing.T) *remoteFixture {
	t.Helper()
	testenv.Tool(t, "qemu-img", "make deps")
	endpoint := testenv.VersityGW(t, "cache")
	ctx := context.Background()
	o := release.S3Options{Endpoint: endpoint}
	st, err := release.NewS3Target(ctx, "cache", "ecs", o)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := release.NewS3Client(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	return &remoteFixture{endpoint: endpoint, store: st, client: cl}
}

// testCache makes a stage cache with a base disk (returned) in a new dir.
func testCache(t *testing.T) (*StageCache, string, string) {
	t.Helper()
	dir := t.TempDir()
	c := &StageCache{Dir: filepath.Join(dir, "stages")}
	base := filepath.Join(dir, "base.qcow2")
	if _, err := qemuimg.Run(context.Background(), "create", "-q", "-f", "qcow2", base, "64M"); err != nil {
		t.Fatal(err)
	}
	work, err := c.WorkDir()
	if err != nil {
		t.Fatal(err)
	}
	return c, base, work
}

// addStage commits an overlay stage on parentDisk with size bytes of data.
// createOpts are extra qemu-img create options of the disk (-o ...), or
// "random=MiB": that much random data.
func addStage(t *testing.T, c *StageCache, work string, e *StageEntry, parentDisk string, boot bool, createOpts ...string) {
	t.Helper()
	dir, err := os.MkdirTemp(work, "stage-")
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.qcow2")
	if len(createOpts) == 1 && strings.HasPrefix(createOpts[0], "random=") {
		// An overlay of random (incompressible) data.
		n, _ := strconv.Atoi(strings.TrimPrefix(createOpts[0], "random="))
		raw := filepath.Join(dir, "random.raw")
		data := make([]byte, n<<20)
		rand.Read(data)
		os.WriteFile(raw, data, 0o644)
		if _, err := qemuimg.Run(context.Background(), "convert", "-f", "raw", "-O", "qcow2", "-B", parentDisk, "-F", "qcow2", raw, disk); err != nil {
			t.Fatal(err)
		}
		os.Remove(raw)
	} else if _, err := qemuimg.Run(context.Background(), append(append([]string{"create", "-q", "-f", "qcow2"}, createOpts...), "-b", parentDisk, "-F", "qcow2", disk)...); err != nil {
		t.Fatal(err)
	}
	if boot {
		os.Mkdir(filepath.Join(dir, "boot"), 0o755)
		os.WriteFile(filepath.Join(dir, "boot", "vmlinuz"), []byte("kernel "+e.Key), 0o644)
		os.WriteFile(filepath.Join(dir, "boot", "initrd.img"), []byte("initrd"), 0o644)
	}
	e.Backing = parentDisk
	e.Created = time.Now().UTC()
	if err := c.Commit(dir, e); err != nil {
		t.Fatal(err)
	}
}

const (
	keyBase = "base:00112233445566778899aabbccddeeff"
	keyS1   = "11111111111111111111111111111111"
	keyS2   = "22222222222222222222222222222222"
)

// chainA is a cache holding base → s1 (booted, boot/) → s2 (offline).
func chainA(t *testing.T) (*StageCache, string) {
	c, base, work := testCache(t)
	addStage(t, c, work, &StageEntry{Key: keyS1, Parent: keyBase, Name: "s1", Template: "t", Mode: template.ModeBoot, BootFrom: keyS1}, base, true)
	addStage(t, c, work, &StageEntry{Key: keyS2, Parent: keyS1, ParentID: c.Lookup(keyS1).ID, Name: "s2", Template: "t", BootFrom: keyS1}, c.Disk(keyS1), false)
	return c, work
}

// uploadedChainA is chainA with keys pushed to f's store: another
// builder's upload.
func (f *remoteFixture) uploadedChainA(t *testing.T, keys ...string) (*StageCache, string) {
	t.Helper()
	c, work := chainA(t)
	r, _ := testRemote(f.store, RemoteReadWrite)
	for _, k := range keys {
		r.push(context.Background(), c, work, k)
	}
	return c, work
}

// idOf is the ID of key's entry in c.
func idOf(t *testing.T, c *StageCache, key string) string {
	t.Helper()
	e := c.Lookup(key)
	if e == nil || e.ID == "" {
		t.Fatalf("%s: no entry or no ID: %+v", key, e)
	}
	return e.ID
}

func testRemote(store RemoteStore, mode string) (*remoteCache, *logtest.Hook) {
	log, hook := logtest.NewNullLogger()
	return newRemoteCache(store, mode, log), hook
}

func warnings(h *logtest.Hook) []string {
	var out []string
	for _, e := range h.AllEntries() {
		if e.Level == logrus.WarnLevel {
			out = append(out, e.Message)
		}
	}
	return out
}

func backingOf(t *testing.T, disk string) string {
	t.Helper()
	out, err := qemuimg.Run(context.Background(), "info", "--output=json", "-U", disk)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	json.Unmarshal(out, &info)
	return info.Backing
}

func TestRemoteCacheRoundTrip(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	a, _ := f.uploadedChainA(t, keyS1, keyS2)
	for _, k := range []string{keyS1, keyS2} {
		sum, _, ok, err := f.store.Digest(ctx, RemoteObject(k))
		if err != nil || !ok || len(sum) != 64 {
			t.Fatalf("object of %s: %q %v %v", k, sum, ok, err)
		}
	}

	// Builder B: empty cache, its own base at another path.
	b, baseB, workB := testCache(t)
	rb, hook := testRemote(f.store, RemoteRead)
	e1 := rb.fetch(ctx, b, workB, keyS1, keyBase, "", baseB, "qcow2")
	if e1 == nil {
		t.Fatalf("s1 not fetched: %v", warnings(hook))
	}
	if got := backingOf(t, b.Disk(keyS1)); got != baseB {
		t.Fatalf("s1 backing %q, want %q", got, baseB)
	}
	if data, _ := os.ReadFile(filepath.Join(b.BootDir(keyS1), "vmlinuz")); string(data) != "kernel "+keyS1 {
		t.Fatalf("boot/vmlinuz = %q", data)
	}
	if e1.ID != idOf(t, a, keyS1) {
		t.Fatalf("downloaded s1 has ID %q, the uploader's is %q", e1.ID, idOf(t, a, keyS1))
	}
	// Wrong parent: refused (the chain must match).
	if e := rb.fetch(ctx, b, workB, keyS2, keyBase, "", b.Disk(keyS1), "qcow2"); e != nil {
		t.Fatal("s2 accepted with the wrong parent key")
	}
	if w := warnings(hook); len(w) != 1 || !strings.Contains(w[0], "chain broken") {
		t.Fatalf("warnings %v", w)
	}
	e2 := rb.fetch(ctx, b, workB, keyS2, keyS1, e1.ID, b.Disk(keyS1), "qcow2")
	if e2 == nil || e2.BootFrom != keyS1 || e2.ParentID != e1.ID {
		t.Fatalf("s2 fetched: %+v", e2)
	}
	if got := backingOf(t, b.Disk(keyS2)); got != b.Disk(keyS1) {
		t.Fatalf("s2 backing %q", got)
	}
	if _, err := qemuimg.Run(ctx, "check", "-q", b.Disk(keyS2)); err != nil {
		t.Fatal(err)
	}
	// Read mode never writes; a miss is nil without a warning.
	n := len(warnings(hook))
	rb.push(ctx, b, workB, keyS2)
	if e := rb.fetch(ctx, b, workB, "33333333333333333333333333333333", keyS2, e2.ID, b.Disk(keyS2), "qcow2"); e != nil || len(warnings(hook)) != n {
		t.Fatalf("miss: %v %v", e, warnings(hook))
	}
}

// corrupt replaces the object of key by bad content that keeps its old
// sha256 metadata.
func corrupt(t *testing.T, f *remoteFixture, key string, mangle func([]byte) []byte) {
	t.Helper()
	ctx := context.Background()
	tmp := filepath.Join(t.TempDir(), "obj")
	meta, found, err := f.store.GetMeta(ctx, RemoteObject(key), tmp)
	if err != nil || !found {
		t.Fatal(found, err)
	}
	data, _ := os.ReadFile(tmp)
	data = mangle(data)
	os.WriteFile(tmp, data, 0o644)
	if err := f.store.PutMeta(ctx, RemoteObject(key), tmp, int64(len(data)), meta, false); err != nil {
		t.Fatal(err)
	}
}

func TestRemoteCacheCorruptObjectRebuiltAndReplaced(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.uploadedChainA(t, keyS1)
	good, _, _, _ := f.store.Digest(ctx, RemoteObject(keyS1))

	for name, mangle := range map[string]func([]byte) []byte{
		"flipped byte": func(d []byte) []byte { d[len(d)/2] ^= 0x40; return d },
		"truncated":    func(d []byte) []byte { return d[:len(d)/3] },
	} {
		t.Run(name, func(t *testing.T) {
			corrupt(t, f, keyS1, mangle)
			b, baseB, workB := testCache(t)
			rb, hook := testRemote(f.store, RemoteReadWrite)
			if e := rb.fetch(ctx, b, workB, keyS1, keyBase, "", baseB, "qcow2"); e != nil {
				t.Fatal("corrupt object used")
			}
			if w := warnings(hook); len(w) != 1 || !strings.Contains(w[0], "corrupt or truncated") {
				t.Fatalf("warnings %v", w)
			}
			if b.Lookup(keyS1) != nil {
				t.Fatal("corrupt object reached the local cache")
			}
			// "Rebuilt": B now has the stage and uploads it over the bad one.
			addStage(t, b, workB, &StageEntry{Key: keyS1, Parent: keyBase, Name: "s1", BootFrom: keyS1}, baseB, true)
			rb.push(ctx, b, workB, keyS1)
			c, baseC, workC := testCache(t)
			rc, hook := testRemote(f.store, RemoteRead)
			if e := rc.fetch(ctx, c, workC, keyS1, keyBase, "", baseC, "qcow2"); e == nil || e.ID != idOf(t, b, keyS1) {
				t.Fatalf("replaced object not usable or not B's: %+v %v", e, warnings(hook))
			}
			if sum, _, _, _ := f.store.Digest(ctx, RemoteObject(keyS1)); sum == good {
				t.Log("same digest as the first upload (deterministic tar)")
			}
		})
	}
}

// TestRemoteCacheConcurrentUploadsLeaveOneGoodObject: two builders with
// their own builds of s1 → s2 upload both at once. Each key ends up as one
// whole object (digest right, usable), and the chain stays whole: the
// remote's s2 was built on the remote's s1 (the builder whose s1 lost the
// race does not upload its s2).
func TestRemoteCacheConcurrentUploadsLeaveOneGoodObject(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	a, workA := chainA(t)
	b, workB := chainA(t)
	ra, ha := testRemote(f.store, RemoteWrite)
	rb, hb := testRemote(f.store, RemoteWrite)
	var wg sync.WaitGroup
	for _, x := range []struct {
		r    *remoteCache
		c    *StageCache
		work string
	}{{ra, a, workA}, {rb, b, workB}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x.r.push(ctx, x.c, x.work, keyS1)
			x.r.push(ctx, x.c, x.work, keyS2)
		}()
	}
	wg.Wait()
	if w := append(warnings(ha), warnings(hb)...); len(w) != 0 {
		t.Fatalf("warnings %v", w)
	}
	out, err := f.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("cache"), Prefix: aws.String("ecs/")})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Contents) != 2 {
		t.Fatalf("bucket holds %d objects, want 2", len(out.Contents))
	}
	ids := map[string]string{}
	for _, k := range []string{keyS1, keyS2} {
		tmp := filepath.Join(t.TempDir(), "obj")
		meta, _, err := f.store.GetMeta(ctx, RemoteObject(k), tmp)
		if err != nil {
			t.Fatal(err)
		}
		if got, _, _ := hashFile(tmp); got != meta[metaSHA256] {
			t.Fatalf("%s: object sha256 %s, metadata %s", k, got, meta[metaSHA256])
		}
		ids[k] = meta[metaID]
		if k == keyS2 && meta[metaParentID] != ids[keyS1] {
			t.Fatalf("the remote's s2 was built on s1 build %s, the remote's s1 is %s", meta[metaParentID], ids[keyS1])
		}
	}
	if ids[keyS1] != idOf(t, a, keyS1) && ids[keyS1] != idOf(t, b, keyS1) {
		t.Fatalf("s1 object is neither builder's")
	}
	c, baseC, workC := testCache(t)
	rc, hook := testRemote(f.store, RemoteRead)
	e1 := rc.fetch(ctx, c, workC, keyS1, keyBase, "", baseC, "qcow2")
	if e1 == nil {
		t.Fatalf("raced object not usable: %v", warnings(hook))
	}
	if rc.fetch(ctx, c, workC, keyS2, keyS1, e1.ID, c.Disk(keyS1), "qcow2") == nil {
		t.Fatalf("raced s2 not usable on the remote's s1: %v", warnings(hook))
	}
}

// TestRemoteCacheOverlayOnlyOnItsOwnParent: a builder whose local s1 is
// its own build does not take another builder's s2 (an overlay written on
// another disk), nor uploads its own s2 over a remote chain it is not part
// of; a builder on the remote's s1 does take it. An object whose parent
// object was replaced is refused and replaced by the rebuilt stage.
func TestRemoteCacheOverlayOnlyOnItsOwnParent(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	y, _ := f.uploadedChainA(t, keyS1, keyS2)

	// X built s1 itself (before the remote was there).
	x, baseX, workX := testCache(t)
	addStage(t, x, workX, &StageEntry{Key: keyS1, Parent: keyBase, Name: "s1", BootFrom: keyS1}, baseX, true)
	rx, hook := testRemote(f.store, RemoteReadWrite)
	rx.push(ctx, x, workX, keyS1) // a local hit: the remote has s1 (Y's)
	if e := rx.fetch(ctx, x, workX, keyS2, keyS1, idOf(t, x, keyS1), x.Disk(keyS1), "qcow2"); e != nil {
		t.Fatal("Y's s2 used on X's own build of s1")
	}
	if w := warnings(hook); len(w) != 0 {
		t.Fatalf("warnings %v (a stage on another parent build is no fault)", w)
	}
	// X builds s2 on its s1: not uploaded over Y's chain.
	addStage(t, x, workX, &StageEntry{Key: keyS2, Parent: keyS1, ParentID: idOf(t, x, keyS1), Name: "s2", BootFrom: keyS1}, x.Disk(keyS1), false)
	rx.push(ctx, x, workX, keyS2)
	if meta, _, _, _ := f.store.Head(ctx, RemoteObject(keyS2)); meta[metaID] != idOf(t, y, keyS2) {
		t.Fatalf("remote s2 is %s, want Y's %s", meta[metaID], idOf(t, y, keyS2))
	}

	// s1 is replaced on the remote by Z's build (as after a corrupt
	// object): Y's s2 is stale there. Z refuses it and replaces it.
	z, baseZ, workZ := testCache(t)
	addStage(t, z, workZ, &StageEntry{Key: keyS1, Parent: keyBase, Name: "s1", BootFrom: keyS1}, baseZ, true)
	rz, hook := testRemote(f.store, RemoteReadWrite)
	rz.bad[keyS1] = true
	rz.push(ctx, z, workZ, keyS1)
	if e := rz.fetch(ctx, z, workZ, keyS2, keyS1, idOf(t, z, keyS1), z.Disk(keyS1), "qcow2"); e != nil {
		t.Fatal("stale s2 used")
	}
	if w := warnings(hook); len(w) != 1 || !strings.Contains(w[0], "no longer in the remote") {
		t.Fatalf("warnings %v", w)
	}
	addStage(t, z, workZ, &StageEntry{Key: keyS2, Parent: keyS1, ParentID: idOf(t, z, keyS1), Name: "s2", BootFrom: keyS1}, z.Disk(keyS1), false)
	rz.push(ctx, z, workZ, keyS2)
	if meta, _, _, _ := f.store.Head(ctx, RemoteObject(keyS2)); meta[metaID] != idOf(t, z, keyS2) || meta[metaParentID] != idOf(t, z, keyS1) {
		t.Fatalf("remote s2 %v, want Z's on Z's s1", meta)
	}
}

// TestLookupMigratesAndChecksParentBuild: a local entry of an older
// ecs-image (no IDs) gets them on use; a local entry built on another build
// of its parent (whose entry was replaced) is removed.
func TestLookupMigratesAndChecksParentBuild(t *testing.T) {
	testenv.Tool(t, "qemu-img", "make deps")
	c, base, work := testCache(t)
	addStage(t, c, work, &StageEntry{Key: keyS1, Parent: keyBase, Name: "s1", BootFrom: keyS1}, base, true)
	addStage(t, c, work, &StageEntry{Key: keyS2, Parent: keyS1, Name: "s2", BootFrom: keyS1}, c.Disk(keyS1), false)
	// As an older ecs-image wrote them: no IDs.
	for _, k := range []string{keyS1, keyS2} {
		e := c.Lookup(k)
		e.ID, e.ParentID = "", ""
		data, _ := json.Marshal(e)
		os.WriteFile(filepath.Join(c.Path(k), "stage.json"), data, 0o644)
	}
	log, _ := logtest.NewNullLogger()
	b := &buildState{cache: c, log: log, work: work, parentKey: keyBase, parentDisk: base, fetchedBase: fetchedBase{base: &images.Base{Path: base, Format: "qcow2"}}}
	e1, _ := b.lookup(context.Background(), keyS1, keyBase)
	if e1 == nil || e1.ID == "" || idOf(t, c, keyS1) != e1.ID {
		t.Fatalf("s1 not given an ID: %+v", e1)
	}
	(&stepStages{}).advance(b, keyS1, keyS1)
	e2, _ := b.lookup(context.Background(), keyS2, keyS1)
	if e2 == nil || e2.ParentID != e1.ID || c.Lookup(keyS2).ParentID != e1.ID {
		t.Fatalf("s2 not given its parent's ID: %+v", e2)
	}
	// s2 now names another build of s1 than the local one.
	b.parentID = "another"
	if e, _ := b.lookup(context.Background(), keyS2, keyS1); e != nil || c.Lookup(keyS2) != nil {
		t.Fatal("an entry built on another build of its parent was used")
	}
}

func TestRemoteCacheUnreachableWarnsOnce(t *testing.T) {
	testenv.Tool(t, "qemu-img", "make deps")
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	ctx := context.Background()
	st, err := release.NewS3Target(ctx, "cache", "", release.S3Options{Endpoint: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	a, workA := chainA(t)
	r, hook := testRemote(st, RemoteReadWrite)
	if r.fetch(ctx, a, workA, "33333333333333333333333333333333", keyS2, idOf(t, a, keyS2), a.Disk(keyS2), "qcow2") != nil {
		t.Fatal("hit on an unreachable store")
	}
	r.push(ctx, a, workA, keyS1)
	r.fetch(ctx, a, workA, "44444444444444444444444444444444", keyS2, idOf(t, a, keyS2), a.Disk(keyS2), "qcow2")
	if w := warnings(hook); len(w) != 1 || !strings.Contains(w[0], "unreachable") {
		t.Fatalf("warnings %v", w)
	}
}

func TestUntarStageRefusesOtherEntries(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"../x", "boot/../../x", "etc/passwd", "boot/a/b"} {
		var obj bytes.Buffer
		writeTar(t, &obj, name)
		if err := untarStage(&obj, filepath.Join(dir, "out-"+strings.ReplaceAll(name, "/", "_"))); err == nil {
			t.Errorf("%q accepted", name)
		}
	}
}

func writeTar(t *testing.T, w io.Writer, name string) {
	zw, _ := zstd.NewWriter(w)
	defer zw.Close()
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: 1}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte("x"))
	tw.Close()
}

// cancelOnMultipart is a store whose Put is cancelled as soon as the server
// holds an open multipart upload (parts are then in flight).
type cancelOnMultipart struct {
	*release.S3Target
	client *s3.Client
}

func (c cancelOnMultipart) PutMeta(ctx context.Context, key, file string, size int64, meta map[string]string, ifAbsent bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			out, err := c.client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String("cache")})
			if err == nil && len(out.Uploads) > 0 {
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return c.S3Target.PutMeta(ctx, key, file, size, meta, ifAbsent)
}

func TestRemoteCacheInterruptedUploadLeavesNoObject(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	a, base, work := testCache(t)
	// 64 MiB of random data: multipart (5 parts of 16 MiB).
	addStage(t, a, work, &StageEntry{Key: keyS1, Parent: keyBase, Name: "s1", BootFrom: keyS1}, base, true, "random=64")
	r, hook := testRemote(cancelOnMultipart{f.store, f.client}, RemoteWrite)
	r.push(ctx, a, work, keyS1)
	if w := warnings(hook); len(w) != 1 || !strings.Contains(w[0], "uploading") {
		t.Fatalf("interrupted upload: warnings %v", w)
	}
	if _, _, ok, err := f.store.Digest(ctx, RemoteObject(keyS1)); ok || err != nil {
		t.Fatalf("interrupted upload left an object (%v)", err)
	}
	mu, err := f.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String("cache")})
	if err != nil || len(mu.Uploads) != 0 {
		t.Fatalf("interrupted upload left %d multipart uploads (%v)", len(mu.Uploads), err)
	}
	// The next build uploads it.
	r2, hook := testRemote(f.store, RemoteReadWrite)
	r2.push(ctx, a, work, keyS1)
	b, baseB, workB := testCache(t)
	if r2.fetch(ctx, b, workB, keyS1, keyBase, "", baseB, "qcow2") == nil {
		t.Fatalf("re-uploaded object not usable: %v", warnings(hook))
	}
}

const remoteBuildTemplate = `
name: remotetest
base:
  file: base.qcow2
disk_size: 2G
outputs: [qcow2]
stages:
  - name: system
    mode: boot
    provisioners:
      - type: shell
        inline: ["echo system"]
  - name: app
    mode: boot
    provisioners:
      - type: shell
        inline: ["echo app"]
`

// TestBuildFromRemoteCacheOnly: builder B, with an empty local cache, builds
// a template whose every stage (and generalised disk) builder A uploaded:
// nothing is built (no VM runs), every entry is downloaded, verified and
// committed locally, and the artifact is made from them. A's entries are
// made here with the build's own keys (PlanJobs), as a real build would
// commit them.
func TestBuildFromRemoteCacheOnly(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	// Planned as builder B builds it: without QEMU's tools on PATH it
	// cannot chroot, so its generalisation's key is the helper's.
	p := newPlannedBuild(t, remoteBuildTemplate, "2G", true)
	b0, job, dir := p.Base, p.Job, p.Dir

	// Builder A's cache, uploaded.
	a, _, workA := testCache(t)
	parentDisk, parentID := b0.Path, ""
	for _, s := range job.Stages {
		addStage(t, a, workA, &StageEntry{Key: s.Key, Parent: s.Parent, ParentID: parentID, Name: s.Name, Template: "remotetest", Mode: template.ModeBoot, BootFrom: s.Key}, parentDisk, true)
		parentDisk, parentID = a.Disk(s.Key), idOf(t, a, s.Key)
	}
	last := job.Stages[len(job.Stages)-1]
	addStage(t, a, workA, &StageEntry{Key: job.GeneraliseKey, Parent: last.Key, ParentID: parentID, Name: "generalise", Template: "remotetest", BootFrom: last.Key, Packages: []string{"base-files"}}, parentDisk, false)
	ra, _ := testRemote(f.store, RemoteWrite)
	for _, s := range job.Stages {
		ra.push(ctx, a, workA, s.Key)
	}
	ra.push(ctx, a, workA, job.GeneraliseKey)

	// Builder B, with qemu-img but no QEMU on PATH: a stage it would build
	// fails at once instead of booting.
	bc := &StageCache{Dir: filepath.Join(dir, "b-stages")}
	art, all, err := p.buildWithoutQEMU(t, Options{OutputDir: filepath.Join(dir, "out"), Cache: bc, Remote: f.store, RemoteMode: RemoteRead})
	if err != nil {
		t.Fatalf("build from the remote: %v\n%s", err, all)
	}
	if strings.Contains(all, ": building (") {
		t.Fatalf("a stage was built:\n%s", all)
	}
	for _, k := range append([]string{job.GeneraliseKey}, job.Stages[0].Key, job.Stages[1].Key) {
		if !strings.Contains(all, "remote cache: "+k[:12]+" downloaded and verified") {
			t.Errorf("%s not downloaded:\n%s", k[:12], all)
		}
		if bc.Lookup(k) == nil {
			t.Errorf("%s not in B's local cache", k[:12])
		}
	}
	for _, st := range append(art.Manifest.Stages, art.Manifest.Generalise) {
		if !st.Cached || !st.Remote {
			t.Errorf("manifest: %+v, want cached and remote", st)
		}
	}
	if got := backingOf(t, bc.Disk(job.Stages[0].Key)); got != b0.Path {
		t.Errorf("first stage backing %q, want B's base %q", got, b0.Path)
	}
	if _, err := qemuimg.Inspect(ctx, art.Files[0].Path, qemuimg.Policy{Formats: []string{"qcow2"}}); err != nil {
		t.Errorf("artifact: %v", err)
	}

	// B again, all local now, in readwrite mode on an empty prefix: its
	// local hits are uploaded there; in read mode nothing is.
	for _, mode := range []string{RemoteRead, RemoteReadWrite} {
		st2, err := release.NewS3Target(ctx, "cache", "second-"+mode, release.S3Options{Endpoint: f.endpoint})
		if err != nil {
			t.Fatal(err)
		}
		if _, all, err := p.buildWithoutQEMU(t, Options{OutputDir: filepath.Join(dir, "out-"+mode), Cache: bc, Remote: st2, RemoteMode: mode}); err != nil {
			t.Fatalf("%s: %v\n%s", mode, err, all)
		}
		objs, err := st2.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		if mode == RemoteReadWrite {
			want = 3
		}
		if len(objs) != want {
			t.Errorf("%s: %d objects uploaded, want %d", mode, len(objs), want)
		}
	}
}

// BenchmarkRemoteCacheTransfer pushes and fetches a 512 MiB stage (half
// random, half zeros; the rate counts the disk file's size) through
// versitygw and reports both rates (MB/s); pack/hash/unpack/inspect are in
// them.
func BenchmarkRemoteCacheTransfer(b *testing.B) {
	for i := 0; i < b.N; i++ {
		benchTransfer(b)
	}
}

func benchTransfer(b *testing.B) {
	b.StopTimer()
	endpoint := testenv.VersityGW(b, "cache")
	ctx := context.Background()
	st, err := release.NewS3Target(ctx, "cache", "bench", release.S3Options{Endpoint: endpoint})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	a := &StageCache{Dir: filepath.Join(dir, "a")}
	base := filepath.Join(dir, "base.qcow2")
	qemuimg.Run(ctx, "create", "-q", "-f", "qcow2", base, "1G")
	work, _ := a.WorkDir()
	sdir, _ := os.MkdirTemp(work, "s")
	disk := filepath.Join(sdir, "disk.qcow2")
	raw := filepath.Join(dir, "data.raw")
	// Half random (incompressible), half zeros.
	data := make([]byte, 512<<20)
	rand.Read(data[:256<<20])
	os.WriteFile(raw, data, 0o644)
	if _, err := qemuimg.Run(ctx, "convert", "-f", "raw", "-O", "qcow2", "-B", base, "-F", "qcow2", raw, disk); err != nil {
		b.Fatal(err)
	}
	os.Remove(raw)
	if err := a.Commit(sdir, &StageEntry{Key: keyS1, Parent: keyBase, Name: "s1", Backing: base}); err != nil {
		b.Fatal(err)
	}
	fi, _ := os.Stat(a.Disk(keyS1))
	mb := float64(fi.Size()) / 1e6
	log, hook := logtest.NewNullLogger()
	r := newRemoteCache(st, RemoteReadWrite, log)
	b.StartTimer()
	start := time.Now()
	r.push(ctx, a, work, keyS1)
	up := time.Since(start)
	c := &StageCache{Dir: filepath.Join(dir, "c")}
	cwork, _ := c.WorkDir()
	start = time.Now()
	if r.fetch(ctx, c, cwork, keyS1, keyBase, "", base, "qcow2") == nil {
		b.Fatalf("fetch: %v", hook.AllEntries())
	}
	down := time.Since(start)
	b.ReportMetric(mb/up.Seconds(), "upMB/s")
	b.ReportMetric(mb/down.Seconds(), "downMB/s")
}

// brokenStream is a store whose downloads fail after a few bytes (the
// connection lost mid-object).
type brokenStream struct{ *release.S3Target }

type brokenBody struct {
	io.ReadCloser
	left int
}

func (b *brokenBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= n
	return n, err
}

func (s brokenStream) Open(ctx context.Context, key string) (io.ReadCloser, map[string]string, bool, error) {
	body, meta, found, err := s.S3Target.Open(ctx, key)
	if err != nil || !found {
		return body, meta, found, err
	}
	return &brokenBody{ReadCloser: body, left: 64}, meta, true, nil
}

// TestRemoteCacheDownloadCutIsNoFault: a download cut mid-object is the
// remote failing (one warning, the remote not asked again), not a corrupt
// object to replace; nothing reaches the cache.
func TestRemoteCacheDownloadCutIsNoFault(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	a, workA := chainA(t)
	ra, _ := testRemote(f.store, RemoteWrite)
	ra.push(ctx, a, workA, keyS1)
	b, baseB, workB := testCache(t)
	rb, hook := testRemote(brokenStream{f.store}, RemoteReadWrite)
	if rb.fetch(ctx, b, workB, keyS1, keyBase, "", baseB, "qcow2") != nil || b.Lookup(keyS1) != nil {
		t.Fatal("a cut download was used")
	}
	if w := warnings(hook); len(w) != 1 || !strings.Contains(w[0], "unreachable") || !strings.Contains(w[0], "connection reset") {
		t.Fatalf("warnings %v", w)
	}
	if rb.bad[keyS1] || !rb.down {
		t.Fatalf("bad %v down %v", rb.bad, rb.down)
	}
}
