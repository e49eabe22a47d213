//go:build !ecsfront

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/formats"
)

func init() {
	badInputCheckers = append(badInputCheckers, formats.IsBadInput)

	var (
		names   []string
		out     string
		outDir  string
		variant string
		force   bool
		opts    formats.Options
	)
	cmd := &cobra.Command{
		Use:   "convert IN.qcow2 -f FORMAT[,FORMAT...] (-o OUT | -d DIR)",
		Short: "Convert a qcow2 image into release formats (vmdk, ova, vhd, boxes, ...)",
		Long: `Convert a standalone qcow2 image into one or more output formats with the
same writers the builder uses. The input is inspected like a base (header,
qemu-img info, qemu-img check): images with a backing file, an external data
file, or a damaged structure are refused. Conversions go through qemu-img;
the stream VMDK (vmdk, ova, ami, vagrant-virtualbox) is deflated on every
core from qemu-img's raw disk, at deflate level ECS_IMAGE_VMDK_LEVEL (1–9,
default 1, the fastest; 6 is about qemu-img's size) (ECS_IMAGE_VMDK_WRITER=
qemu-img: qemu-img's own single-threaded writer).

With one format, -o names the output file. With several formats (or -d),
the outputs are written into DIR as BASE+extension, in parallel (at most one
per CPU); BASE defaults to the input's name without .qcow2. Outputs are
written under temporary names and renamed only when all succeeded, so an
error or Ctrl-C leaves nothing half-written. A missing output directory
(DIR, or OUT's) is created, and removed again if the conversion fails.
An existing output file is refused (exit 2) unless --force is given.

Formats:
` + formatList() + `
Vagrant boxes carry Vagrant's public insecure key and are refused with
--variant production.`,
		Example: `  ecs-image convert ecs.qcow2 -f vmdk -o ecs.vmdk
  ecs-image convert ecs.qcow2 -f ova --product "ECS appliance" --product-version 1.4.0 -o ecs-1.4.0.ova
  ecs-image convert ecs.qcow2 -f raw,vhd,gce,vagrant-libvirt -d out/`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in := args[0]
			if len(names) == 0 {
				return badInputf("convert: -f FORMAT is required (one of %s)", strings.Join(formats.Names(), ", "))
			}
			if err := formats.CheckVariant(variant, names); err != nil {
				return err
			}
			for _, n := range names {
				if _, err := formats.Lookup(n); err != nil {
					return err
				}
			}
			if (out == "") == (outDir == "") {
				return badInputf("convert: give exactly one of -o OUT (one format) or -d DIR")
			}
			if out != "" && len(names) != 1 {
				return badInputf("convert: -o takes one format; use -d DIR for %d formats", len(names))
			}
			base := strings.TrimSuffix(filepath.Base(in), ".qcow2")
			if !force {
				targets := []string{out}
				if out == "" {
					targets = targets[:0]
					for _, n := range names {
						f, _ := formats.Lookup(n)
						targets = append(targets, filepath.Join(outDir, base+f.Ext))
					}
				}
				for _, t := range targets {
					if err := atomicfile.CheckTarget(t); err != nil {
						return badInput(err)
					}
					if _, err := os.Lstat(t); err == nil {
						return badInputf("%s: file exists (use --force to overwrite)", t)
					}
				}
			}
			img, err := formats.Inspect(cmd.Context(), in)
			if err != nil {
				return err
			}
			if out != "" {
				undo, err := makeDir(filepath.Dir(out))
				if err != nil {
					return err
				}
				if err := formats.Write(cmd.Context(), img, names[0], out, opts); err != nil {
					undo()
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), out)
				return nil
			}
			undo, err := makeDir(outDir)
			if err != nil {
				return err
			}
			arts, err := formats.Emit(cmd.Context(), img, outDir, base, names, opts)
			if err != nil {
				undo()
				return err
			}
			for _, a := range arts {
				fmt.Fprintln(cmd.OutOrStdout(), a.Path)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVarP(&names, "format", "f", nil, "output format(s), comma-separated or repeated")
	f.StringVarP(&out, "output", "o", "", "output file (one format)")
	f.StringVarP(&outDir, "dir", "d", "", "output directory (any number of formats)")
	f.BoolVar(&force, "force", false, "replace existing output files")
	f.StringVar(&variant, "variant", "", "image variant (dev, test, production); production refuses Vagrant boxes")
	f.StringVar(&opts.Product, "product", "", `product name in OVF descriptors and boxes (default "ECS appliance")`)
	f.StringVar(&opts.Vendor, "vendor", "", `vendor in OVF descriptors (default "ECS")`)
	f.StringVar(&opts.Version, "product-version", "", `product version in OVF descriptors (default "0")`)
	f.IntVar(&opts.CPUs, "cpus", 0, "virtual CPUs in OVF descriptors and boxes (default 2)")
	f.IntVar(&opts.MemoryMiB, "memory", 0, "memory in MiB in OVF descriptors and boxes (default 2048)")
	rootCmd.AddCommand(cmd)
}

func formatList() string {
	var b strings.Builder
	for _, n := range formats.Names() {
		f, _ := formats.Lookup(n)
		fmt.Fprintf(&b, "  %-19s %s\n", n, f.Description)
	}
	return b.String()
}

// makeDir creates the output directory dir (0755) and its missing parents;
// undo removes what it created if still empty (for a failed conversion).
func makeDir(dir string) (undo func(), err error) {
	undo, err = atomicfile.MkdirAllUndo(dir, 0o755)
	if err != nil {
		return nil, badInputf("output directory %s: %v", dir, err)
	}
	return undo, nil
}

// checkDir accepts an existing directory (an input such as a release's).
func checkDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return badInputf("directory %s: %v", dir, err)
	}
	if !st.IsDir() {
		return badInputf("directory %s: not a directory", dir)
	}
	return nil
}
