package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/release"
	"github.com/ecs-image/ecs-image/testenv"
)

// putStageObject uploads a stage object with stage.json e (and a dummy disk).
func putStageObject(t *testing.T, st *release.S3Target, e builder.StageEntry) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "o.tar")
	f, _ := os.Create(file)
	zw, _ := zstd.NewWriter(f)
	tw := tar.NewWriter(zw)
	data, _ := json.Marshal(e)
	for _, x := range []struct {
		name string
		data []byte
	}{{"stage.json", data}, {"disk.qcow2", []byte("QFI\xfb")}} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: x.name, Mode: 0o644, Size: int64(len(x.data))})
		tw.Write(x.data)
	}
	tw.Close()
	zw.Close()
	f.Close()
	fi, _ := os.Stat(file)
	if err := st.Put(context.Background(), builder.RemoteObject(e.Key), file, "0", fi.Size()); err != nil {
		t.Fatal(err)
	}
}

func resetCacheRemoteFlags(t *testing.T) {
	t.Cleanup(func() {
		for _, c := range []*cobra.Command{cacheLsCmd, cachePruneCmd} {
			for _, n := range []string{"remote", "cache-remote", "cache-remote-endpoint", "keep", "older-than", "all"} {
				if f := c.Flags().Lookup(n); f != nil {
					f.Value.Set(f.DefValue)
					f.Changed = false
				}
			}
		}
	})
}

func TestCacheRemoteLsPrune(t *testing.T) {
	resetCacheRemoteFlags(t)
	endpoint := testenv.VersityGW(t, "cache")
	ctx := context.Background()
	st, err := release.NewS3Target(ctx, "cache", "ci", release.S3Options{Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	k := func(c byte) string { return strings.Repeat(string(c), 32) }
	// Template a: two builds of stage "app" on one "system"; template b: one.
	putStageObject(t, st, builder.StageEntry{Key: k('1'), ID: "i1", Parent: "base:x", Name: "system", Template: "a", BootFrom: k('1')})
	putStageObject(t, st, builder.StageEntry{Key: k('2'), ID: "i2", Parent: k('1'), ParentID: "i1", Name: "app", Template: "a", BootFrom: k('1')})
	time.Sleep(1100 * time.Millisecond) // S3 times have 1 s resolution
	putStageObject(t, st, builder.StageEntry{Key: k('3'), ID: "i3", Parent: k('1'), ParentID: "i1", Name: "app", Template: "a", BootFrom: k('1')})
	putStageObject(t, st, builder.StageEntry{Key: k('4'), ID: "i4", Parent: k('3'), ParentID: "i3", Name: "generalise", Template: "a", BootFrom: k('1')})
	putStageObject(t, st, builder.StageEntry{Key: k('5'), ID: "i5", Parent: "base:y", Name: "system", Template: "b"})
	// Unusable: built on another build of system, no ID (an older
	// ecs-image), its parent gone.
	putStageObject(t, st, builder.StageEntry{Key: k('6'), ID: "i6", Parent: k('1'), ParentID: "other", Name: "web", Template: "c", BootFrom: k('1')})
	putStageObject(t, st, builder.StageEntry{Key: k('7'), Parent: "base:y", Name: "old", Template: "c"})
	putStageObject(t, st, builder.StageEntry{Key: k('8'), ID: "i8", Parent: k('9'), ParentID: "i9", Name: "orphan", Template: "c"})

	url := "s3://cache/ci"
	code, out, errs := runEnvCLI(t, "cache", "ls", "--cache-remote", url, "--cache-remote-endpoint", endpoint)
	if code != 0 || strings.Count(out, "\n") != 9 || !strings.Contains(errs, "8 stages") {
		t.Fatalf("ls (exit %d):\n%s%s", code, out, errs)
	}
	for _, want := range []string{k('1')[:12] + "  a         system", k('5')[:12] + "  b         system"} {
		if !strings.Contains(out, want) {
			t.Errorf("ls: no %q in\n%s", want, out)
		}
	}
	// --remote alone: the env var.
	t.Setenv(cacheRemoteEnv, url)
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	if code, out2, _ := runEnvCLI(t, "cache", "ls", "--remote"); code != 0 || out2 != out {
		t.Fatalf("ls --remote from the env (exit %d):\n%s", code, out2)
	}

	// --keep 1: the older "app" of a goes (nothing is built on it), and
	// the unusable ones.
	code, out, errs = runEnvCLI(t, "cache", "prune", "--remote", "--keep", "1")
	if code != 0 || strings.Count(out, "removed") != 4 {
		t.Fatalf("prune --keep 1 (exit %d):\n%s%s", code, out, errs)
	}
	for _, want := range []string{k('2')[:12] + " (a/app)", k('6')[:12] + " (c/web)", k('7')[:12] + " (c/old)", k('8')[:12] + " (c/orphan)"} {
		if !strings.Contains(out, "removed "+want) {
			t.Errorf("prune --keep 1: no %q in\n%s", want, out)
		}
	}
	// An upload a killed builder left open: kept while young, aborted
	// by --all (as by --older-than once it is older).
	cl, _ := release.NewS3Client(ctx, release.S3Options{Endpoint: endpoint})
	if _, err := cl.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String("cache"), Key: aws.String("ci/" + builder.RemoteObject(k('9')))}); err != nil {
		t.Fatal(err)
	}
	if code, out, _ = runEnvCLI(t, "cache", "prune", "--remote"); code != 0 || strings.Contains(out, "aborted") {
		t.Fatalf("prune (exit %d):\n%s", code, out)
	}
	// --all: everything, children with their parents.
	code, out, _ = runEnvCLI(t, "cache", "prune", "--remote", "--all")
	if code != 0 || strings.Count(out, "removed") != 4 || !strings.Contains(out, "aborted the upload of "+builder.RemoteObject(k('9'))) {
		t.Fatalf("prune --all (exit %d):\n%s", code, out)
	}
	if objs, _ := st.List(ctx, "stages/"); len(objs) != 0 {
		t.Fatalf("left %v", objs)
	}
	if ups, _ := st.ListUploads(ctx, ""); len(ups) != 0 {
		t.Fatalf("uploads left %v", ups)
	}
	// --keep without --remote: exit 2.
	t.Setenv(cacheRemoteEnv, "")
	cacheRemoteFlags.remote, cacheRemoteFlags.url = false, ""
	if code, _, _ := runEnvCLI(t, "cache", "prune", "--keep", "2"); code != exitUsage {
		t.Errorf("--keep without --remote: exit %d", code)
	}
}

func TestPruneRemoteChildren(t *testing.T) {
	now := time.Now()
	e := func(key, parent, name string, age time.Duration) *remoteEntry {
		return &remoteEntry{StageEntry: builder.StageEntry{Key: key, ID: "id-" + key, Parent: parent, ParentID: "id-" + parent, Name: name, Template: "t"}, Object: builder.RemoteObject(key), Uploaded: now.Add(-age)}
	}
	ents := []*remoteEntry{e("c", "b", "three", time.Hour), e("b", "a", "two", time.Hour), e("a", "base:x", "one", 30*24*time.Hour)}
	got := pruneRemote(ents, now.Add(-7*24*time.Hour), 0)
	if len(got) != 3 {
		t.Fatalf("an old parent takes its children: %d removed", len(got))
	}
}

func TestBuildCacheRemoteOptions(t *testing.T) {
	t.Setenv(cacheRemoteEnv, "")
	for _, c := range [][2]string{
		{"s3://bucket/prefix", "sometimes"},
		{"http://bucket/prefix", "read"},
		{"s3:///prefix", "read"},
	} {
		var o builder.Options
		if err := remoteOptions(buildCmd, &o, c[0], c[1], ""); !isBadInput(err) || o.Remote != nil {
			t.Errorf("%v: %v, want bad input", c, err)
		}
	}
	var o builder.Options
	if err := remoteOptions(buildCmd, &o, "", "read", ""); err != nil || o.Remote != nil {
		t.Errorf("no remote: %v %v", err, o.Remote)
	}
	t.Setenv(cacheRemoteEnv, "s3://ci-cache/ecs")
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	if err := remoteOptions(buildCmd, &o, "", "read", "http://127.0.0.1:1"); err != nil || o.Remote == nil || o.RemoteMode != "read" ||
		o.Remote.String() != "s3://ci-cache/ecs" {
		t.Errorf("from the env: %v %v %q", err, o.Remote, o.RemoteMode)
	}
}
