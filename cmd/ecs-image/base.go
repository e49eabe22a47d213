//go:build !ecsfront

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/qemuimg"
)

var baseCmd = &cobra.Command{
	Use:   "base",
	Short: "Base images: catalog, verified fetch, inspection, build from a package mirror",
	Long: `Every ECS build starts from a base image: a cloud image from the catalog
(Ubuntu xenial…noble, Debian 12), any image URL with a checksum, or a base
built here from a Debian/Ubuntu package mirror (for air-gapped sites).
Bases are cached under ` + "`$ECS_IMAGE_CACHE`" + ` (default $XDG_CACHE_HOME/ecs-image or
~/.cache/ecs-image), in images/, keyed by digest.`,
}

var baseBuildFlags struct {
	suite, mirror, size, output, keyring string
	bootstrap, kernel                    string
	packages                             []string
}

var baseBuildCmd = &cobra.Command{
	Use:   "build",
	Short: "Build a bootable BIOS cloud image from a package mirror (needs root)",
	Long: `Build a bootable BIOS cloud base image from a Debian (or Ubuntu) package
mirror: mmdebstrap (debootstrap as fallback) with a kernel, cloud-init
(NoCloud, ConfigDrive, EC2, GCE…), openssh-server, growpart, sudo and locales;
an MBR-partitioned disk with one ext4 partition made without loop devices
(mke2fs -d), GRUB written to the MBR and the post-MBR gap, serial console on
ttyS0; converted to compressed qcow2.

The result is cached, keyed by the recipe (suite, mirror, size, packages,
recipe version): a second build is instant. Without -o, only the cached
image's absolute path is printed on stdout (logs go to stderr). Needs root.`,
	Example: `  # Debian 12 from deb.debian.org (the default), print the cached path
  sudo ecs-image base build

  # From a site mirror, 8 GiB disk, copied to a file
  sudo ecs-image base build --mirror http://mirror.example.org/debian --size 8G -o base.qcow2

  # With Debian's cloud kernel, as Debian's official genericcloud images
  sudo ecs-image base build --kernel cloud

  # Ubuntu 22.04 from an Ubuntu mirror (untested on this project's CI)
  sudo ecs-image base build --suite jammy --mirror http://archive.ubuntu.com/ubuntu`,
	Args: exactArgs(0),
	RunE: func(cmd *cobra.Command, args []string) error {
		f := baseBuildFlags
		size, err := images.ParseSize(f.size)
		if err != nil {
			return badInputf("--size: %v", err)
		}
		if f.keyring != "" {
			if _, err := os.Stat(f.keyring); err != nil {
				return badInputf("--keyring: %v", err)
			}
			f.keyring = absPath(f.keyring)
		}
		b, err := images.BuildBase(cmd.Context(), images.DefaultCache(), images.BuildOptions{
			Suite: f.suite, Mirror: f.mirror, Size: size, Packages: f.packages, Keyring: f.keyring,
			Bootstrap: f.bootstrap, Kernel: f.kernel,
		})
		if err != nil {
			return err
		}
		path := b.Path
		if f.output != "" {
			if path, err = images.Export(cmd.Context(), b, f.output); err != nil {
				return err
			}
		}
		fmt.Fprintln(cmd.OutOrStdout(), path)
		return nil
	},
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

func init() {
	fl := baseBuildCmd.Flags()
	fl.StringVar(&baseBuildFlags.suite, "suite", images.DefaultSuite, "Debian or Ubuntu suite (codename)")
	fl.StringVar(&baseBuildFlags.mirror, "mirror", "", "package mirror URL (default "+images.DefaultMirror+", or "+images.DefaultUbuntuMirror+" for Ubuntu suites)")
	fl.StringVar(&baseBuildFlags.size, "size", "4G", "virtual disk size (growpart enlarges the partition when the disk is resized)")
	fl.StringVarP(&baseBuildFlags.output, "output", "o", "", "also write the image to FILE (qcow2; raw if FILE ends in .raw or .img)")
	fl.StringArrayVar(&baseBuildFlags.packages, "package", nil, "extra package to install (repeatable)")
	fl.StringVar(&baseBuildFlags.bootstrap, "bootstrap", "", "mmdebstrap or debootstrap (default: mmdebstrap if installed, else debootstrap)")
	fl.StringVar(&baseBuildFlags.kernel, "kernel", images.KernelGeneric, "kernel flavour: generic (linux-image-amd64) or cloud (linux-image-cloud-amd64, as in Debian's cloud images: no AHCI or VMware drivers; Debian only)")
	fl.StringVar(&baseBuildFlags.keyring, "keyring", "", "keyring file for the mirror's Release signature (default: the host's keyrings)")
	baseCmd.AddCommand(baseBuildCmd)

	baseListCmd.Flags().BoolVar(&baseListJSON, "json", false, "print JSON instead of a table")
	baseCmd.AddCommand(baseListCmd)

	ff := baseFetchCmd.Flags()
	ff.StringVar(&baseFetchFlags.checksum, "checksum", "", "sha256:HEX, sha512:HEX or file:URL of a SHA256SUMS-style file (required for URLs)")
	ff.BoolVar(&baseFetchFlags.insecure, "insecure", false, "allow a URL without checksum (not recommended)")
	ff.StringVar(&baseFetchFlags.format, "format", "", "expected disk format after decompression: qcow2 or raw (default: the catalog's, else probed)")
	baseCmd.AddCommand(baseFetchCmd)

	baseInspectCmd.Flags().StringVar(&baseInspectFlags.format, "format", "", "declared format to check: qcow2 or raw")
	baseInspectCmd.Flags().BoolVar(&baseInspectFlags.json, "json", false, "print JSON")
	baseCmd.AddCommand(baseInspectCmd)
	rootCmd.AddCommand(baseCmd)
	badInputCheckers = append(badInputCheckers, func(err error) bool {
		var ie *images.InputError
		var me *qemuimg.ImageError
		var ce *images.CatalogError
		return errors.As(err, &ie) || errors.As(err, &me) || errors.As(err, &ce)
	})
}

var baseListJSON bool

var baseListCmd = &cobra.Command{
	Use:   "list",
	Short: "List the catalog of known base images",
	Long: `List the base image catalog: the built-in one, merged with the user's
catalog file ($ECS_IMAGE_CATALOG, else $XDG_CONFIG_HOME/ecs-image/catalog.yml,
else ~/.config/ecs-image/catalog.yml), whose entries add or replace bases.
CACHED tells whether the base is already in the local cache.`,
	Example: `  ecs-image base list
  ecs-image base list --json | jq -r '.[].name'`,
	Args: exactArgs(0),
	RunE: func(cmd *cobra.Command, args []string) error {
		cat, err := images.LoadCatalog()
		if err != nil {
			return err
		}
		c := images.DefaultCache()
		type row struct {
			*images.CatalogEntry
			Cached string `json:"cached,omitempty"`
		}
		var rows []row
		for _, e := range cat.Entries {
			r := row{CatalogEntry: e}
			if ce, err := c.Lookup(images.FetchKey(e.URL, e.Checksum)); err == nil && ce != nil {
				r.Cached = c.Path(ce)
			}
			rows = append(rows, r)
		}
		out := cmd.OutOrStdout()
		if baseListJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(rows)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tALIASES\tFORMAT\tFIRMWARE\tUSER\tCACHED\tDESCRIPTION")
		for _, r := range rows {
			cached := "no"
			if r.Cached != "" {
				cached = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, strings.Join(r.Aliases, ","), r.Format, r.Firmware, r.User, cached, r.Description)
		}
		return tw.Flush()
	},
}

var baseFetchFlags struct {
	checksum, format string
	insecure         bool
}

var baseFetchCmd = &cobra.Command{
	Use:   "fetch NAME|URL",
	Short: "Download a base image into the cache, verifying its checksum",
	Long: `Download a base image (a catalog name, or an http/https/file URL or local
path) into the cache and print the cached file's absolute path on stdout.

The checksum is mandatory for URLs: --checksum sha256:HEX (or sha512:HEX),
or --checksum file:URL naming a checksum file in GNU ("HEX  name") or BSD
("SHA256 (name) = HEX") format. --insecure skips verification, with a
warning. Catalog bases carry their own checksum source. Files ending in .xz,
.gz or .bz2 are decompressed (the checksum is that of the compressed file).

The download goes to a temporary name, is verified, decompressed and
inspected (qemu-img info: declared format, no backing or data file, sane
size), and only then renamed into the cache, keyed by digest. A second fetch
of the same URL and checksum is a cache hit without network access. Ctrl-C
leaves nothing in the cache.`,
	Example: `  ecs-image base fetch debian-12
  ecs-image base fetch jammy
  ecs-image base fetch https://example.org/img/base.qcow2.xz \
      --checksum file:https://example.org/img/SHA256SUMS
  ecs-image base fetch ./my-base.qcow2 --checksum sha256:3f1c...`,
	Args: exactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		ref := args[0]
		f := baseFetchFlags
		req := images.FetchRequest{URL: ref, Checksum: f.checksum, Insecure: f.insecure, Format: f.format}
		if !strings.Contains(ref, "://") {
			if _, err := os.Stat(ref); err != nil {
				cat, err := images.LoadCatalog()
				if err != nil {
					return err
				}
				e := cat.Lookup(ref)
				if e == nil {
					return badInputf("%q is not a catalog name (%s), a URL or an existing file", ref, strings.Join(cat.Names(), ", "))
				}
				if f.checksum != "" {
					return badInputf("--checksum: %s has the catalog's checksum (%s); edit a user catalog to change it", e.Name, e.Checksum)
				}
				req = images.FetchRequest{URL: e.URL, Checksum: e.Checksum, Format: e.Format}
				if f.format != "" && f.format != e.Format {
					return badInputf("--format %s: catalog base %s is %s", f.format, e.Name, e.Format)
				}
			}
		}
		e, err := images.Fetch(cmd.Context(), images.DefaultCache(), req)
		if err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), images.DefaultCache().Path(e))
		return nil
	},
}

var baseInspectFlags struct {
	format string
	json   bool
}

var baseInspectCmd = &cobra.Command{
	Use:   "inspect FILE",
	Short: "Check that an image file is a safe, self-contained base",
	Long: `Inspect an image file the way every base is inspected before use: its
header is probed, then qemu-img info --output=json is consulted. Refused
(exit 2): a format other than the declared one, qcow2 images with a backing
file or an external data file (a crafted image could make QEMU read host
files), images marked corrupt, virtual sizes of 0 or above 2 TiB, and files
that are not disk images (HTML error pages, ISOs, compressed files).`,
	Example: `  ecs-image base inspect ~/Downloads/base.qcow2
  ecs-image base inspect --format raw disk.img --json`,
	Args: exactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		if _, err := os.Stat(args[0]); err != nil {
			return badInput(err)
		}
		info, err := images.Inspect(cmd.Context(), args[0], baseInspectFlags.format)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if baseInspectFlags.json {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(info)
		}
		fmt.Fprintf(out, "path:         %s\nformat:       %s\nvirtual size: %d (%s)\nfile size:    %d\n",
			info.Path, info.Format, info.VirtualSize, humanBytes(info.VirtualSize), info.ActualSize)
		if info.Compat != "" {
			fmt.Fprintf(out, "qcow2 compat: %s\n", info.Compat)
		}
		fmt.Fprintln(out, "ok: no backing file, no external data file")
		return nil
	},
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
