package builder

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/ecs-image/ecs-image/builder/template"
)

// Artifact is the result of a build: the files written to the output
// directory and the build manifest that describes them.
type Artifact struct {
	// Files are the disk images, the qcow2 first.
	Files []ArtifactFile
	// ManifestPath is the build manifest JSON beside them.
	ManifestPath string
	Manifest     *Manifest
}

// ArtifactFile is one output file.
type ArtifactFile struct {
	Format string `json:"format"`
	Path   string `json:"path"` // file name, relative to the manifest
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
}

// Manifest is the build manifest (<name>.build.json): what went into the
// image. The release manifest is written from it by `ecs-image release`.
type Manifest struct {
	Template       string         `json:"template"`
	Version        string         `json:"version"` // the template's (or --set) product version
	TemplateFile   string         `json:"template_file"`
	TemplateDigest string         `json:"template_digest"`
	Variant        string         `json:"variant,omitempty"`
	Production     bool           `json:"production"`
	Base           ManifestBase   `json:"base"`
	Stages         []StageRecord  `json:"stages"`
	Generalise     StageRecord    `json:"generalise"`
	Packages       []string       `json:"packages"` // "name\tversion", from dpkg-query
	Files          []ArtifactFile `json:"files"`
	Accel          string         `json:"accel"`
	Builder        string         `json:"builder"`
	Created        time.Time      `json:"created"`
	Seconds        float64        `json:"seconds"`
	Steps          []StepTiming   `json:"steps"`
}

// ManifestBase describes the base image.
type ManifestBase struct {
	Name     string `json:"name,omitempty"`
	Path     string `json:"path"`
	Digest   string `json:"digest"`
	Format   string `json:"format"`
	Firmware string `json:"firmware"`
}

// StageRecord is one stage of the build.
type StageRecord struct {
	Name   string `json:"name"`
	Key    string `json:"key"`
	Cached bool   `json:"cached"`
	// Mode is how it was built: ModeBoot, ModeChroot or ModeOffline.
	Mode template.Mode `json:"mode"`
	// Merged: applied in the generalisation's helper boot.
	Merged bool `json:"merged,omitempty"`
	// Remote: cached, downloaded from the shared stage cache
	// (--cache-remote) in this build.
	Remote bool `json:"remote,omitempty"`
}

// UnmarshalJSON reads a stage of a build manifest; one written before the
// mode was recorded gets it from its offline and chroot fields.
func (r *StageRecord) UnmarshalJSON(data []byte) error {
	type record StageRecord // without this method
	var v struct {
		record
		Offline bool `json:"offline"`
		Chroot  bool `json:"chroot"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*r = StageRecord(v.record)
	if r.Mode == template.ModeAuto {
		r.Mode = legacyMode(!v.Offline && !v.Chroot, v.Chroot)
	}
	return nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
