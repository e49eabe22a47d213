package release

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/formats"
)

// BuildInfo is what the builder records about a build (NAME.build.json
// beside the artifacts, or build-manifest.json). Every field is optional;
// the builder's own names (template, base, builder, created) are accepted.
type BuildInfo struct {
	Name           string    `json:"name,omitempty"`
	Version        string    `json:"version,omitempty"`
	Variant        string    `json:"variant,omitempty"`
	Production     bool      `json:"production,omitempty"`
	BaseImage      BaseImage `json:"base_image"`
	TemplateDigest string    `json:"template_digest,omitempty"`
	BuilderVersion string    `json:"builder_version,omitempty"`
	GitRevision    string    `json:"git_revision,omitempty"`
	BuildTime      string    `json:"build_time,omitempty"` // RFC 3339
	Packages       []Package `json:"packages,omitempty"`
}

// builderManifest adds the builder's field names to BuildInfo's.
type builderManifest struct {
	BuildInfo
	Template string     `json:"template"`
	Base     *BaseImage `json:"base"`
	Builder  string     `json:"builder"`
	Created  string     `json:"created"`
}

func (b builderManifest) merged() BuildInfo {
	bi := b.BuildInfo
	if bi.Name == "" {
		bi.Name = b.Template
	}
	if bi.BaseImage == (BaseImage{}) && b.Base != nil {
		bi.BaseImage = *b.Base
	}
	if bi.BuilderVersion == "" {
		bi.BuilderVersion = b.Builder
	}
	if bi.BuildTime == "" {
		bi.BuildTime = b.Created
	}
	return bi
}

// BaseImage names the base cloud image a build started from.
type BaseImage struct {
	Name   string `json:"name,omitempty"`
	Digest string `json:"digest,omitempty"` // "sha256:<hex>"
}

// Package is one guest package (the SBOM-lite).
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Arch    string `json:"arch,omitempty"`
}

// UnmarshalJSON accepts an object or a "name<TAB>version", "name=version"
// or "name version" string.
func (p *Package) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		s = strings.TrimSpace(s)
		var name, ver string
		for _, sep := range []string{"\t", "=", " "} {
			if name, ver, _ = strings.Cut(s, sep); ver != "" {
				break
			}
		}
		*p = Package{Name: strings.TrimSpace(name), Version: strings.TrimSpace(ver)}
		return nil
	}
	type plain Package
	return json.Unmarshal(b, (*plain)(p))
}

// ReadBuildInfo reads a builder's build manifest; a missing file gives an
// empty BuildInfo and ok=false.
func ReadBuildInfo(path string) (bi BuildInfo, ok bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return BuildInfo{}, false, nil
	}
	if err != nil {
		return BuildInfo{}, false, &Error{Path: path, Msg: errText(err)}
	}
	var bm builderManifest
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&bm); err != nil {
		msg := err.Error()
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			msg = fmt.Sprintf("line %d: %v", lineOf(data, se.Offset), err)
		case errors.As(err, &te):
			msg = fmt.Sprintf("line %d: field %s: want %s, got %s", lineOf(data, te.Offset), te.Field, te.Type, te.Value)
		}
		return BuildInfo{}, false, &Error{Path: path, Msg: "build manifest: " + msg}
	}
	return bm.merged(), true, nil
}

func lineOf(data []byte, off int64) int {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// Manifest is a release's manifest.json.
type Manifest struct {
	Schema      string     `json:"schema"`
	ReleaseTime string     `json:"release_time"`
	SigningKey  string     `json:"signing_key,omitempty"` // fingerprint
	Signature   string     `json:"signature,omitempty"`   // file name of the SHA256SUMS signature
	Artifacts   []Artifact `json:"artifacts"`
	BuildInfo
}

// ManifestSchema identifies the manifest.json layout.
const ManifestSchema = "ecs-image/release/v1"

// Artifact is one file of a release.
type Artifact struct {
	Name   string `json:"name"`
	Format string `json:"format,omitempty"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Options control Make.
type Options struct {
	// BuildManifest is the builder's manifest; default DIR/build-manifest.json,
	// else the one DIR/*.build.json.
	BuildManifest string
	// GitRevision, if set, overrides the build manifest's git_revision.
	GitRevision string
	// FallbackGitRevision is used when neither sets one.
	FallbackGitRevision string
	// Signer signs SHA256SUMS; nil writes no signature.
	Signer *Signer
	// Now is the release time (default time.Now).
	Now func() time.Time
}

// reserved are file names a release owns in its directory.
func reserved(name string) bool {
	switch name {
	case SumsFile, SignatureFile, SumsFile + ".sig", ManifestFile, BuildManifestFile:
		return true
	}
	return strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".build.json")
}

// Make writes manifest.json, SHA256SUMS (covering every artifact and
// manifest.json) and, with a signer, SHA256SUMS.asc into dir. Artifacts are
// the regular files in dir, except hidden files, build manifests and the
// release's own files.
func Make(ctx context.Context, dir string, opts Options) (*Manifest, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.BuildManifest == "" {
		opts.BuildManifest = filepath.Join(dir, BuildManifestFile)
		if _, err := os.Stat(opts.BuildManifest); err != nil {
			found, _ := filepath.Glob(filepath.Join(dir, "*.build.json"))
			if len(found) > 1 {
				return nil, &Error{Path: dir, Msg: fmt.Sprintf("holds %d build manifests (*.build.json); choose one with --build-manifest", len(found))}
			}
			if len(found) == 1 {
				opts.BuildManifest = found[0]
			}
		}
	}
	bi, _, err := ReadBuildInfo(opts.BuildManifest)
	if err != nil {
		return nil, err
	}
	if opts.GitRevision != "" {
		bi.GitRevision = opts.GitRevision
	}
	if bi.GitRevision == "" {
		bi.GitRevision = opts.FallbackGitRevision
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, &Error{Path: dir, Msg: errText(err)}
	}
	m := &Manifest{Schema: ManifestSchema, ReleaseTime: opts.Now().UTC().Format(time.RFC3339), BuildInfo: bi, Artifacts: []Artifact{}}
	if opts.Signer != nil {
		m.SigningKey = opts.Signer.Fingerprint()
		m.Signature = SignatureFile
	}
	var sums []Sum
	for _, e := range entries {
		if !e.Type().IsRegular() || reserved(e.Name()) {
			continue
		}
		if err := CheckDisk(ctx, filepath.Join(dir, e.Name())); err != nil {
			return nil, err
		}
		sum, size, err := HashFile(ctx, filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		m.Artifacts = append(m.Artifacts, Artifact{Name: e.Name(), Format: formats.ForFile(e.Name()), Size: size, SHA256: sum})
		sums = append(sums, Sum{Name: e.Name(), SHA256: sum, Size: size})
	}
	if len(m.Artifacts) == 0 {
		return nil, &Error{Path: dir, Msg: "no artifact to release"}
	}
	sort.Slice(m.Artifacts, func(i, j int) bool { return m.Artifacts[i].Name < m.Artifacts[j].Name })

	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	mj = append(mj, '\n')
	ms := sha256.Sum256(mj)
	sums = append(sums, Sum{Name: ManifestFile, SHA256: hex.EncodeToString(ms[:]), Size: int64(len(mj))})
	sumsData := FormatSums(sums)
	var sig []byte
	if opts.Signer != nil {
		if sig, err = opts.Signer.Sign(sumsData); err != nil {
			return nil, err
		}
	}
	// Drop a stale signature first: it must never sit beside new sums.
	if err := os.Remove(filepath.Join(dir, SignatureFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, ManifestFile), mj, 0o644); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, SumsFile), sumsData, 0o644); err != nil {
		return nil, err
	}
	if sig != nil {
		if err := atomicfile.Write(filepath.Join(dir, SignatureFile), sig, 0o644); err != nil {
			return nil, err
		}
	}
	return m, nil
}
