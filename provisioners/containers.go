package provisioners

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/contract"
)

// DefaultImageDir is where container image tarballs are placed in the image;
// the agent loads them at first boot without a registry.
const DefaultImageDir = "/app/images"

// Containers bakes container images into the image as tarballs
// (docker-archive or OCI layout), with a manifest (images.json) beside them
// and the agent's image index (manifest.json: file, tags and compose hints;
// see docs/agent.md, "prepare-ecs").
type Containers struct {
	Images []ContainerImage `yaml:"images"`
	// Dir is the guest directory (default /app/images).
	Dir string `yaml:"dir"`
	// Load runs `docker load` on each tarball at build time (needs a booted
	// guest with docker; default false: the agent loads them at first boot).
	Load bool `yaml:"load"`

	// PullDir is where registry images are saved on the host before
	// placing (set by the builder; default a temporary directory).
	PullDir string `yaml:"-"`
}

// ContainerImage is one image: a local tarball or a registry reference.
type ContainerImage struct {
	// Path is a local docker-archive (`docker save`) or OCI layout tarball.
	Path string `yaml:"path"`
	// Ref is a registry reference, pulled on the host with
	// go-containerregistry (pin a digest for reproducible builds).
	Ref string `yaml:"ref"`
	// Debian builds the image from Debian packages on the build host
	// (mmdebstrap, no Docker engine, no registry); Tags are required.
	Debian *DebianImage `yaml:"debian"`
	// Name is the file name in Dir (default: from Path or Ref).
	Name string `yaml:"name"`
	// Tags are applied by the agent after `docker load`; the first is what
	// it runs (default: the docker-archive's RepoTags, or Ref).
	Tags []string `yaml:"tags"`
	// Service, Web, Port, Command and NoCompose are passed to the agent's
	// image index unchanged (compose service name, the service nginx
	// proxies to, its container port, command override, load only).
	Service   string   `yaml:"service"`
	Web       bool     `yaml:"web"`
	Port      int      `yaml:"port"`
	Command   []string `yaml:"command"`
	NoCompose bool     `yaml:"no_compose"`

	format string
}

// ImageManifest is the images.json written beside the tarballs.
type ImageManifest struct {
	Images []ImageManifestEntry `json:"images"`
}

// ImageManifestEntry describes one baked image tarball.
type ImageManifestEntry struct {
	File   string `json:"file"`
	Format string `json:"format"` // "docker-archive" or "oci-archive"
	Source string `json:"source"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// AgentIndexEntry is one entry of the agent's image index, manifest.json
// beside the tarballs: the contract both sides share.
type AgentIndexEntry = contract.ImageEntry

// imageID is the config digest of the first image of a docker-archive
// ("" when it cannot be read, or for an OCI layout).
func imageID(file, format string) string {
	if format != "docker-archive" {
		return ""
	}
	img, err := tarball.ImageFromPath(file, nil)
	if err != nil {
		return ""
	}
	h, err := img.ConfigName()
	if err != nil {
		return ""
	}
	return h.String()
}

var fileNameRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`) })

// Type implements Provisioner.
func (*Containers) Type() string { return "containers" }

// CheckProduction implements Provisioner: nothing a production variant refuses.
func (*Containers) CheckProduction() []FieldError { return nil }

// Requires implements Provisioner: the archives are placed as files,
// unless load: true runs `docker load`, which needs the image's dockerd
// running.
func (c *Containers) Requires() Requirement {
	if c.Load {
		return Requirement{Need: NeedRunning, Why: "load: true runs docker load, which needs the image's dockerd running"}
	}
	return Requirement{Need: NeedFiles}
}

// Check implements Provisioner.
func (c *Containers) Check(dir string) []FieldError {
	var errs []FieldError
	if c.Dir == "" {
		c.Dir = DefaultImageDir
	}
	if m := validGuestPath(c.Dir); m != "" {
		errs = append(errs, fieldErr("dir", "%s", m))
	}
	if len(c.Images) == 0 {
		errs = append(errs, fieldErr("images", "required (a list of {path: FILE} or {ref: REFERENCE})"))
	}
	names := map[string]bool{}
	for i := range c.Images {
		im := &c.Images[i]
		f := fmt.Sprintf("images[%d]", i)
		sources := 0
		for _, set := range []bool{im.Path != "", im.Ref != "", im.Debian != nil} {
			if set {
				sources++
			}
		}
		switch {
		case sources == 0:
			errs = append(errs, fieldErr(f, "give path, ref or debian"))
			continue
		case sources > 1:
			errs = append(errs, fieldErr(f, "give one of path, ref and debian"))
			continue
		case im.Debian != nil:
			errs = append(errs, im.Debian.check(f+".debian")...)
			im.format = "docker-archive"
			if len(im.Tags) == 0 {
				errs = append(errs, fieldErr(f+".tags", "required with debian: the image's name"))
			} else if im.Name == "" {
				im.Name = refFileName(im.Tags[0])
			}
		case im.Path != "":
			im.Path = absPath(dir, im.Path)
			format, err := archiveFormat(im.Path)
			if err != nil {
				errs = append(errs, fieldErr(f+".path", "%v", err))
			}
			im.format = format
			if im.Name == "" {
				im.Name = filepath.Base(im.Path)
			}
			if len(im.Tags) == 0 && format == "docker-archive" {
				im.Tags = archiveTags(im.Path)
			}
			if len(im.Tags) == 0 && err == nil {
				errs = append(errs, fieldErr(f+".tags", "required: the tarball names no image (no RepoTags in its manifest.json)"))
			}
		default:
			if _, err := name.ParseReference(im.Ref); err != nil {
				errs = append(errs, fieldErr(f+".ref", "%v", err))
				continue
			}
			im.format = "docker-archive"
			if im.Name == "" {
				im.Name = refFileName(im.Ref)
			}
			if len(im.Tags) == 0 {
				im.Tags = []string{im.Ref}
			}
		}
		for j, t := range im.Tags {
			if _, err := name.ParseReference(t); err != nil {
				errs = append(errs, fieldErr(fmt.Sprintf("%s.tags[%d]", f, j), "%v", err))
			}
		}
		if im.Port < 0 || im.Port > 65535 {
			errs = append(errs, fieldErr(f+".port", "%d is not a port", im.Port))
		}
		if im.Name == "images.json" || im.Name == "manifest.json" {
			errs = append(errs, fieldErr(f+".name", "%q is reserved for the image indexes", im.Name))
		} else if !fileNameRe().MatchString(im.Name) {
			errs = append(errs, fieldErr(f+".name", "%q is not a plain file name", im.Name))
		} else if names[im.Name] {
			errs = append(errs, fieldErr(f+".name", "%q is used twice", im.Name))
		}
		names[im.Name] = true
	}
	return errs
}

func refFileName(ref string) string {
	r := strings.NewReplacer("/", "_", ":", "_", "@", "_")
	return r.Replace(ref) + ".tar"
}

// archiveFormat tells a docker-archive from an OCI layout tarball.
func archiveFormat(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", cleanErr(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%s: neither a docker-archive (manifest.json) nor an OCI layout (oci-layout)", p)
		}
		if err != nil {
			return "", fmt.Errorf("%s: not a tar archive: %v", p, err)
		}
		switch strings.TrimPrefix(h.Name, "./") {
		case "oci-layout":
			return "oci-archive", nil
		case "manifest.json":
			return "docker-archive", nil
		}
	}
}

// archiveTags returns the RepoTags of a docker-archive's manifest.json.
func archiveTags(p string) []string {
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return nil
		}
		if strings.TrimPrefix(h.Name, "./") != "manifest.json" {
			continue
		}
		var man []struct{ RepoTags []string }
		if json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&man) != nil {
			return nil
		}
		var tags []string
		for _, m := range man {
			tags = append(tags, m.RepoTags...)
		}
		return tags
	}
}

// Inputs implements Provisioner. Registry references are keyed by their
// text (a tag may move: pin digests).
func (c *Containers) Inputs() []string {
	var in []string
	for _, im := range c.Images {
		if im.Path != "" {
			in = append(in, im.Path)
		}
	}
	return in
}

// pull saves a registry image as a docker-archive under dir.
func pull(ctx context.Context, ref, dir string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", err
	}
	// Credentials come from the Docker config (~/.docker/config.json,
	// $DOCKER_CONFIG) and credential helpers, as `docker pull` finds them.
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	out := filepath.Join(dir, refFileName(ref))
	f, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Abort()
	if err := tarball.Write(r, img, f); err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	return out, f.Commit()
}

// Place implements Placer.
func (c *Containers) Place(ctx context.Context, a *Archive) error {
	root := Owner{"root", "root"}
	if err := a.Parents(c.Dir, root); err != nil {
		return err
	}
	if err := a.Dir(c.Dir, 0o755, root); err != nil {
		return err
	}
	var man ImageManifest
	index := []AgentIndexEntry{}
	for _, im := range c.Images {
		src, source := im.Path, im.Path
		if im.Ref != "" || im.Debian != nil {
			dir := c.PullDir
			if dir == "" {
				d, err := os.MkdirTemp("", "ecs-image-pull-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				dir = d
				c.PullDir = d
				defer func() { c.PullDir = "" }()
			}
			var p string
			var err error
			if im.Debian != nil {
				p, err = debianImage(ctx, &im, dir, func(s string) { logrus.Info(s) })
				source = "debian:" + im.Debian.Suite + ":" + strings.Join(im.Debian.Packages, ",")
			} else {
				p, err = pull(ctx, im.Ref, dir)
				source = im.Ref
			}
			if err != nil {
				return err
			}
			src = p
		}
		sum, size, err := atomicfile.SHA256File(ctx, src)
		if err != nil {
			return err
		}
		if err := a.LocalFile(src, path.Join(c.Dir, im.Name), 0o644, root); err != nil {
			return err
		}
		man.Images = append(man.Images, ImageManifestEntry{File: im.Name, Format: im.format, Source: source, SHA256: sum, Size: size})
		index = append(index, AgentIndexEntry{File: im.Name, Tags: im.Tags, ID: imageID(src, im.format), Ref: im.Ref, Service: im.Service, Web: im.Web,
			Port: im.Port, Command: im.Command, NoCompose: im.NoCompose})
	}
	idata, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return err
	}
	if err := a.Bytes(path.Join(c.Dir, "manifest.json"), append(idata, '\n'), 0o644, root); err != nil {
		return err
	}
	data, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return err
	}
	return a.Bytes(path.Join(c.Dir, "images.json"), append(data, '\n'), 0o644, root)
}

// Run implements Runner (only used when Load is set).
func (c *Containers) Run(ctx context.Context, e *Env) error {
	if err := RunPlacer(ctx, c, e); err != nil {
		return err
	}
	for _, im := range c.Images {
		cmd := "sudo -n docker load --input " + shellQuote(path.Join(c.Dir, im.Name))
		if err := e.Guest.Run(ctx, cmd, nil, func(l string) { e.Log.Info(l) }); err != nil {
			return fmt.Errorf("docker load %s: %w", im.Name, err)
		}
	}
	return nil
}
