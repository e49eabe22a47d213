package release

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
)

// Target is where a release is published.
type Target interface {
	// Digest returns the SHA-256 (hex) and size of the object at key, or
	// ok=false when there is none (or its digest is unknown).
	Digest(ctx context.Context, key string) (sum string, size int64, ok bool, err error)
	// Put uploads the local file under key; sum is its SHA-256 hex. The
	// object appears whole or not at all.
	Put(ctx context.Context, key, file, sum string, size int64) error
	// Delete removes key (no error if absent).
	Delete(ctx context.Context, key string) error
	// String names the target for messages.
	String() string
}

// Report says what Publish did.
type Report struct {
	Uploaded []string
	Skipped  []string // already there with the same digest
}

// PublishOptions control Publish.
type PublishOptions struct {
	// VerifyKey, if set, is an armored public key file; the release must
	// then carry SHA256SUMS.asc made by that key.
	VerifyKey string
}

// Publish verifies the release in dir (every file SHA256SUMS lists, its
// disk images as `release` does (CheckDisk), and the signature when asked)
// and uploads it to t: artifacts first, then
// SHA256SUMS and its signature, manifest.json last, so that a reader who
// finds a manifest finds the whole release. Objects already there with the
// same digest are skipped, so re-running is cheap and safe. A different
// manifest already at the target is removed before anything is uploaded.
func Publish(ctx context.Context, dir string, t Target, opts PublishOptions) (*Report, error) {
	sums, err := Verify(ctx, dir)
	if err != nil {
		return nil, err
	}
	// A release made by hand (its own SHA256SUMS) is held to what
	// `release` checks: no disk image that names a host file is shipped.
	for _, s := range sums {
		if err := CheckDisk(ctx, filepath.Join(dir, s.Name)); err != nil {
			return nil, err
		}
	}
	sigPath := filepath.Join(dir, SignatureFile)
	_, sigErr := os.Stat(sigPath)
	hasSig := sigErr == nil
	if opts.VerifyKey != "" {
		if !hasSig {
			return nil, &Error{Path: sigPath, Msg: "missing; --verify-key needs a signed release"}
		}
		data, err := os.ReadFile(filepath.Join(dir, SumsFile))
		if err != nil {
			return nil, err
		}
		sig, err := os.ReadFile(sigPath)
		if err != nil {
			return nil, err
		}
		if err := CheckSignature(opts.VerifyKey, data, sig); err != nil {
			return nil, err
		}
	}

	var manifest *Sum
	var order []Sum
	for i := range sums {
		if sums[i].Name == ManifestFile {
			manifest = &sums[i]
			continue
		}
		order = append(order, sums[i])
	}
	if manifest == nil {
		return nil, &Error{Path: filepath.Join(dir, SumsFile), Msg: "does not list manifest.json (make the release with `ecs-image release`)"}
	}
	for _, name := range []string{SumsFile, SignatureFile} {
		if name == SignatureFile && !hasSig {
			continue
		}
		s, size, err := HashFile(ctx, filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		order = append(order, Sum{Name: name, SHA256: s, Size: size})
	}

	// An older, different manifest must not describe the objects we are
	// about to replace.
	if old, _, ok, err := t.Digest(ctx, ManifestFile); err != nil {
		return nil, err
	} else if ok && old != manifest.SHA256 {
		logrus.Infof("publish: removing the previous %s from %s", ManifestFile, t)
		if err := t.Delete(ctx, ManifestFile); err != nil {
			return nil, err
		}
	}

	rep := &Report{}
	for _, s := range append(order, *manifest) {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		got, size, ok, err := t.Digest(ctx, s.Name)
		if err != nil {
			return rep, err
		}
		if ok && got == s.SHA256 && size == s.Size {
			logrus.Infof("publish: %s already at %s", s.Name, t)
			rep.Skipped = append(rep.Skipped, s.Name)
			continue
		}
		logrus.Infof("publish: uploading %s to %s", s.Name, t)
		if err := t.Put(ctx, s.Name, filepath.Join(dir, s.Name), s.SHA256, s.Size); err != nil {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			return rep, fmt.Errorf("uploading %s to %s: %w", s.Name, t, err)
		}
		rep.Uploaded = append(rep.Uploaded, s.Name)
	}
	return rep, nil
}

// S3Options configure s3:// targets.
type S3Options struct {
	Endpoint string // custom endpoint (e.g. http://127.0.0.1:7070); path-style addressing
	Region   string // default from the AWS config, else us-east-1
}

// OpenTarget parses file:///path or s3://bucket/prefix.
func OpenTarget(ctx context.Context, to string, s3o S3Options) (Target, error) {
	u, err := url.Parse(to)
	if err != nil {
		return nil, &Error{Path: "--to", Msg: fmt.Sprintf("%q: %v", to, err)}
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, &Error{Path: "--to", Msg: fmt.Sprintf("%q: want file:///absolute/path", to)}
		}
		if u.Path == "" || !path.IsAbs(u.Path) {
			return nil, &Error{Path: "--to", Msg: fmt.Sprintf("%q: want file:///absolute/path", to)}
		}
		return NewFileTarget(u.Path)
	case "s3":
		if u.Host == "" {
			return nil, &Error{Path: "--to", Msg: fmt.Sprintf("%q: want s3://bucket/prefix", to)}
		}
		return NewS3Target(ctx, u.Host, strings.Trim(u.Path, "/"), s3o)
	default:
		return nil, &Error{Path: "--to", Msg: fmt.Sprintf("%q: want file:///path or s3://bucket/prefix", to)}
	}
}
