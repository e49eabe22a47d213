//go:build !ecsfront

package main

// Dynamic shell completion (cobra's `completion bash|zsh|fish|powershell`
// scripts call the hidden `__complete` command): output format names,
// catalog base names, a template's variants, template and image paths, and
// the fixed values of enumerated flags.

import (
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/ecs-image/ecs-image/builder"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/images"
)

var completionOnce sync.Once

// registerCompletions attaches the completion functions to the commands
// (once: every command file's init has run by then).
func registerCompletions() {
	completionOnce.Do(func() {
		must := func(err error) {
			if err != nil {
				panic(err)
			}
		}
		find := func(path ...string) *cobra.Command {
			c, _, err := rootCmd.Find(path)
			must(err)
			return c
		}
		flag := func(c *cobra.Command, name string, f cobra.CompletionFunc) {
			must(c.RegisterFlagCompletionFunc(name, f))
		}
		fixed := cobra.FixedCompletions
		none := cobra.ShellCompDirectiveNoFileComp

		flag(rootCmd, "log-level", fixed([]string{"trace", "debug", "info", "warn", "error"}, none))
		flag(rootCmd, "log-format", fixed([]string{"text", "json"}, none))

		for _, c := range []*cobra.Command{find("validate"), find("build"), find("plan")} {
			c.ValidArgsFunction = templateArgs
		}
		build := find("build")
		flag(build, "variant", variantCompletion)
		flag(build, "accel", fixed([]string{"auto", "kvm", "tcg"}, none))
		flag(build, "set", setCompletion)
		flag(build, "output", dirCompletion)
		flag(build, "cache-remote-mode", fixed(builder.RemoteModes, none))

		convert := find("convert")
		convert.ValidArgsFunction = fileArgs("qcow2")
		flag(convert, "format", formatCompletion)
		flag(convert, "variant", fixed([]string{"dev", "test", "production"}, none))
		flag(convert, "dir", dirCompletion)

		find("base", "fetch").ValidArgsFunction = baseNameArgs
		inspect := find("base", "inspect")
		inspect.ValidArgsFunction = fileArgs("qcow2", "raw", "img")
		flag(inspect, "format", fixed([]string{"qcow2", "raw"}, none))

		cidata := find("cidata")
		flag(cidata, "format", fixed([]string{"nocloud", "config-2", "vfat"}, none))
		flag(cidata, "env", yamlFiles)
		test := find("test")
		test.ValidArgsFunction = fileArgs(artifactExts()...)
		flag(test, "env", yamlFiles)
		flag(test, "firmware", fixed([]string{"bios", "uefi"}, none))
		flag(test, "expect", fixed([]string{"ready", "failed", "standby"}, none))
		for _, path := range [][]string{{"env", "validate"}, {"env", "flatten"}, {"env", "package"}} {
			find(path...).ValidArgsFunction = templateArgs
		}
		flag(find("env", "create"), "extra", yamlFiles)
		flag(find("deploy"), "action", fixed([]string{"load", "start", "stop", "restart", "status"}, none))
	})
}

// templateArgs completes the first argument with YAML files (templates,
// env.yml files).
func templateArgs(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return yamlFiles(cmd, args, toComplete)
}

func yamlFiles(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return []cobra.Completion{"yml", "yaml"}, cobra.ShellCompDirectiveFilterFileExt
}

func dirCompletion(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveFilterDirs
}

// fileArgs completes the first argument with files of the given
// extensions.
func fileArgs(exts ...string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return exts, cobra.ShellCompDirectiveFilterFileExt
	}
}

// artifactExts are the file extensions of the artifacts `test` boots.
func artifactExts() []string {
	var exts []string
	for _, n := range formats.Names() {
		f, _ := formats.Lookup(n)
		ext := f.Ext[strings.LastIndex(f.Ext, ".")+1:]
		if !slices.Contains(exts, ext) && ext != "gz" && ext != "box" {
			exts = append(exts, ext)
		}
	}
	return exts
}

// formatCompletion completes -f with format names; a comma-separated list
// completes its last element (raw,vh → raw,vhd raw,vhdx), leaving out the
// names already given.
func formatCompletion(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	prefix, last := "", toComplete
	if i := strings.LastIndex(toComplete, ","); i >= 0 {
		prefix, last = toComplete[:i+1], toComplete[i+1:]
	}
	given := strings.Split(prefix, ",")
	if prev, err := cmd.Flags().GetStringSlice("format"); err == nil {
		given = append(given, prev...)
	}
	var out []cobra.Completion
	for _, n := range formats.Names() {
		if !strings.HasPrefix(n, last) || slices.Contains(given, n) {
			continue
		}
		f, _ := formats.Lookup(n)
		out = append(out, cobra.CompletionWithDesc(prefix+n, f.Description))
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}

// baseNameArgs completes base fetch's NAME with the catalog's names (the
// built-in catalog and the user's).
func baseNameArgs(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cat, err := images.LoadCatalog()
	if err != nil {
		cobra.CompDebugln(err.Error(), true)
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, n := range cat.Names() {
		if !strings.HasPrefix(n, toComplete) {
			continue
		}
		if e := cat.Lookup(n); e != nil && e.Description != "" {
			out = append(out, cobra.CompletionWithDesc(n, e.Description))
		} else {
			out = append(out, n)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// variantCompletion completes build --variant with the variants of the
// template named on the command line (read leniently: a template with
// other problems still completes).
func variantCompletion(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		cobra.CompDebugln(err.Error(), true)
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var t struct {
		DefaultVariant string `yaml:"default_variant"`
		Variants       map[string]struct {
			Production bool `yaml:"production"`
		} `yaml:"variants"`
	}
	if err := yaml.Unmarshal(data, &t); err != nil {
		cobra.CompDebugln(err.Error(), true)
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, 0, len(t.Variants))
	for n := range t.Variants {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []cobra.Completion
	for _, n := range names {
		if !strings.HasPrefix(n, toComplete) {
			continue
		}
		var desc []string
		if n == t.DefaultVariant {
			desc = append(desc, "default")
		}
		if t.Variants[n].Production {
			desc = append(desc, "production")
		}
		if len(desc) == 0 {
			out = append(out, n)
		} else {
			out = append(out, cobra.CompletionWithDesc(n, strings.Join(desc, ", ")))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// setCompletion completes build --set with the settable keys.
func setCompletion(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var out []cobra.Completion
	for _, k := range settable {
		if strings.HasPrefix(k+"=", toComplete) {
			out = append(out, k+"=")
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}
