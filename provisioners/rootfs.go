package provisioners

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// DebianImage is a container image source made from Debian packages, with
// no Docker engine and no registry: mmdebstrap (variant essential plus
// Packages) writes a root file system tarball on the build host, which
// becomes the image's one layer (go-containerregistry). Sites without
// registry access need exactly this; the template's redis and memcached
// are built so.
type DebianImage struct {
	// Suite is the Debian suite (default trixie).
	Suite string `yaml:"suite"`
	// Mirror is the package mirror (default http://deb.debian.org/debian).
	Mirror string `yaml:"mirror"`
	// Packages are installed on top of the essential set.
	Packages []string `yaml:"packages"`
	// Keep, when set, makes a slim (distroless) image: the layer holds only
	// these paths (a directory with everything below it), the shared
	// libraries their ELF files need and the program interpreter, /etc/passwd,
	// /etc/group, /tmp and the directories above them; the installed
	// packages are listed in /usr/share/ecs-image/debian-packages. Empty: the
	// whole root file system.
	Keep []string `yaml:"keep"`
	// Entrypoint, Cmd, User, WorkingDir, Env and Ports make the image's config.
	Entrypoint []string `yaml:"entrypoint"`
	Cmd        []string `yaml:"cmd"`
	User       string   `yaml:"user"`
	WorkingDir string   `yaml:"workdir"`
	Env        []string `yaml:"env"`
	Ports      []int    `yaml:"ports"`
}

var pkgNameRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`) })

// Debian image defaults.
const (
	DefaultDebianSuite  = "trixie"
	DefaultDebianMirror = "http://deb.debian.org/debian"
)

func (d *DebianImage) check(f string) []FieldError {
	var errs []FieldError
	if d.Suite == "" {
		d.Suite = DefaultDebianSuite
	}
	if d.Mirror == "" {
		d.Mirror = DefaultDebianMirror
	}
	if !pkgNameRe().MatchString(d.Suite) {
		errs = append(errs, fieldErr(f+".suite", "%q is not a suite codename", d.Suite))
	}
	if !strings.HasPrefix(d.Mirror, "http://") && !strings.HasPrefix(d.Mirror, "https://") && !strings.HasPrefix(d.Mirror, "file:/") {
		errs = append(errs, fieldErr(f+".mirror", "%q: want an http://, https:// or file:/ URL", d.Mirror))
	}
	if len(d.Packages) == 0 {
		errs = append(errs, fieldErr(f+".packages", "required: the packages the image runs"))
	}
	for i, p := range d.Packages {
		if !pkgNameRe().MatchString(p) {
			errs = append(errs, fieldErr(fmt.Sprintf("%s.packages[%d]", f, i), "%q is not a package name", p))
		}
	}
	for i, k := range d.Keep {
		if !strings.HasPrefix(k, "/") || path.Clean(k) != k || k == "/" {
			errs = append(errs, fieldErr(fmt.Sprintf("%s.keep[%d]", f, i), "%q: want an absolute, clean path below /", k))
		}
	}
	if len(d.Entrypoint) == 0 && len(d.Cmd) == 0 {
		errs = append(errs, fieldErr(f+".cmd", "required (or entrypoint): what the container runs"))
	}
	for i, p := range d.Ports {
		if p < 1 || p > 65535 {
			errs = append(errs, fieldErr(fmt.Sprintf("%s.ports[%d]", f, i), "%d is not a port", p))
		}
	}
	for i, e := range d.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			errs = append(errs, fieldErr(fmt.Sprintf("%s.env[%d]", f, i), "%q: want NAME=VALUE", e))
		}
	}
	return errs
}

// rootfsKey identifies a root file system: images with the same suite,
// mirror and packages share one build and one layer.
func (d *DebianImage) rootfsKey() string {
	b, _ := json.Marshal([]any{d.Suite, d.Mirror, d.Packages})
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

// keepKey tells slim layers of one root file system apart.
func (d *DebianImage) keepKey() string {
	b, _ := json.Marshal(d.Keep)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:6])
}

// mmdebstrapArgs is the command line that writes the root file system
// tarball out.
func (d *DebianImage) mmdebstrapArgs(out string) []string {
	return []string{
		"--variant=essential", "--mode=root", "--format=tar",
		"--include=" + strings.Join(d.Packages, ","),
		// No documentation, manual pages or translations in a container.
		"--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
		"--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/* \"$1\"/var/log/*.log",
		d.Suite, out, d.Mirror,
	}
}

// buildRootfs runs mmdebstrap into dir/rootfs-KEY.tar (reused within one
// Place call).
func (d *DebianImage) buildRootfs(ctx context.Context, dir string, log func(string)) (string, error) {
	out := filepath.Join(dir, "rootfs-"+d.rootfsKey()+".tar")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("a debian: image needs root on the build host (mmdebstrap --mode=root)")
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		return "", fmt.Errorf("a debian: image needs mmdebstrap on the build host (apt-get install mmdebstrap)")
	}
	start := time.Now()
	tmp := out + ".tmp"
	cmd := exec.CommandContext(ctx, "mmdebstrap", d.mmdebstrapArgs(tmp)...)
	msg, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("mmdebstrap %s %s: %v\n%s", d.Suite, strings.Join(d.Packages, ","), err, lastChars(string(msg), 2000))
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	log(fmt.Sprintf("debian image rootfs %s (%s) built in %s", d.Suite, strings.Join(d.Packages, " "), time.Since(start).Round(time.Second)))
	return out, nil
}

func lastChars(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// layerEpoch is the time of the image's history and config.
var layerEpoch = time.Unix(0, 0).UTC()

// rootfsLayer rewrites an mmdebstrap tarball into a layer: names without
// "./", no device nodes under /dev (the runtime provides /dev); with keep,
// only what keepSet keeps (slimLayer).
func rootfsLayer(rootfs, out string, keep []string) error {
	f, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return err
	}
	defer f.Abort()
	tw := tar.NewWriter(f)
	if len(keep) > 0 {
		err = slimLayer(rootfs, tw, keep)
	} else {
		err = fullLayer(rootfs, tw)
	}
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Commit()
}

// fullLayer writes every entry of the tarball at rootfs into tw.
func fullLayer(rootfs string, tw *tar.Writer) error {
	in, err := os.Open(rootfs)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := writeLayer(bufio.NewReaderSize(in, 1<<20), tw, func(string) bool { return true }); err != nil {
		return fmt.Errorf("%s: %w", rootfs, err)
	}
	return nil
}

// debianImage writes the docker-archive of im (a debian: source) into dir.
func debianImage(ctx context.Context, im *ContainerImage, dir string, log func(string)) (string, error) {
	d := im.Debian
	rootfs, err := d.buildRootfs(ctx, dir, log)
	if err != nil {
		return "", err
	}
	layerFile := strings.TrimSuffix(rootfs, ".tar") + ".layer.tar"
	if len(d.Keep) > 0 {
		layerFile = strings.TrimSuffix(rootfs, ".tar") + "-keep-" + d.keepKey() + ".layer.tar"
	}
	if _, err := os.Stat(layerFile); err != nil {
		if err := rootfsLayer(rootfs, layerFile, d.Keep); err != nil {
			return "", err
		}
	}
	layer, err := tarball.LayerFromFile(layerFile)
	if err != nil {
		return "", err
	}
	createdBy := "ecs-image: mmdebstrap --variant=essential " + d.Suite + " " + strings.Join(d.Packages, " ")
	if len(d.Keep) > 0 {
		createdBy += "; keep " + strings.Join(d.Keep, " ")
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: layerEpoch}, CreatedBy: createdBy,
	}})
	if err != nil {
		return "", err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: layerEpoch}
	cf.Config.Entrypoint = d.Entrypoint
	cf.Config.Cmd = d.Cmd
	cf.Config.User = d.User
	cf.Config.WorkingDir = d.WorkingDir
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, d.Env...)
	if len(d.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range d.Ports {
			cf.Config.ExposedPorts[strconv.Itoa(p)+"/tcp"] = struct{}{}
		}
	}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.title": im.Tags[0],
		"org.opencontainers.image.description": "Debian " + d.Suite + ": " + strings.Join(d.Packages, " ")}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return "", err
	}
	refs := map[name.Reference]v1.Image{}
	for _, t := range im.Tags {
		tag, err := name.NewTag(t)
		if err != nil {
			return "", err
		}
		refs[tag] = img
	}
	out := filepath.Join(dir, im.Name)
	f, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Abort()
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		return "", err
	}
	return out, f.Commit()
}
