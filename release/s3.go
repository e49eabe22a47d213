package release

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/ecs-image/ecs-image/progress"
)

// Multipart upload tuning.
const (
	multipartThreshold = 64 << 20 // files at least this large go multipart
	minPartSize        = 16 << 20
	maxParts           = 10000
	partConcurrency    = 4
)

// digestMeta is the user metadata key holding an object's SHA-256
// (x-amz-meta-sha256): S3's ETag is no content digest for multipart uploads.
const digestMeta = "sha256"

// partHook, when set (tests), runs after each uploaded part.
var partHook func(key string, part int32)

// S3Target publishes under s3://bucket/prefix.
type S3Target struct {
	client *s3.Client
	bucket string
	prefix string
}

// NewS3Target connects to bucket with the default AWS credential chain
// (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, shared config, ...).
func NewS3Target(ctx context.Context, bucket, prefix string, o S3Options) (*S3Target, error) {
	client, err := NewS3Client(ctx, o)
	if err != nil {
		return nil, err
	}
	return &S3Target{client: client, bucket: bucket, prefix: prefix}, nil
}

// NewS3Client builds an S3 client; a custom endpoint uses path-style
// addressing (S3-compatible servers such as versitygw or MinIO).
func NewS3Client(ctx context.Context, o S3Options) (*s3.Client, error) {
	var lo []func(*config.LoadOptions) error
	if o.Region != "" {
		lo = append(lo, config.WithRegion(o.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, lo...)
	if err != nil {
		return nil, fmt.Errorf("AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	return s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
			so.UsePathStyle = true
		}
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}

func (t *S3Target) key(k string) string {
	if t.prefix == "" {
		return k
	}
	return path.Join(t.prefix, k)
}

func (t *S3Target) String() string { return "s3://" + path.Join(t.bucket, t.prefix) }

// Digest reads the sha256 metadata of the object at key.
func (t *S3Target) Digest(ctx context.Context, key string) (string, int64, bool, error) {
	meta, size, found, err := t.Head(ctx, key)
	sum, ok := meta[digestMeta]
	return sum, size, found && ok, err
}

// Head returns the user metadata (x-amz-meta-*, lower-case names; "sha256"
// is the digest Put records) and size of the object at key; found is false
// when there is none.
func (t *S3Target) Head(ctx context.Context, key string) (meta map[string]string, size int64, found bool, err error) {
	out, err := t.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &t.bucket, Key: aws.String(t.key(key))})
	if isNotFound(err) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("%s: %w", t.key(key), err)
	}
	return out.Metadata, aws.ToInt64(out.ContentLength), true, nil
}

// isExists tells whether err is a conditional write refused because the
// object exists (412 Precondition Failed) or is being written by a
// concurrent conditional request (409 ConditionalRequestConflict).
func isExists(err error) bool {
	var re *awshttp.ResponseError
	if errors.As(err, &re) && (re.HTTPStatusCode() == http.StatusPreconditionFailed || re.HTTPStatusCode() == http.StatusConflict) {
		return true
	}
	var ae smithy.APIError
	return errors.As(err, &ae) && (ae.ErrorCode() == "PreconditionFailed" || ae.ErrorCode() == "ConditionalRequestConflict")
}

func isNotFound(err error) bool {
	if err == nil {
		return false
	}
	var nf *types.NotFound
	var nk *types.NoSuchKey
	if errors.As(err, &nf) || errors.As(err, &nk) {
		return true
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
		return true
	}
	var ae smithy.APIError
	return errors.As(err, &ae) && (ae.ErrorCode() == "NotFound" || ae.ErrorCode() == "NoSuchKey")
}

// abortAll aborts every open multipart upload of key and checks that none
// is left: a part that was in flight when the upload was cancelled can reach
// the server after the abort and re-create the upload there, and a cancelled
// CreateMultipartUpload may have created one whose id never reached us (both
// seen with versitygw). It retries for a few seconds at most.
func (t *S3Target) abortAll(ctx context.Context, key *string) {
	for i := 0; i < 10; i++ {
		out, err := t.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &t.bucket, Prefix: key})
		if err != nil {
			return
		}
		open := 0
		for _, u := range out.Uploads {
			if aws.ToString(u.Key) != aws.ToString(key) {
				continue
			}
			open++
			_, _ = t.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &t.bucket, Key: key, UploadId: u.UploadId})
		}
		if open == 0 {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// Put uploads file, multipart when large; a failed or cancelled multipart
// upload is aborted so no partial object or stray parts remain.
func (t *S3Target) Put(ctx context.Context, key, file, sum string, size int64) error {
	return t.PutMeta(ctx, key, file, size, map[string]string{digestMeta: sum}, false)
}

// PutMeta is Put with the object's whole user metadata (meta holds
// "sha256" too). ifAbsent makes it a conditional write (If-None-Match: *
// on the PUT or on completing the multipart upload): when the object
// already exists, or another conditional write of it is under way, nothing
// is written and the error wraps fs.ErrExist. A server that ignores the
// condition overwrites (last completed upload wins).
func (t *S3Target) PutMeta(ctx context.Context, key, file string, size int64, meta map[string]string, ifAbsent bool) error {
	err := t.putMeta(ctx, key, file, size, meta, ifAbsent)
	if ifAbsent && isExists(err) {
		return fmt.Errorf("%s: %w (%v)", t.key(key), fs.ErrExist, err)
	}
	return err
}

func (t *S3Target) putMeta(ctx context.Context, key, file string, size int64, meta map[string]string, ifAbsent bool) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := progress.New("upload "+key, size)
	defer tr.Done()
	var ifNoneMatch *string
	if ifAbsent {
		ifNoneMatch = aws.String("*")
	}
	k := aws.String(t.key(key))
	if size < multipartThreshold {
		_, err := t.client.PutObject(ctx, &s3.PutObjectInput{Bucket: &t.bucket, Key: k, Body: io.NewSectionReader(f, 0, size),
			ContentLength: aws.Int64(size), Metadata: meta, IfNoneMatch: ifNoneMatch})
		if err == nil {
			tr.Add(size)
		}
		return err
	}
	partSize := int64(minPartSize)
	if need := (size + maxParts - 1) / maxParts; need > partSize {
		partSize = (need + 1<<20 - 1) / (1 << 20) * (1 << 20)
	}
	cr, err := t.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &t.bucket, Key: k, Metadata: meta})
	if err != nil {
		t.abortAll(context.WithoutCancel(ctx), k)
		return err
	}
	completed := false
	defer func() {
		if !completed {
			// Abort even when ctx is cancelled.
			t.abortAll(context.WithoutCancel(ctx), k)
		}
	}()

	nparts := int32((size + partSize - 1) / partSize)
	parts := make([]types.CompletedPart, 0, nparts)
	var mu sync.Mutex
	var firstErr error
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, partConcurrency)
	var wg sync.WaitGroup
	for n := int32(1); n <= nparts; n++ {
		select {
		case sem <- struct{}{}:
		case <-pctx.Done():
		}
		if pctx.Err() != nil {
			break
		}
		off := int64(n-1) * partSize
		length := min(partSize, size-off)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out, err := t.client.UploadPart(pctx, &s3.UploadPartInput{Bucket: &t.bucket, Key: k, UploadId: cr.UploadId,
				PartNumber: aws.Int32(n), Body: io.NewSectionReader(f, off, length), ContentLength: aws.Int64(length)})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("part %d: %w", n, err)
				}
				cancel()
				return
			}
			parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n)})
			tr.Add(length)
			if partHook != nil {
				partHook(key, n)
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	if firstErr != nil {
		return firstErr
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	if _, err := t.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &t.bucket, Key: k, UploadId: cr.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}, IfNoneMatch: ifNoneMatch}); err != nil {
		return err
	}
	completed = true
	return nil
}

// Delete removes key.
func (t *S3Target) Delete(ctx context.Context, key string) error {
	_, err := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &t.bucket, Key: aws.String(t.key(key))})
	if isNotFound(err) {
		return nil
	}
	return err
}

// Get downloads key into file (created or truncated) and returns the
// object's sha256 metadata ("" when it has none); found is false when there
// is no such object. The caller verifies the digest.
func (t *S3Target) Get(ctx context.Context, key, file string) (sum string, found bool, err error) {
	meta, found, err := t.GetMeta(ctx, key, file)
	return meta[digestMeta], found, err
}

// Open starts downloading key: its content (to be closed) and user
// metadata; found is false when there is no such object. The caller
// verifies the digest.
func (t *S3Target) Open(ctx context.Context, key string) (body io.ReadCloser, meta map[string]string, found bool, err error) {
	out, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &t.bucket, Key: aws.String(t.key(key))})
	if isNotFound(err) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("%s: %w", t.key(key), err)
	}
	return out.Body, out.Metadata, true, nil
}

// GetMeta is Get returning the object's whole user metadata.
func (t *S3Target) GetMeta(ctx context.Context, key, file string) (meta map[string]string, found bool, err error) {
	body, meta, found, err := t.Open(ctx, key)
	if err != nil || !found {
		return nil, found, err
	}
	defer body.Close()
	f, err := os.Create(file)
	if err != nil {
		return nil, true, err
	}
	if _, err := io.Copy(f, body); err != nil {
		f.Close()
		return nil, true, fmt.Errorf("%s: %w", t.key(key), err)
	}
	if err := f.Close(); err != nil {
		return nil, true, err
	}
	return meta, true, nil
}

// listPrefix is the full key prefix of the objects under sub (relative to
// the target's prefix); the whole target lists with a trailing slash.
func (t *S3Target) listPrefix(sub string) string {
	if t.prefix != "" && sub == "" {
		return t.prefix + "/"
	}
	return t.key(sub)
}

// ObjectInfo is one object of List.
type ObjectInfo struct {
	Key      string // relative to the target's prefix
	Size     int64
	Modified time.Time
}

// List returns the objects whose keys (relative to the target's prefix)
// start with sub.
func (t *S3Target) List(ctx context.Context, sub string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	full := t.listPrefix(sub)
	p := s3.NewListObjectsV2Paginator(t.client, &s3.ListObjectsV2Input{Bucket: &t.bucket, Prefix: aws.String(full)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		for _, o := range page.Contents {
			k := aws.ToString(o.Key)
			if t.prefix != "" {
				k = k[len(t.prefix)+1:]
			}
			out = append(out, ObjectInfo{Key: k, Size: aws.ToInt64(o.Size), Modified: aws.ToTime(o.LastModified)})
		}
	}
	return out, nil
}

// ReadPrefix returns the first n bytes of key (fewer when it is shorter).
func (t *S3Target) ReadPrefix(ctx context.Context, key string, n int64) ([]byte, error) {
	out, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &t.bucket, Key: aws.String(t.key(key)), Range: aws.String(fmt.Sprintf("bytes=0-%d", n-1))})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.key(key), err)
	}
	defer out.Body.Close()
	return io.ReadAll(io.LimitReader(out.Body, n))
}

// UploadInfo is an open (never completed nor aborted) multipart upload.
type UploadInfo struct {
	Key       string // relative to the target's prefix
	ID        string
	Initiated time.Time
}

// ListUploads returns the open multipart uploads whose keys (relative to
// the target's prefix) start with sub: what an uploader killed mid-upload
// left behind (its parts are stored but no object is visible).
func (t *S3Target) ListUploads(ctx context.Context, sub string) ([]UploadInfo, error) {
	var out []UploadInfo
	full := t.listPrefix(sub)
	in := &s3.ListMultipartUploadsInput{Bucket: &t.bucket, Prefix: aws.String(full)}
	for {
		page, err := t.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		for _, u := range page.Uploads {
			k := aws.ToString(u.Key)
			if t.prefix != "" {
				k = k[len(t.prefix)+1:]
			}
			out = append(out, UploadInfo{Key: k, ID: aws.ToString(u.UploadId), Initiated: aws.ToTime(u.Initiated)})
		}
		if !aws.ToBool(page.IsTruncated) {
			return out, nil
		}
		in.KeyMarker, in.UploadIdMarker = page.NextKeyMarker, page.NextUploadIdMarker
	}
}

// AbortUpload aborts an open multipart upload (its stored parts are freed).
func (t *S3Target) AbortUpload(ctx context.Context, u UploadInfo) error {
	_, err := t.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &t.bucket, Key: aws.String(t.key(u.Key)), UploadId: aws.String(u.ID)})
	var nu *types.NoSuchUpload
	if isNotFound(err) || errors.As(err, &nu) {
		return nil
	}
	return err
}
