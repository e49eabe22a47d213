// Package contract is the one home of what the builder writes into an
// appliance image and the in-VM agent reads back: the runtime layout's
// paths (ECS administration manual, "Runtime Layout"), the image index the
// containers and stack provisioners write beside the baked image tarballs,
// and the declared application stack. Both sides import it; it imports
// nothing from this module.
package contract

import (
	"path"
	"strings"
)

// The runtime layout.
const (
	AppDir      = "/app"
	AppEtc      = "/app/etc"
	DataDir     = "/data"
	VolatileDir = "/volatile"

	// ImagesDir holds the baked container image tarballs, ImagesIndex the
	// agent's index of them ([]ImageEntry) and ImagesManifest the
	// builder's record of their digests and sources.
	ImagesDir      = "/app/images"
	ImagesIndex    = "/app/images/manifest.json"
	ImagesManifest = "/app/images/images.json"

	// ComposeFile is the application's compose file: rendered by the agent
	// from the image index, or baked by the stack provisioner (StackFile
	// present), in which case the agent renders only its environment.
	ComposeFile = "/app/docker-compose.yml"
	// StackFile describes a declared stack (Stack, JSON).
	StackFile = "/app/stack.json"
	// ComposeDotEnv is the compose project's .env (variables the compose
	// file interpolates), rendered by the agent.
	ComposeDotEnv = "/app/.env"

	// Environment files of the application containers, rendered by the agent.
	ServiceURLsEnv = "/app/etc/service_urls.env"
	DatabaseEnv    = "/app/etc/database_url.env"

	// The appliance's TLS certificate; pdfas and mocca mount it read-only.
	ServerCert = "/app/etc/server.cert.pem"
	ServerKey  = "/app/etc/server.key.pem"

	// PostgreSQLDir is PostgreSQL's data directory root (the manual's
	// "referenced from moved /var/lib/postgresql").
	PostgreSQLDir = "/data/postgresql"
	// DockerDir is dockerd's data-root ("moved /var/lib/docker").
	DockerDir = "/volatile/docker"
	// DockerSeed is dockerd's image store made at build time (image/ and
	// overlay2/ of a data root holding the images of ImagesIndex, unpacked;
	// templates/files/appliance/docker-seed.sh): the agent copies it into
	// an empty DockerDir at first boot instead of loading the tarballs.
	DockerSeed = "/var/lib/ecs-image/docker-seed"
)

// DataDirs and VolatileDirs are created by the agent at every boot (on the
// ecs-data and ecs-volatile disks when attached).
var (
	DataDirs     = []string{"/data/etc", "/data/ecs-ca", "/data/ecs-gpg", "/data/ecs-storage-vault", "/data/ecs-pgdump", PostgreSQLDir}
	VolatileDirs = []string{"/volatile/ecs-cache", "/volatile/ecs-backup-test", "/volatile/redis", DockerDir}
)

// Link is a symlink of the runtime layout.
type Link struct{ Link, Target string }

// Links are the runtime layout's symlinks from /app into /data and /volatile.
var Links = []Link{
	{"/app/etc", "/data/etc"},
	{"/app/ecs-ca", "/data/ecs-ca"},
	{"/app/ecs-gpg", "/data/ecs-gpg"},
	{"/app/ecs-storage-vault", "/data/ecs-storage-vault"},
	{"/app/ecs-cache", "/volatile/ecs-cache"},
}

// VolumeRoots are the host directories a container volume may come from:
// data to keep, data that may be lost, and the runtime configuration.
var VolumeRoots = []string{DataDir, VolatileDir, AppEtc}

// CheckVolumeSource says why a bind mount's host path is not allowed by
// the runtime layout ("" when it is): it must be a clean absolute path
// inside one of VolumeRoots (the roots themselves are too wide).
func CheckVolumeSource(p string) string {
	if !path.IsAbs(p) {
		return "not an absolute host path (named and relative volumes would live outside the runtime layout)"
	}
	if path.Clean(p) != p || strings.Contains(p, "/../") {
		return "not a clean path"
	}
	for _, r := range VolumeRoots {
		if strings.HasPrefix(p, r+"/") {
			return ""
		}
	}
	return "outside the runtime layout (" + strings.Join(VolumeRoots, ", ") + ")"
}

// ImageEntry is one entry of ImagesIndex: a baked docker-archive (or OCI
// layout) tarball and what the agent does with it.
type ImageEntry struct {
	// File is the tarball (.tar or .tar.gz), relative to ImagesDir.
	File string `json:"file"`
	// Tags are applied after `docker load`; the first is what runs.
	Tags []string `json:"tags"`
	// ID is the image's config digest (sha256:…), when the builder knows
	// it: the agent checks that the loaded image is this one.
	ID string `json:"id,omitempty"`
	// Ref is the registry reference the builder pulled the image from (the
	// template's ref:): `ecs-agent update` looks it up again and replaces
	// the tarball with a newer image, unless it is pinned by digest.
	Ref string `json:"ref,omitempty"`
	// Service names the compose service (default: derived from the first
	// tag). Not used with a declared stack.
	Service string `json:"service,omitempty"`
	// Web marks the service nginx proxies to (default: the first image that
	// exposes a TCP port). Not used with a declared stack.
	Web bool `json:"web,omitempty"`
	// Port is the container port nginx proxies to (default: the lowest TCP
	// port the image exposes). Not used with a declared stack.
	Port int `json:"port,omitempty"`
	// Command overrides the image's command. Not used with a declared stack.
	Command []string `json:"command,omitempty"`
	// NoCompose loads the image without running it from a rendered compose
	// file. A declared stack loads every image and runs what its compose
	// file names.
	NoCompose bool `json:"no_compose,omitempty"`
}

// Stack is StackFile: the application stack declared in the build
// template, whose compose file is baked as ComposeFile.
type Stack struct {
	// Project is the compose project name.
	Project string `json:"project"`
	// Web is the loopback port of the web service nginx proxies / to; the
	// agent's readiness probe asks it.
	Web Endpoint `json:"web"`
	// Proxies are further nginx locations, e.g. /pdf-as-web → 5095.
	Proxies []Proxy `json:"proxies,omitempty"`
	// SMTPD is the loopback port stunnel hands incoming mail (25, 465) to;
	// 0 when the stack has no mail service.
	SMTPD int `json:"smtpd,omitempty"`
	// Services are the compose file's service names, in file order.
	Services []string `json:"services"`
	// Volumes are the compose file's bind mounts (host path → service:path).
	Volumes []Volume `json:"volumes,omitempty"`
}

// Endpoint is a compose service published on a loopback port.
type Endpoint struct {
	Service string `json:"service"`
	Port    int    `json:"port"`
}

// Proxy is an nginx location proxied to a loopback port.
type Proxy struct {
	Path string `json:"path"`
	Port int    `json:"port"`
}

// Volume is one bind mount of the declared stack.
type Volume struct {
	Service  string `json:"service"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}
