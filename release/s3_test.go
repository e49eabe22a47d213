package release

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/ecs-image/ecs-image/testenv"
)

// versityGW starts a real versitygw with a "releases" bucket (testenv.VersityGW).
func versityGW(t *testing.T) string { return testenv.VersityGW(t, "releases") }

func listKeys(t *testing.T, c *s3.Client, prefix string) []string {
	t.Helper()
	out, err := c.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String("releases"), Prefix: aws.String(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, *o.Key)
	}
	sort.Strings(keys)
	return keys
}

func TestPublishS3RoundTrip(t *testing.T) {
	endpoint := versityGW(t)
	ctx := context.Background()
	dir := releaseDir(t, 80) // 80 MiB: multipart, 5 parts of 16 MiB
	if _, err := Make(ctx, dir, Options{}); err != nil {
		t.Fatal(err)
	}
	o := S3Options{Endpoint: endpoint}
	client, err := NewS3Client(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	tgt, err := OpenTarget(ctx, "s3://releases/ecs/1.0", o)
	if err != nil {
		t.Fatal(err)
	}

	// Interrupted: cancel after the second part of the big file.
	cctx, cancel := context.WithCancel(ctx)
	partHook = func(key string, part int32) {
		if key == "ecs-1.0.raw" && part == 2 {
			cancel()
		}
	}
	_, err = Publish(cctx, dir, tgt, PublishOptions{})
	partHook = nil
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted publish = %v", err)
	}
	for _, k := range listKeys(t, client, "ecs/") {
		if strings.HasSuffix(k, ManifestFile) || strings.HasSuffix(k, ".raw") {
			t.Fatalf("interrupted publish left %s visible", k)
		}
	}
	mu, err := client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String("releases")})
	if err != nil {
		t.Fatal(err)
	}
	if len(mu.Uploads) != 0 {
		t.Fatalf("interrupted publish left %d multipart uploads (not aborted)", len(mu.Uploads))
	}

	// Full run.
	rep, err := Publish(ctx, dir, tgt, PublishOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Uploaded[len(rep.Uploaded)-1] != ManifestFile {
		t.Fatalf("manifest not last: %v", rep.Uploaded)
	}
	want := []string{"ecs/1.0/SHA256SUMS", "ecs/1.0/ecs-1.0.libvirt.box", "ecs/1.0/ecs-1.0.qcow2", "ecs/1.0/ecs-1.0.raw", "ecs/1.0/manifest.json"}
	if got := listKeys(t, client, "ecs/"); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("bucket holds %v, want %v", got, want)
	}
	// Download everything and check it against SHA256SUMS with sha256sum.
	down := t.TempDir()
	for _, k := range want {
		obj, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("releases"), Key: aws.String(k)})
		if err != nil {
			t.Fatal(err)
		}
		f, _ := os.Create(filepath.Join(down, filepath.Base(k)))
		io.Copy(f, obj.Body)
		obj.Body.Close()
		f.Close()
	}
	run(t, down, nil, "sha256sum", "--strict", "-c", SumsFile)

	// Idempotent: nothing uploaded again.
	rep, err = Publish(ctx, dir, tgt, PublishOptions{})
	if err != nil || len(rep.Uploaded) != 0 || len(rep.Skipped) != len(want) {
		t.Fatalf("re-publish %+v %v", rep, err)
	}
}

// TestS3PutMetaIfAbsent: a conditional put (single and multipart) writes
// nothing over an existing object and says so with fs.ErrExist; metadata
// round-trips through Head and GetMeta; open multipart uploads are listed
// and aborted.
func TestS3PutMetaIfAbsent(t *testing.T) {
	endpoint := versityGW(t)
	ctx := context.Background()
	tgt, err := NewS3Target(ctx, "releases", "cache", S3Options{Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, size := range []int64{1 << 10, multipartThreshold + 1<<20} {
		first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
		for i, p := range []string{first, second} {
			data := make([]byte, size)
			data[0] = byte('a' + i)
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		key := "stages/" + strconv.FormatInt(size, 10)
		if err := tgt.PutMeta(ctx, key, first, size, map[string]string{"sha256": "1", "stage-id": "first"}, true); err != nil {
			t.Fatalf("%d bytes: first conditional put: %v", size, err)
		}
		err := tgt.PutMeta(ctx, key, second, size, map[string]string{"sha256": "2", "stage-id": "second"}, true)
		if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("%d bytes: second conditional put = %v, want fs.ErrExist", size, err)
		}
		meta, gotSize, found, err := tgt.Head(ctx, key)
		if err != nil || !found || gotSize != size || meta["stage-id"] != "first" || meta["sha256"] != "1" {
			t.Fatalf("%d bytes: head %v %d %v %v", size, meta, gotSize, found, err)
		}
		out := filepath.Join(dir, "out")
		meta, _, err = tgt.GetMeta(ctx, key, out)
		if data, _ := os.ReadFile(out); err != nil || meta["stage-id"] != "first" || len(data) == 0 || data[0] != 'a' {
			t.Fatalf("%d bytes: the second put changed the object (%v, %v)", size, meta, err)
		}
		// Unconditional: replaced.
		if err := tgt.PutMeta(ctx, key, second, size, map[string]string{"sha256": "2", "stage-id": "second"}, false); err != nil {
			t.Fatal(err)
		}
		if meta, _, _, _ := tgt.Head(ctx, key); meta["stage-id"] != "second" {
			t.Fatalf("%d bytes: not replaced: %v", size, meta)
		}
	}
	if ups, err := tgt.ListUploads(ctx, ""); err != nil || len(ups) != 0 {
		t.Fatalf("uploads %v %v", ups, err)
	}
	client, _ := NewS3Client(ctx, S3Options{Endpoint: endpoint})
	if _, err := client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String("releases"), Key: aws.String("cache/stages/x")}); err != nil {
		t.Fatal(err)
	}
	ups, err := tgt.ListUploads(ctx, "")
	if err != nil || len(ups) != 1 || ups[0].Key != "stages/x" || ups[0].Initiated.IsZero() {
		t.Fatalf("uploads %+v %v", ups, err)
	}
	if err := tgt.AbortUpload(ctx, ups[0]); err != nil {
		t.Fatal(err)
	}
	if ups, err := tgt.ListUploads(ctx, ""); err != nil || len(ups) != 0 {
		t.Fatalf("after abort: uploads %v %v", ups, err)
	}
}
