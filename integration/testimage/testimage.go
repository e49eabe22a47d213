// Package testimage makes the small container image that the end-to-end
// tests and the demo appliance bake in: the static HTTP server of
// ./server (built with CGO_ENABLED=0) as the only file of a one-layer
// image, written as a docker-archive tarball (what `docker save` writes and
// `docker load` reads) with go-containerregistry — no registry and no
// Docker daemon on the build host.
//
// The tarball holds manifest.json (config file, RepoTags, layers), the
// image config (Entrypoint /testapp, ExposedPorts 8080/tcp, Env PORT and
// APP_VERSION) and the layer. Docker's legacy "repositories" file is not
// written: Docker has read manifest.json instead since 1.10.
package testimage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Defaults of Options.
const (
	DefaultTag     = "ecs/testapp:latest"
	DefaultPort    = 8080
	DefaultVersion = "1"
	// ServerPackage is the Go package of the server binary.
	ServerPackage = "github.com/ecs-image/ecs-image/integration/testimage/server"
	// BinaryPath is where the server lives in the image.
	BinaryPath = "/testapp"
	// StandinPackage is the Go package of the ECS stand-ins (one binary,
	// one command per ECS container).
	StandinPackage = "github.com/ecs-image/ecs-image/integration/testimage/standin"
	// StandinPath is where the stand-in binary lives in its images.
	StandinPath = "/standin"
)

// Options describe one image.
type Options struct {
	// Tags are the RepoTags of the tarball (default DefaultTag).
	Tags []string
	// Version is $APP_VERSION in the image: the server shows it on every
	// page (default DefaultVersion). Images of different versions share
	// the binary layer and differ in their config.
	Version string
	// Port is $PORT and the exposed TCP port (default DefaultPort).
	Port int
	// Ports, when set, are the exposed TCP ports instead of Port, and
	// $PORT is not set (the program has its own defaults).
	Ports []int
	// Binary is the program's path in the image (default BinaryPath).
	Binary string
	// Cmd is the image's command (arguments of the entrypoint).
	Cmd []string
	// Title is the image's title label (default ecs-testapp).
	Title string
}

func (o *Options) defaults() {
	if len(o.Tags) == 0 {
		o.Tags = []string{DefaultTag}
	}
	if o.Version == "" {
		o.Version = DefaultVersion
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.Binary == "" {
		o.Binary = BinaryPath
	}
	if o.Title == "" {
		o.Title = "ecs-testapp"
	}
}

// BuildServer compiles the server for linux/amd64 with CGO_ENABLED=0 into
// dir and returns the binary's path. It runs the go command of $PATH (or
// /usr/local/go/bin/go) in the current directory, which must be inside
// this module.
func BuildServer(ctx context.Context, dir string) (string, error) {
	return buildPackage(ctx, dir, ServerPackage, "testapp")
}

// BuildStandin compiles the ECS stand-ins (StandinPackage) like BuildServer.
func BuildStandin(ctx context.Context, dir string) (string, error) {
	return buildPackage(ctx, dir, StandinPackage, "standin")
}

func buildPackage(ctx context.Context, dir, pkg, name string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out, nil
}

// epoch is the fixed time of files and history entries, so that the same
// binary and options give the same image digest.
var epoch = time.Unix(0, 0).UTC()

// Image returns the image with binary as /testapp.
func Image(binary string, o Options) (v1.Image, error) {
	o.defaults()
	if o.Port < 1 || o.Port > 65535 {
		return nil, fmt.Errorf("port %d out of range", o.Port)
	}
	data, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: o.Binary[1:], Mode: 0o755, Size: int64(len(data)),
		Typeflag: tar.TypeReg, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerData := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerData)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "ecs-image testimage", Comment: "static test server"}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	port := strconv.Itoa(o.Port)
	cf.Config.Entrypoint = []string{o.Binary}
	cf.Config.Cmd = o.Cmd
	cf.Config.ExposedPorts = map[string]struct{}{port + "/tcp": {}}
	cf.Config.Env = []string{"PORT=" + port, "APP_VERSION=" + o.Version}
	if len(o.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range o.Ports {
			cf.Config.ExposedPorts[strconv.Itoa(p)+"/tcp"] = struct{}{}
		}
		cf.Config.Env = []string{"APP_VERSION=" + o.Version}
	}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.title": o.Title, "org.opencontainers.image.version": o.Version}
	return mutate.ConfigFile(img, cf)
}

// Write writes the image as a docker-archive tarball at out, tagged with
// o.Tags: to a temporary file beside it, renamed at the end (mode 0644).
func Write(out, binary string, o Options) error {
	o.defaults()
	img, err := Image(binary, o)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for _, t := range o.Tags {
		tag, err := name.NewTag(t)
		if err != nil {
			return fmt.Errorf("tag %q: %w", t, err)
		}
		refs[tag] = img
	}
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", out, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// Build compiles the server into a temporary directory and writes the
// image tarball at out: BuildServer followed by Write.
func Build(ctx context.Context, out string, o Options) error {
	dir, err := os.MkdirTemp("", "ecs-testimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := BuildServer(ctx, dir)
	if err != nil {
		return err
	}
	return Write(out, bin, o)
}

// Standin is one of the ECS stand-in images: the tarball's file name and
// the image's options (the binary is BuildStandin's).
type Standin struct {
	File string
	Options
}

// Standins are the stand-in images of the ECS containers: ecs/ecs (web,
// worker, beat and smtpd are commands of one image, as in ECS), ecs/pdfas
// and ecs/mocca. version is $APP_VERSION ("" = DefaultVersion).
func Standins(version string) []Standin {
	img := func(file, tag, title string, cmd []string, ports ...int) Standin {
		return Standin{File: file, Options: Options{Tags: []string{tag}, Version: version, Binary: StandinPath,
			Cmd: cmd, Ports: ports, Title: title}}
	}
	return []Standin{
		img("ecs-standin.tar", "ecs/ecs:latest", "ecs-standin", []string{"simple"}, 5000, 1717, 8025),
		img("pdfas-standin.tar", "ecs/pdfas:latest", "ecs-standin-pdfas", []string{"pdfas"}, 8080),
		img("mocca-standin.tar", "ecs/mocca:latest", "ecs-standin-mocca", []string{"mocca"}, 8080),
	}
}

// BuildStandins compiles the stand-ins once and writes their image
// tarballs into dir; it returns their paths.
func BuildStandins(ctx context.Context, dir, version string) ([]string, error) {
	tmp, err := os.MkdirTemp("", "ecs-standin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bin, err := BuildStandin(ctx, tmp)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range Standins(version) {
		p := filepath.Join(dir, s.File)
		if err := Write(p, bin, s.Options); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
