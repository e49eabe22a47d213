package images

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	getter "github.com/hashicorp/go-getter/v2"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/progress"
	"github.com/ecs-image/ecs-image/qemuimg"
)

// MaxDecompressedSize bounds what a compressed base may expand to.
var MaxDecompressedSize int64 = 64 << 30

// FetchRequest is a download of a base image into the cache.
type FetchRequest struct {
	// URL of the image: http, https or file (a local path is accepted too).
	// .xz, .gz and .bz2 are decompressed.
	URL string
	// Checksum: sha256:HEX, sha512:HEX or file:URL of a checksum file. It is
	// verified on the downloaded (possibly compressed) file.
	Checksum string
	// Insecure allows a fetch without a checksum (with a warning).
	Insecure bool
	// Format is the expected disk format after decompression ("" = any of
	// Formats).
	Format string
}

// ChecksumError is a download whose checksum did not match.
type ChecksumError struct {
	URL      string
	Expected string
	Actual   string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("checksum mismatch for %s: expected %s, got %s (download discarded)", e.URL, e.Expected, e.Actual)
}

// Fetch downloads r.URL into the cache, verifying its checksum, or returns
// the cached entry for the same URL and checksum without network access.
// The download goes to a temporary name under the cache's tmp/ and is only
// renamed into place once verified, decompressed and inspected; an
// interrupted or bad download leaves no cache entry.
func Fetch(ctx context.Context, c *Cache, r FetchRequest) (*Entry, error) {
	src, err := normaliseSource(r.URL)
	if err != nil {
		return nil, &InputError{Field: "URL", Msg: err.Error()}
	}
	if r.Checksum == "" && !r.Insecure {
		return nil, &InputError{Field: "--checksum", Msg: fmt.Sprintf("no checksum for %s: give --checksum sha256:HEX or --checksum file:URL-of-SHA256SUMS (or --insecure to skip verification)", r.URL)}
	}
	if r.Checksum != "" {
		if err := ValidChecksum(r.Checksum); err != nil {
			return nil, &InputError{Field: "--checksum", Msg: err.Error()}
		}
	}
	if r.Format != "" && !knownFormat(r.Format) {
		return nil, &InputError{Field: "--format", Msg: fmt.Sprintf("%q: want one of %s", r.Format, strings.Join(Formats, ", "))}
	}
	if r.Checksum == "" {
		logrus.Warnf("fetching %s WITHOUT checksum verification (--insecure)", src)
	}
	source := fetchSource(src, r.Checksum)
	key := Key(source)
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if e, err := c.Lookup(key); err != nil {
		return nil, err
	} else if e != nil {
		// The cache is keyed by URL and checksum, not by the declared
		// format: check it on every hit, as on a download.
		if r.Format != "" && e.Format != r.Format {
			return nil, &qemuimg.ImageError{Path: src, Msg: fmt.Sprintf("declared format %s, but the file is %s (cached as %s)", r.Format, e.Format, c.Path(e))}
		}
		logrus.Infof("%s: cache hit (%s)", src, e.Digest)
		return e, nil
	}
	c.RemoveStale("fetch-" + key + "-")
	tmp, err := c.TempDir("fetch-" + key + "-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	dst := filepath.Join(tmp, "image")
	getSrc, err := withChecksumParam(src, r.Checksum)
	if err != nil {
		return nil, &InputError{Field: "URL", Msg: err.Error()}
	}
	start := time.Now()
	logrus.Infof("fetching %s", src)
	pl := &progressListener{}
	client := newGetterClient()
	_, err = client.Get(ctx, &getter.Request{
		Src: getSrc, Dst: dst, GetMode: getter.ModeFile, Copy: true,
		DisableSymlinks: true, ProgressListener: pl, Umask: 0o022,
	})
	pl.done()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ce *getter.ChecksumError
		if errors.As(err, &ce) {
			algo := checksumAlgo(ce.Expected)
			return nil, &ChecksumError{URL: src, Expected: algo + ":" + hex.EncodeToString(ce.Expected), Actual: algo + ":" + hex.EncodeToString(ce.Actual)}
		}
		return nil, fmt.Errorf("fetch %s: %w", src, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	info, err := Inspect(ctx, dst, r.Format)
	if err != nil {
		// Name the URL, not the temporary file.
		var ie *qemuimg.ImageError
		if errors.As(err, &ie) {
			return nil, &qemuimg.ImageError{Path: src, Msg: strings.ReplaceAll(ie.Msg, dst, "the download")}
		}
		return nil, fmt.Errorf("fetched %s: %w", src, err)
	}
	e, err := c.Commit(key, source, info.Format, dst)
	if err != nil {
		return nil, err
	}
	logrus.Infof("fetched %s in %s: %s (%s, %s)", src, time.Since(start).Round(time.Second), c.Path(e), e.Format, e.Digest)
	return e, nil
}

func fetchSource(src, checksum string) string { return "fetch:" + src + "\nchecksum:" + checksum }

// FetchKey is the cache index key of a fetch of url with checksum (for
// checking whether a base is cached; no network).
func FetchKey(url, checksum string) string {
	src, err := normaliseSource(url)
	if err != nil {
		src = url
	}
	return Key(fetchSource(src, checksum))
}

func checksumAlgo(b []byte) string {
	switch len(b) {
	case 16:
		return "md5"
	case 20:
		return "sha1"
	case 32:
		return "sha256"
	case 64:
		return "sha512"
	}
	return "checksum"
}

// normaliseSource turns a local path into an absolute file path and checks
// URLs' schemes.
func normaliseSource(s string) (string, error) {
	if s == "" {
		return "", errors.New("empty URL")
	}
	if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", err
		}
		if u.Host == "" {
			return "", fmt.Errorf("%q has no host", s)
		}
		return s, nil
	}
	if strings.HasPrefix(s, "file://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", err
		}
		s = u.Path
	}
	if strings.Contains(s, "://") {
		return "", fmt.Errorf("%q: want an http, https or file URL or a local path", s)
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", err
	}
	return abs, nil
}

// withChecksumParam adds go-getter's "checksum" query parameter.
func withChecksumParam(src, checksum string) (string, error) {
	if checksum == "" {
		return src, nil
	}
	if strings.HasPrefix(src, "/") {
		// go-getter's file detection accepts a query on a plain path.
		return src + "?checksum=" + url.QueryEscape(checksum), nil
	}
	u, err := url.Parse(src)
	if err != nil {
		return "", err
	}
	q := u.Query()
	if q.Has("checksum") || q.Has("archive") || q.Has("filename") {
		return "", fmt.Errorf("%s: the query parameters checksum, archive and filename are reserved", src)
	}
	q.Set("checksum", checksum)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// newGetterClient is a go-getter client limited to HTTP(S) and local files,
// with single-file decompressors for .gz, .bz2 and .xz only (bounded by
// MaxDecompressedSize) and without go-getter's X-Terraform-Get redirects.
func newGetterClient() *getter.Client {
	return &getter.Client{
		Getters: []getter.Getter{
			&getter.HttpGetter{XTerraformGetDisabled: true, DoNotCheckHeadFirst: true, Netrc: true},
			new(getter.FileGetter),
		},
		Decompressors: map[string]getter.Decompressor{
			"gz":  &getter.GzipDecompressor{FileSizeLimit: MaxDecompressedSize},
			"bz2": &getter.Bzip2Decompressor{FileSizeLimit: MaxDecompressedSize},
			"xz":  &getter.XzDecompressor{FileSizeLimit: MaxDecompressedSize},
		},
		DisableSymlinks: true,
	}
}

// progressListener reports go-getter downloads with the progress package.
type progressListener struct {
	trackers []*progress.Tracker
}

func (p *progressListener) TrackProgress(src string, current, total int64, stream io.ReadCloser) io.ReadCloser {
	name := src
	if u, err := url.Parse(src); err == nil {
		name = filepath.Base(u.Path)
	}
	t := progress.New(name, total)
	t.Add(current)
	p.trackers = append(p.trackers, t)
	return &trackedBody{Reader: t.Reader(stream), c: stream, t: t}
}

func (p *progressListener) done() {
	for _, t := range p.trackers {
		t.Done()
	}
}

type trackedBody struct {
	io.Reader
	c io.Closer
	t *progress.Tracker
}

func (b *trackedBody) Close() error {
	b.t.Done()
	return b.c.Close()
}
