//go:build !ecsfront

package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/release"
)

// passphraseEnv may hold the signing key's passphrase.
const passphraseEnv = "ECS_IMAGE_SIGNING_PASSPHRASE"

func init() {
	badInputCheckers = append(badInputCheckers, release.IsBadInput)
	rootCmd.AddCommand(releaseCmd(), publishCmd())
}

func releaseCmd() *cobra.Command {
	var key, passFile, buildManifest, gitRev string
	cmd := &cobra.Command{
		Use:   "release DIR",
		Short: "Write SHA256SUMS, its OpenPGP signature and manifest.json for the artifacts in DIR",
		Long: `Turn a directory of build artifacts into a release.

Every regular file in DIR is an artifact, except hidden files and the
release's own files (SHA256SUMS, SHA256SUMS.asc, manifest.json,
NAME.build.json, build-manifest.json). ecs-image release writes:

  manifest.json   every artifact with format, size and sha256, plus the
                  builder's record (the build manifest in DIR, or
                  --build-manifest): base image name and digest, template
                  digest, variant, builder version, git revision, build time
                  and the guest package list
  SHA256SUMS      GNU sha256sum format, covering the artifacts and manifest.json
  SHA256SUMS.asc  with --key: an armored detached OpenPGP signature of
                  SHA256SUMS (check it with gpg --verify SHA256SUMS.asc SHA256SUMS)

--key is an armored secret key file (gpg --armor --export-secret-keys KEYID).
A protected key is unlocked with the passphrase read from --key-passphrase-file
or from $` + passphraseEnv + `.`,
		Example: `  ecs-image release out/
  ecs-image release out/ --key release-key.asc --key-passphrase-file /run/secrets/pass`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if err := checkDir(dir); err != nil {
				return err
			}
			opts := release.Options{BuildManifest: buildManifest, GitRevision: gitRev, FallbackGitRevision: gitHead()}
			if key != "" {
				pass, err := readPassphrase(passFile)
				if err != nil {
					return err
				}
				if opts.Signer, err = release.LoadSigner(key, pass); err != nil {
					return err
				}
			} else if passFile != "" {
				return badInputf("--key-passphrase-file needs --key")
			}
			m, err := release.Make(cmd.Context(), dir, opts)
			if err != nil {
				return err
			}
			for _, a := range m.Artifacts {
				fmt.Fprintf(cmd.OutOrStdout(), "%s  %s\n", a.SHA256, a.Name)
			}
			if m.SigningKey != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "signed SHA256SUMS with key %s\n", m.SigningKey)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&key, "key", "", "armored OpenPGP secret key file to sign SHA256SUMS with")
	f.StringVar(&passFile, "key-passphrase-file", "", "file holding the key's passphrase (else $"+passphraseEnv+")")
	f.StringVar(&buildManifest, "build-manifest", "", "the builder's manifest (default DIR/build-manifest.json or the one DIR/*.build.json; optional)")
	f.StringVar(&gitRev, "git-revision", "", "git revision to record (default: the build manifest's, else HEAD of the current directory's repository)")
	return cmd
}

// gitHead is the current directory's git HEAD, or "" outside a work tree.
func gitHead() string {
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func readPassphrase(file string) ([]byte, error) {
	if file == "" {
		return []byte(os.Getenv(passphraseEnv)), nil
	}
	b, err := readInput("key-passphrase-file", file)
	if err != nil {
		return nil, err
	}
	return []byte(strings.TrimRight(string(b), "\r\n")), nil
}

func publishCmd() *cobra.Command {
	var to, verifyKey string
	var s3o release.S3Options
	cmd := &cobra.Command{
		Use:   "publish DIR --to URL",
		Short: "Upload a release directory to file:// or s3:// (manifest last, idempotent)",
		Long: `Publish a release made by 'ecs-image release'.

SHA256SUMS is checked against every file it lists before anything is
uploaded (and, with --verify-key, SHA256SUMS.asc against that public key).
Artifacts go first, then SHA256SUMS and its signature, and manifest.json
last: a reader who sees manifest.json sees the whole release. Objects already
at the destination with the same SHA-256 are skipped, so re-running after an
interruption uploads only what is missing. A different manifest.json already
at the destination is deleted before the upload starts.

Destinations:
  file:///srv/releases/ecs/1.4.0   a local directory (created if missing)
  s3://bucket/prefix               S3 or an S3-compatible server (--endpoint);
                                   large files go multipart; credentials from
                                   the usual AWS chain (AWS_ACCESS_KEY_ID, ...)`,
		Example: `  ecs-image publish out/ --to file:///srv/releases/ecs/1.4.0
  ecs-image publish out/ --to s3://ecs-releases/ecs/1.4.0 --verify-key release-key.pub.asc
  ecs-image publish out/ --to s3://releases/ecs --endpoint http://127.0.0.1:7070`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if to == "" {
				return badInputf("publish: --to URL is required (file:///path or s3://bucket/prefix)")
			}
			if err := checkDir(dir); err != nil {
				return err
			}
			t, err := release.OpenTarget(cmd.Context(), to, s3o)
			if err != nil {
				return err
			}
			rep, err := release.Publish(cmd.Context(), dir, t, release.PublishOptions{VerifyKey: verifyKey})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published %s: %d uploaded, %d already there\n", t, len(rep.Uploaded), len(rep.Skipped))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "destination: file:///path or s3://bucket/prefix")
	f.StringVar(&verifyKey, "verify-key", "", "armored public key; require SHA256SUMS.asc to be signed by it")
	f.StringVar(&s3o.Endpoint, "endpoint", "", "S3 endpoint URL for S3-compatible servers (path-style)")
	f.StringVar(&s3o.Region, "region", "", "AWS region (default from the AWS config, else us-east-1)")
	cmd.AddCommand(publishAWSCmd())
	return cmd
}

func publishAWSCmd() *cobra.Command {
	var bucket, prefix, region, endpoint string
	var o release.AMIOptions
	cmd := &cobra.Command{
		Use:   "aws IMAGE --bucket BUCKET --name AMI-NAME",
		Short: "Upload an ami image to S3, import it as a snapshot and register an AMI",
		Long: `Turn an image written with -f ami (a stream-optimized VMDK; .raw and .vhd
work too) into an EC2 AMI:

  1. upload IMAGE to s3://BUCKET/PREFIX/ (multipart; skipped when the same
     SHA-256 is already there),
  2. EC2 ImportSnapshot from that object (role --role, default vmimport),
     polled until the snapshot is ready,
  3. RegisterImage: HVM, ENA, IMDSv2 required, --arch, --boot-mode, root
     volume /dev/xvda (gp3, deleted on termination).

Prints the AMI id. Credentials and region come from the usual AWS chain.
The VM Import service role must exist (see AWS "VM Import/Export" docs).
Note: a directory to publish that is literally named "aws" must be given
as ./aws.`,
		Example: `  ecs-image publish aws out/ecs-1.4.0.ami.vmdk --bucket ecs-import --name ecs-1.4.0 --region eu-central-1
  ecs-image publish aws ecs.ami.vmdk --bucket b --name ecs --boot-mode legacy-bios`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bucket == "" {
				return badInputf("publish aws: --bucket is required")
			}
			ctx := cmd.Context()
			up, err := release.NewS3Target(ctx, bucket, strings.Trim(prefix, "/"), release.S3Options{Endpoint: endpoint, Region: region})
			if err != nil {
				return err
			}
			api, err := release.NewEC2Client(ctx, region)
			if err != nil {
				return err
			}
			id, err := release.ImportAMI(ctx, api, up, args[0], o)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&bucket, "bucket", "", "S3 bucket to stage the image in (required)")
	f.StringVar(&prefix, "prefix", "", "key prefix in the bucket")
	f.StringVar(&region, "region", "", "AWS region (default from the AWS config)")
	f.StringVar(&endpoint, "endpoint", "", "S3 endpoint URL override (testing)")
	f.StringVar(&o.Name, "name", "", "AMI name (required)")
	f.StringVar(&o.Description, "description", "", "AMI description")
	f.StringVar(&o.Architecture, "arch", "x86_64", "architecture: x86_64 or arm64")
	f.StringVar(&o.BootMode, "boot-mode", "uefi-preferred", "boot mode: uefi-preferred, uefi or legacy-bios")
	f.StringVar(&o.RoleName, "role", "vmimport", "VM Import service role name")
	f.StringVar(&o.VolumeType, "volume-type", "gp3", "root EBS volume type")
	f.DurationVar(&o.PollInterval, "poll", 15*time.Second, "how often to poll the import task")
	return cmd
}
