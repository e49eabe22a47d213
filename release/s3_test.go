package release

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
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
