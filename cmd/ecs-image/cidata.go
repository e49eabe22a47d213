package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/env"
)

var cidataFlags struct {
	env, out, format, hostname string
	metaData, network, vendor  string
	extract                    string
	json                       bool
}

var cidataCmd = &cobra.Command{
	Use:   "cidata -e ENV.yml -o SEED [flags]",
	Short: "Write a cloud-init seed image (NoCloud ISO, config-2, vfat) from an env.yml",
	Long: `Write a cloud-init seed image carrying an env.yml as user-data.

The env.yml is validated first; an invalid one is reported as file:line:column
and nothing is written (exit code 2). The image is built in memory and written
to a temporary file next to SEED, mode 0600, then renamed over SEED.

Formats (--format):
  nocloud   ISO9660 with Rock Ridge and Joliet, volume id "cidata", files
            user-data (the env.yml, unchanged), meta-data (instance-id,
            local-hostname = appliance.domain), and network-config and
            vendor-data when given. The default.
  config-2  OpenStack config drive: ISO9660 labelled "config-2" with
            openstack/latest/user_data, meta_data.json (uuid, hostname, name)
            and network_data.json / vendor_data.json when given.
  vfat      FAT12 image labelled "cidata" with the NoCloud files.

The output is reproducible: the same inputs give a byte-identical image. Every
timestamp is $SOURCE_DATE_EPOCH when set, else 1980-01-01T00:00:00Z; the
instance-id (config-2: uuid) is derived from a hash of the contents.

--meta-data adds keys to the generated meta-data (a YAML or JSON mapping; its
keys win). --network-config is network config v1/v2 YAML for nocloud/vfat and
OpenStack network_data.json for config-2.`,
	Example: `  # NoCloud seed ISO for an appliance
  ecs-image cidata -e env.yml -o seed.iso

  # OpenStack config drive with static networking
  ecs-image cidata -e env.yml -o config-drive.iso --format config-2 --network-config network_data.json

  # FAT image, reproducible date
  SOURCE_DATE_EPOCH=1700000000 ecs-image cidata -e env.yml -o seed.img --format vfat

  # Read one back
  ecs-image cidata inspect seed.iso --extract ./seed`,
	Args: exactArgs(0),
	RunE: runCidata,
}

var cidataInspectCmd = &cobra.Command{
	Use:   "inspect SEED",
	Short: "Show (and optionally extract) the label and files of a seed image",
	Long: `Read a seed image back (ISO9660 or FAT) and print its file system, label,
format, instance-id, hostname and files with their sizes. ISO images are read
with an independent reader (github.com/kdomanski/iso9660), not the writer.

--extract DIR copies the files into DIR (created 0700; files 0600; names that
would leave DIR are refused; existing files are not overwritten).`,
	Example: `  ecs-image cidata inspect seed.iso
  ecs-image cidata inspect seed.iso --json
  ecs-image cidata inspect config-drive.iso --extract /tmp/cd`,
	Args: exactArgs(1),
	RunE: runCidataInspect,
}

func init() {
	f := cidataCmd.Flags()
	f.StringVarP(&cidataFlags.env, "env", "e", "", "env.yml to store as user-data (required)")
	f.StringVarP(&cidataFlags.out, "output", "o", "", "seed image to write (required)")
	f.StringVar(&cidataFlags.format, "format", "nocloud", "image format: nocloud, config-2 or vfat")
	f.StringVar(&cidataFlags.metaData, "meta-data", "", "YAML/JSON mapping of extra meta-data keys")
	f.StringVar(&cidataFlags.network, "network-config", "", "network config (nocloud/vfat: v1/v2 YAML; config-2: network_data.json)")
	f.StringVar(&cidataFlags.vendor, "vendor-data", "", "vendor-data file")
	f.StringVar(&cidataFlags.hostname, "hostname", "", "local-hostname (default: appliance.domain of the env.yml)")
	fi := cidataInspectCmd.Flags()
	fi.StringVar(&cidataFlags.extract, "extract", "", "extract the files into this directory")
	fi.BoolVar(&cidataFlags.json, "json", false, "print the result as JSON")
	cidataCmd.AddCommand(cidataInspectCmd)
	rootCmd.AddCommand(cidataCmd)

	badInputCheckers = append(badInputCheckers, func(err error) bool {
		var ie *cidata.InputError
		var ee *env.Error
		return errors.As(err, &ie) || errors.As(err, &ee)
	})
}

func runCidata(cmd *cobra.Command, args []string) error {
	fl := cidataFlags
	if fl.env == "" || fl.out == "" {
		return badInputf("cidata: -e ENV.yml and -o SEED are required\nSee 'ecs-image cidata --help'.")
	}
	if st, err := os.Stat(filepath.Dir(fl.out)); err != nil || !st.IsDir() {
		return badInputf("-o %s: directory %s does not exist", fl.out, filepath.Dir(fl.out))
	}
	if st, err := os.Stat(fl.out); err == nil && st.IsDir() {
		return badInputf("-o %s: is a directory", fl.out)
	}
	format, err := cidata.ParseFormat(fl.format)
	if err != nil {
		return badInputf("--format: %v", err)
	}
	o := cidata.Options{
		Format:            format,
		UserDataName:      fl.env,
		MetaDataName:      fl.metaData,
		NetworkConfigName: fl.network,
		VendorDataName:    fl.vendor,
		Hostname:          fl.hostname,
	}
	if o.UserData, err = readInput("env", fl.env); err != nil {
		return err
	}
	if len(o.UserData) > env.MaxSize {
		return badInputf("%s: larger than %d bytes", fl.env, env.MaxSize)
	}
	if o.MetaData, err = readInput("meta-data", fl.metaData); err != nil {
		return err
	}
	if o.NetworkConfig, err = readInput("network-config", fl.network); err != nil {
		return err
	}
	if o.VendorData, err = readInput("vendor-data", fl.vendor); err != nil {
		return err
	}
	seed, err := cidata.Prepare(o)
	if err != nil {
		return err
	}
	img, err := seed.Image()
	if err != nil {
		return err
	}
	if err := cmd.Context().Err(); err != nil {
		return err
	}
	// No signal handler runs for cidata (see run): a Ctrl-C before this
	// point ends the process with nothing written; from here the seed's
	// temporary file is written and renamed whole (a signal meanwhile is
	// held and dropped: the seed is complete).
	held := make(chan os.Signal, 1)
	signal.Notify(held, os.Interrupt, syscall.SIGTERM)
	err = cidata.WriteImage(fl.out, img)
	signal.Stop(held)
	if err != nil {
		return err
	}
	logrus.WithFields(logrus.Fields{
		"format":      seed.Format,
		"label":       seed.Label,
		"instance-id": seed.InstanceID,
		"hostname":    seed.Hostname,
		"bytes":       len(img),
	}).Infof("wrote %s", fl.out)
	fmt.Fprintln(cmd.OutOrStdout(), fl.out)
	return nil
}

func runCidataInspect(cmd *cobra.Command, args []string) error {
	path := args[0]
	if _, err := os.Stat(path); err != nil {
		return badInput(err)
	}
	info, err := cidata.Inspect(path)
	if err != nil {
		return badInput(err)
	}
	out := cmd.OutOrStdout()
	if cidataFlags.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(info); err != nil {
			return err
		}
	} else {
		format := string(info.Format)
		if format == "" {
			format = "unknown (not a NoCloud or config-2 seed)"
		}
		fmt.Fprintf(out, "file system: %s\nlabel:       %s\nformat:      %s\n", info.FS, info.Label, format)
		if info.InstanceID != "" {
			fmt.Fprintf(out, "instance-id: %s\n", info.InstanceID)
		}
		if info.Hostname != "" {
			fmt.Fprintf(out, "hostname:    %s\n", info.Hostname)
		}
		fmt.Fprintf(out, "%10s  %s\n", "SIZE", "FILE")
		for _, f := range info.Files {
			fmt.Fprintf(out, "%10d  %s\n", f.Size, f.Path)
		}
	}
	if dir := cidataFlags.extract; dir != "" {
		if err := cidata.Extract(path, dir); err != nil {
			return err
		}
		logrus.Infof("extracted %d files to %s", len(info.Files), dir)
	}
	return nil
}
