//go:build !ecsfront

package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/builder/template"
)

var planFlags struct {
	json       bool
	baseDigest string
	noChroot   bool
}

// planOutput is what plan --json prints.
type planOutput struct {
	Template   string              `json:"template"`
	Name       string              `json:"name"`
	BaseDigest string              `json:"base_digest"`
	Jobs       []builder.PlanJob   `json:"jobs"`
	Matrix     []map[string]string `json:"matrix"`
}

var planCmd = &cobra.Command{
	Use:   "plan TEMPLATE",
	Short: "List a template's builds (variants × outputs) with their stage keys, for CI matrices",
	Long: `Print the builds of a template: one job per variant (or the template alone
when it has no variants) with the output formats it produces and the key and
mode of every stage, and of the generalised disk. Nothing is built. The
keys are those 'ecs-image build' would use on this host (stage modes depend
on root/FUSE for chroot stages; pass --no-chroot as the build does), so
a CI runner builds the same keys when it runs like the planning host.

The base is resolved (fetched into the cache if missing) for its digest,
unless --base-digest gives it.

--json prints {template, name, base_digest, jobs, matrix}: matrix is a list
of {"variant": NAME} ready for GitHub Actions (strategy.matrix.include:
${{ fromJSON(needs.plan.outputs.matrix) }}) or a GitLab parallel:matrix.`,
	Example: `  ecs-image plan templates/ecs-appliance.yml
  ecs-image plan templates/ecs-appliance.yml --json | jq -c .matrix`,
	Args: exactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		t, err := template.Load(args[0])
		if err != nil {
			return err
		}
		digest := planFlags.baseDigest
		if digest == "" {
			base, err := builder.ResolveBase(cmd.Context(), t)
			if err != nil {
				return err
			}
			digest = base.Digest
		} else if !strings.HasPrefix(digest, "sha256:") || len(digest) != len("sha256:")+64 {
			return badInputf("--base-digest %q: want sha256:<64 hex digits>", digest)
		}
		jobs, err := builder.PlanJobs(t, digest, planFlags.noChroot)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if planFlags.json {
			po := planOutput{Template: args[0], Name: t.Name, BaseDigest: digest, Jobs: jobs, Matrix: []map[string]string{}}
			for _, j := range jobs {
				po.Matrix = append(po.Matrix, map[string]string{"variant": j.Variant})
			}
			data, err := json.MarshalIndent(po, "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintln(out, string(data))
			return nil
		}
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "VARIANT\tOUTPUTS\tSTAGE\tMODE\tKEY\n")
		for _, j := range jobs {
			v := j.Variant
			if v == "" {
				v = "-"
			}
			for i, s := range j.Stages {
				outs := ""
				if i == 0 {
					outs = strings.Join(j.Outputs, ",")
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", v, outs, s.Name, s.Mode, s.Key)
			}
			fmt.Fprintf(w, "%s\t\t%s\t%s\t%s\n", v, "generalise", j.GeneraliseMode, j.GeneraliseKey)
		}
		return w.Flush()
	},
}

func init() {
	planCmd.Flags().BoolVar(&planFlags.json, "json", false, "print JSON (jobs and a CI matrix)")
	planCmd.Flags().StringVar(&planFlags.baseDigest, "base-digest", "", "the base's digest (sha256:HEX) instead of resolving the base")
	planCmd.Flags().BoolVar(&planFlags.noChroot, "no-chroot", false, "the keys of a build with --no-chroot")
	rootCmd.AddCommand(planCmd)
}
