//go:build !ecsfront

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/release"
	"github.com/ecs-image/ecs-image/vmdkstream/grainstore"
)

var validateCmd = &cobra.Command{
	Use:   "validate TEMPLATE",
	Short: "Check a build template without building",
	Long: `Validate a build template in full — every field, every stage's
provisioners, the local files they upload, variants and output formats — and
print every problem as FILE:LINE:COLUMN: FIELD: MESSAGE. Nothing runs.
Exit code 2 when the template has problems.`,
	Example: `  ecs-image validate templates/ecs-appliance.yml
  ecs-image validate templates/test-small.yml && echo ok`,
	Args: exactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		t, err := template.Load(args[0])
		if err != nil {
			return err
		}
		stages := len(t.Stages)
		for _, v := range t.Variants {
			stages += len(v.Stages)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d stages, %d variants, outputs %s)\n", args[0], stages, len(t.Variants), strings.Join(t.Outputs, ", "))
		return nil
	},
}

var buildFlags struct {
	output, variant, accel string
	noCache, keepOnError   bool
	noChroot               bool
	set                    []string
	onError                string
	cacheRemote            string
	cacheRemoteMode        string
	cacheRemoteEndpoint    string
}

// cacheRemoteEnv sets --cache-remote when the flag is not given (CI).
const cacheRemoteEnv = "ECS_IMAGE_CACHE_REMOTE"

// remoteOptions checks the --cache-remote flags and sets the build's remote.
func remoteOptions(cmd *cobra.Command, o *builder.Options, url, mode, endpoint string) error {
	if !slices.Contains(builder.RemoteModes, mode) {
		return badInputf("--cache-remote-mode %q: want one of %s", mode, strings.Join(builder.RemoteModes, ", "))
	}
	remote, err := openRemote(cmd, url, endpoint)
	if err != nil {
		return err
	}
	if remote != nil {
		o.Remote, o.RemoteMode = remote, mode
	}
	return nil
}

// openRemote opens the remote stage cache s3://bucket/prefix ("" and no
// ECS_IMAGE_CACHE_REMOTE: none). The endpoint is --cache-remote-endpoint,
// else AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (path-style addressing).
func openRemote(cmd *cobra.Command, url, endpoint string) (*release.S3Target, error) {
	if url == "" {
		url = os.Getenv(cacheRemoteEnv)
	}
	if url == "" {
		return nil, nil
	}
	if !strings.HasPrefix(url, "s3://") {
		return nil, badInputf("--cache-remote %q: want s3://bucket/prefix", url)
	}
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL_S3")
	}
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	t, err := release.OpenTarget(ctx, url, release.S3Options{Endpoint: endpoint})
	if err != nil {
		var re *release.Error
		if errors.As(err, &re) {
			return nil, badInputf("--cache-remote %q: %s", url, re.Msg)
		}
		return nil, err
	}
	return t.(*release.S3Target), nil
}

// stdinTerminal tells whether stdin is a terminal (--on-error=ask needs one).
var stdinTerminal = func() bool { return term.IsTerminal(int(os.Stdin.Fd())) }

// onErrorOptions checks --on-error and sets up the question for ask.
func onErrorOptions(mode string, o *builder.Options, in io.Reader, out io.Writer) error {
	switch mode {
	case builder.OnErrorCleanup, builder.OnErrorAbort:
	case builder.OnErrorAsk:
		if !stdinTerminal() {
			return badInputf("--on-error=ask needs a terminal on stdin to ask; use --on-error=abort or cleanup")
		}
		o.Ask = askOnError(bufio.NewReader(in), out)
	default:
		return badInputf("--on-error %q: want one of %s", mode, strings.Join(builder.OnErrorModes, ", "))
	}
	o.OnError = mode
	return nil
}

// askOnError asks what to do about a failed step until the answer is
// one of [r]etry, [a]bort or [c]lean up (the default, also at end of input).
func askOnError(in *bufio.Reader, out io.Writer) func(string) (string, error) {
	return func(question string) (string, error) {
		for {
			fmt.Fprintf(out, "\n%s\n[r]etry the step, [a]bort and keep the stage's VM or chroot running, or [c]lean up and exit? [c] ", question)
			line, err := in.ReadString('\n')
			switch strings.ToLower(strings.TrimSpace(line)) {
			case "r", "retry":
				return builder.AskRetry, nil
			case "a", "abort":
				return builder.AskAbort, nil
			case "", "c", "cleanup", "clean up":
				if err != nil && line == "" {
					return builder.AskCleanup, err
				}
				return builder.AskCleanup, nil
			}
			if err != nil {
				return builder.AskCleanup, err
			}
			fmt.Fprintf(out, "unknown answer %q\n", strings.TrimSpace(line))
		}
	}
}

// settable are the template fields that --set KEY=VALUE overrides.
var settable = []string{"version"}

// parseSet reads --set KEY=VALUE overrides into the build options.
func parseSet(sets []string, o *builder.Options) error {
	for _, kv := range sets {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return badInputf("--set %s: want KEY=VALUE (keys: %s)", kv, strings.Join(settable, ", "))
		}
		switch k {
		case "version":
			if err := template.CheckVersion(v); err != nil {
				return badInputf("--set version: %v", err)
			}
			o.Version = v
		default:
			return badInputf("--set %s: unknown key %q (keys: %s)", kv, k, strings.Join(settable, ", "))
		}
	}
	return nil
}

var buildCmd = &cobra.Command{
	Use:   "build TEMPLATE",
	Short: "Build appliance images from a template",
	Long: `Build a template: the base image is booted under QEMU (KVM when it works,
else TCG) with a build-time cidata seed (ephemeral SSH key, build user),
each stage's provisioners run over SSH, and the result is generalised,
compacted and written to the output directory as NAME[-VARIANT].qcow2 plus
the template's other output formats and NAME[-VARIANT].build.json (the
build manifest: base and template digests, stage keys, package list).
The template's version (--set version=V overrides it) is the OVF product
version and the manifest's "version".

Every stage is cached as a qcow2 overlay on the previous one, keyed by its
parent, its definition and the content of the files it uploads: unchanged
stages are not run again, variants share the common stages, and a stage
that only places files (file, agent, containers provisioners) is applied
offline by a small helper VM instead of a full boot. Stages of packages
and files (and stages with 'mode: chroot') run natively on the build host,
chrooted into the disk, when ecs-image runs as root with FUSE and loop
devices: no emulated boot, no emulated dpkg. The cache lives under
$ECS_IMAGE_CACHE/stages (default ~/.cache/ecs-image/stages); see
'ecs-image cache'.

--cache-remote s3://bucket/prefix (or $ECS_IMAGE_CACHE_REMOTE) shares the
stage cache between builders through S3 or any S3-compatible server: a
stage missing locally is downloaded from the remote when it is there,
verified (sha256, its parent key and the build of the parent it was made
on, the disk's structure) and rebased onto the local parent; a stage built
or found locally is uploaded when the remote lacks it and holds the very
build of its parent it was made on (the first of racing builders wins). A
corrupt object is reported and rebuilt (and replaced); an unreachable remote
is one warning and the build goes on locally. The manifest marks the stages
downloaded ("remote": true).
--cache-remote-mode read lets pull-request builds read without writing.

Ctrl-C stops QEMU and removes temporary files: nothing is left at the
output paths.

--on-error says what a failed stage does (like Packer's -on-error):
cleanup (the default) stops its VM or chroot and removes everything; abort
leaves the stage's build VM running with its SSH port forward (or its
chroot mounted) and prints the exact ssh or nsenter command to get in and
the cleanup.sh to run when done; ask offers retry, abort or clean up on the
terminal (stdin must be one).`,
	Example: `  # The reference appliance, production variant, into ./output
  ecs-image build templates/ecs-appliance.yml --variant prod

  # Release 1.4.0: the OVF product version, NAME.build.json and the release say 1.4.0
  ecs-image build templates/ecs-appliance.yml --variant prod --set version=1.4.0

  # CI runner with an empty disk: share stages through S3 (AWS credential chain)
  ecs-image build templates/ecs-appliance.yml --cache-remote s3://ci-cache/ecs-image
  ECS_IMAGE_CACHE_REMOTE=s3://ci-cache/ecs-image ecs-image build templates/ecs-appliance.yml --cache-remote-mode read

  # Keep the failed stage's VM running to look around
  ecs-image build templates/test-small.yml --on-error=abort

  # Rebuild every stage, keep the disks and serial logs if it fails
  ecs-image build templates/test-small.yml -o /tmp/out --no-cache --keep-on-error`,
	Args: exactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		switch buildFlags.accel {
		case "", "auto", "kvm", "tcg":
		default:
			return badInputf("--accel: want auto, kvm or tcg, got %q", buildFlags.accel)
		}
		accel := buildFlags.accel
		if accel == "auto" {
			accel = ""
		}
		opts := builder.Options{
			Template: args[0], OutputDir: buildFlags.output, Variant: buildFlags.variant,
			NoCache: buildFlags.noCache, NoChroot: buildFlags.noChroot, KeepOnError: buildFlags.keepOnError, Accel: accel,
		}
		if err := parseSet(buildFlags.set, &opts); err != nil {
			return err
		}
		if err := remoteOptions(cmd, &opts, buildFlags.cacheRemote, buildFlags.cacheRemoteMode, buildFlags.cacheRemoteEndpoint); err != nil {
			return err
		}
		if err := onErrorOptions(buildFlags.onError, &opts, cmd.InOrStdin(), cmd.ErrOrStderr()); err != nil {
			return err
		}
		a, err := builder.Build(cmd.Context(), opts)
		if err != nil {
			return err
		}
		for _, f := range a.Files {
			fmt.Fprintln(cmd.OutOrStdout(), f.Path)
		}
		fmt.Fprintln(cmd.OutOrStdout(), a.ManifestPath)
		return nil
	},
}

var cacheCmd = &cobra.Command{
	Use:   "cache",
	Short: "Inspect and prune the builder's stage cache",
	Long: `The builder caches every stage of every build as a qcow2 overlay under
$ECS_IMAGE_CACHE/stages (default ~/.cache/ecs-image/stages), keyed by the
stage's parent, definition and uploaded files' content. Beside it,
vmdk-grains/ keeps the last stream VMDK of each output (a hard link) and an
index of its grains: the next build copies the compressed grains it shares
instead of deflating them again. With --remote, ls
and prune work on the stage cache shared on S3 ('build --cache-remote').`,
}

var cacheLsCmd = &cobra.Command{
	Use:   "ls",
	Short: "List cached stages",
	Example: `  ecs-image cache ls
  ecs-image cache ls --remote    # $ECS_IMAGE_CACHE_REMOTE`,
	Args: exactArgs(0),
	RunE: func(cmd *cobra.Command, args []string) error {
		if t, err := cacheRemote(cmd); err != nil || t != nil {
			if err != nil {
				return err
			}
			return cacheLsRemote(cmd, t)
		}
		c := builder.DefaultStageCache()
		ents, err := c.List()
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "KEY\tTEMPLATE\tSTAGE\tMODE\tSIZE\tCREATED\tLAST USED\tPARENT")
		for _, e := range ents {
			parent := e.Parent
			if len(parent) > 17 {
				parent = parent[:17]
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.0fM\t%s\t%s\t%s\n", e.Key[:12], e.Template, e.Name, e.Mode,
				float64(e.Size)/(1<<20), e.Created.Local().Format("2006-01-02 15:04"), e.LastUsed.Local().Format("2006-01-02 15:04"), parent)
		}
		w.Flush()
		fmt.Fprintf(cmd.ErrOrStderr(), "%d stages in %s\n", len(ents), c.Dir)
		stores, err := grainstore.List(c.GrainStores())
		if err != nil || len(stores) == 0 {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout())
		fmt.Fprintln(w, "VMDK GRAIN STORE\tSIZE\tGRAINS\tLAST USED\tSTATE")
		for _, st := range stores {
			state := "ok"
			switch {
			case st.Err != "":
				state = "unusable: " + st.Err
			case st.Shared:
				state = "ok, shares its blocks with an output"
			}
			fmt.Fprintf(w, "%s\t%.0fM\t%d\t%s\t%s\n", st.Key, float64(st.Size)/(1<<20), st.Grains, st.LastUsed.Local().Format("2006-01-02 15:04"), state)
		}
		w.Flush()
		fmt.Fprintf(cmd.ErrOrStderr(), "%d VMDK grain stores in %s\n", len(stores), c.GrainStores())
		return nil
	},
}

var cachePruneFlags struct {
	all       bool
	olderThan time.Duration
	keep      int
}

var cachePruneCmd = &cobra.Command{
	Use:   "prune",
	Short: "Remove stages not used recently (and the stages built on them)",
	Long: `Remove cached stages not used within --older-than (default 168h), or all
with --all, together with every stage built on a removed one, the
uncompressed copies of compressed bases that no remaining stage is built on
(made before --older-than), the stream VMDKs kept for reuse of their
compressed grains (vmdk-grains/) not used within --older-than, and the work
directories of builds that are no longer running.

With --remote (the shared stage cache of --cache-remote s3://bucket/prefix,
default $ECS_IMAGE_CACHE_REMOTE) it is pruned instead: objects uploaded before
--older-than, beyond the --keep newest of each template's stage, unusable
ones (unreadable, from an older ecs-image, or built on another build of their
parent than the remote's), and every object built on a removed one; uploads
left open (a builder killed mid-upload) started before --older-than are
aborted. A build re-uploads a stage it needs that was pruned.`,
	Example: `  ecs-image cache prune
  ecs-image cache prune --older-than 24h
  ecs-image cache prune --all
  ecs-image cache prune --cache-remote s3://ci-cache/ecs-image --older-than 720h --keep 3`,
	Args: exactArgs(0),
	RunE: func(cmd *cobra.Command, args []string) error {
		if cachePruneFlags.olderThan < 0 {
			return badInputf("--older-than: must not be negative")
		}
		if cachePruneFlags.keep < 0 {
			return badInputf("--keep: must not be negative")
		}
		before := time.Now().Add(-cachePruneFlags.olderThan)
		if cachePruneFlags.all {
			before = time.Now().Add(time.Hour)
		}
		if t, err := cacheRemote(cmd); err != nil || t != nil {
			if err != nil {
				return err
			}
			return cachePruneRemote(cmd, t, before, cachePruneFlags.keep)
		}
		if cachePruneFlags.keep != 0 {
			return badInputf("--keep: only with --remote")
		}
		removed, err := builder.DefaultStageCache().Prune(before)
		var freed int64
		for _, e := range removed {
			freed += e.Size
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s (%s/%s)\n", e.Key[:12], e.Template, e.Name)
		}
		if err != nil {
			return err
		}
		plain, plainFreed, err := builder.DefaultStageCache().PrunePlainBases(before)
		for _, p := range plain {
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s (uncompressed base copy, no stage uses it)\n", p)
		}
		var stores []grainstore.Info
		if err == nil {
			stores, err = grainstore.Prune(builder.DefaultStageCache().GrainStores(), before)
		}
		for _, st := range stores {
			if !st.Shared {
				freed += st.Size
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s (VMDK grain store of %s)\n", st.VMDK, st.Key)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "removed %d stages, %d base copies and %d VMDK grain stores, freed %.0f MiB\n", len(removed), len(plain), len(stores), float64(freed+plainFreed)/(1<<20))
		return err
	},
}

func init() {
	buildCmd.Flags().StringVarP(&buildFlags.output, "output", "o", "output", "output directory")
	buildCmd.Flags().StringVar(&buildFlags.variant, "variant", "", "variant to build (default: the template's default_variant)")
	buildCmd.Flags().BoolVar(&buildFlags.noCache, "no-cache", false, "rebuild every stage instead of using cached ones")
	buildCmd.Flags().BoolVar(&buildFlags.noChroot, "no-chroot", false, "build every stage that would run in a chroot on the build host in the booted image")
	buildCmd.Flags().BoolVar(&buildFlags.keepOnError, "keep-on-error", false, "keep the work directory (disks, serial logs) of a failed build")
	buildCmd.Flags().StringVar(&buildFlags.onError, "on-error", builder.OnErrorCleanup, "when a stage fails: cleanup, abort (keep its VM or chroot running and print how to get in) or ask (on a terminal)")
	buildCmd.Flags().StringArrayVar(&buildFlags.set, "set", nil, "override a template field, KEY=VALUE (repeatable; keys: "+strings.Join(settable, ", ")+")")
	buildCmd.Flags().StringVar(&buildFlags.cacheRemote, "cache-remote", "", "shared stage cache s3://bucket/prefix (default $"+cacheRemoteEnv+"); credentials from the AWS chain")
	buildCmd.Flags().StringVar(&buildFlags.cacheRemoteMode, "cache-remote-mode", builder.RemoteReadWrite, "read, write or readwrite: download stages from and/or upload stages to --cache-remote")
	buildCmd.Flags().StringVar(&buildFlags.cacheRemoteEndpoint, "cache-remote-endpoint", "", "S3 endpoint of --cache-remote for S3-compatible servers, path-style (default $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL)")
	buildCmd.Flags().StringVar(&buildFlags.accel, "accel", "", "accelerator: auto, kvm or tcg (default: the template's)")
	cachePruneCmd.Flags().BoolVar(&cachePruneFlags.all, "all", false, "remove every cached stage")
	cachePruneCmd.Flags().DurationVar(&cachePruneFlags.olderThan, "older-than", 7*24*time.Hour, "remove stages not used for this long")
	cachePruneCmd.Flags().IntVar(&cachePruneFlags.keep, "keep", 0, "with --remote: keep only the N newest objects of each template's stage (0: no limit)")
	addRemoteFlags(cacheLsCmd)
	addRemoteFlags(cachePruneCmd)
	cacheCmd.AddCommand(cacheLsCmd, cachePruneCmd)
	rootCmd.AddCommand(validateCmd, buildCmd, cacheCmd)
	badInputCheckers = append(badInputCheckers, template.IsError, formats.IsDriverError)
}
