package images

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// ResolveOptions refine Resolve. The zero value is fine for catalog names.
type ResolveOptions struct {
	// Checksum for a URL reference (sha256:HEX, sha512:HEX, file:URL).
	Checksum string
	// Insecure allows a URL without a checksum.
	Insecure bool
	// Format is the declared format of a URL or local file ("" = probe).
	Format string
	// User overrides the default user (default: the catalog's; for URLs and
	// files "ubuntu" if the name contains "ubuntu", else "debian").
	User string
	// Firmware overrides bios/uefi (default: the catalog's, else bios).
	Firmware string
	// Cache is the cache to use (nil: DefaultCache()).
	Cache *Cache
	// Catalog is the catalog to use (nil: LoadCatalog()).
	Catalog *Catalog
}

// Resolve turns a base reference into a local, inspected base image:
//
//   - a catalog name or alias (e.g. "debian-12", "jammy"): fetched and
//     verified with the catalog's checksum, cached;
//   - an http(s):// or file:// URL: fetched with opts.Checksum, cached;
//   - a path to an existing local file: inspected and used in place
//     (compressed .xz/.gz/.bz2 files are decompressed into the cache);
//   - "build" or "build:SUITE": the base built from the default mirror
//     (BuildBase; needs root on a cache miss).
func Resolve(ctx context.Context, ref string, opts ResolveOptions) (*Base, error) {
	c := opts.Cache
	if c == nil {
		c = DefaultCache()
	}
	override := func(b *Base) *Base {
		if opts.User != "" {
			b.User = opts.User
		}
		if opts.Firmware != "" {
			b.Firmware = opts.Firmware
		}
		return b
	}
	if opts.Firmware != "" && opts.Firmware != "bios" && opts.Firmware != "uefi" {
		return nil, &InputError{Field: "firmware", Msg: fmt.Sprintf("%q: want bios or uefi", opts.Firmware)}
	}
	switch {
	case ref == "build" || strings.HasPrefix(ref, "build:"):
		suite := strings.TrimPrefix(strings.TrimPrefix(ref, "build"), ":")
		b, err := BuildBase(ctx, c, BuildOptions{Suite: suite})
		if err != nil {
			return nil, err
		}
		return withInfo(ctx, override(b))
	case strings.Contains(ref, "://"):
		e, err := Fetch(ctx, c, FetchRequest{URL: ref, Checksum: opts.Checksum, Insecure: opts.Insecure, Format: opts.Format})
		if err != nil {
			return nil, err
		}
		b := &Base{Path: c.Path(e), Format: e.Format, Digest: e.Digest, User: guessUser(ref), Firmware: "bios", Arch: "amd64"}
		return withInfo(ctx, override(b))
	}
	if fi, err := os.Stat(ref); err == nil && !fi.IsDir() {
		return resolveFile(ctx, c, ref, opts, override)
	}
	cat := opts.Catalog
	if cat == nil {
		var err error
		if cat, err = LoadCatalog(); err != nil {
			return nil, err
		}
	}
	ce := cat.Lookup(ref)
	if ce == nil {
		return nil, &InputError{Field: "base", Msg: fmt.Sprintf("%q is not a catalog name (%s), a URL, an existing file or \"build\"", ref, strings.Join(cat.Names(), ", "))}
	}
	e, err := Fetch(ctx, c, FetchRequest{URL: ce.URL, Checksum: ce.Checksum, Format: ce.Format})
	if err != nil {
		return nil, err
	}
	b := &Base{Name: ce.Name, Path: c.Path(e), Format: e.Format, Digest: e.Digest, User: ce.User, Firmware: ce.Firmware, Arch: ce.Arch}
	return withInfo(ctx, override(b))
}

func resolveFile(ctx context.Context, c *Cache, path string, opts ResolveOptions, override func(*Base) *Base) (*Base, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(filepath.Ext(abs)) {
	case ".xz", ".gz", ".bz2":
		e, err := Fetch(ctx, c, FetchRequest{URL: abs, Checksum: opts.Checksum, Insecure: true, Format: opts.Format})
		if err != nil {
			return nil, err
		}
		b := &Base{Path: c.Path(e), Format: e.Format, Digest: e.Digest, User: guessUser(abs), Firmware: "bios", Arch: "amd64"}
		return withInfo(ctx, override(b))
	}
	info, err := Inspect(ctx, abs, opts.Format)
	if err != nil {
		return nil, err
	}
	sum, _, err := atomicfile.SHA256File(ctx, abs)
	if err != nil {
		return nil, err
	}
	if opts.Checksum != "" && strings.HasPrefix(opts.Checksum, "sha256:") && !strings.EqualFold(opts.Checksum, "sha256:"+sum) {
		return nil, &ChecksumError{URL: abs, Expected: opts.Checksum, Actual: "sha256:" + sum}
	}
	b := &Base{Path: abs, Format: info.Format, Digest: "sha256:" + sum, User: guessUser(abs), Firmware: "bios", Arch: "amd64", Info: info}
	return override(b), nil
}

func withInfo(ctx context.Context, b *Base) (*Base, error) {
	info, err := Inspect(ctx, b.Path, b.Format)
	if err != nil {
		return nil, err
	}
	b.Info = info
	return b, nil
}

func guessUser(ref string) string {
	if strings.Contains(strings.ToLower(filepath.Base(ref)), "ubuntu") {
		return "ubuntu"
	}
	return "debian"
}
