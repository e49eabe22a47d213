//go:build !ecsfront

package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/env"
)

func init() {
	badInputCheckers = append(badInputCheckers, func(err error) bool {
		var e *env.Error
		return errors.As(err, &e)
	})
	envCmd.AddCommand(envValidateCmd(), envFlattenCmd())
}

// loadEnv loads and validates an env.yml ("-": read stdin), printing its
// warnings to w. An
// invalid file has its problems printed to w, one per line, and yields a
// short bad-input error.
func loadEnv(path string, stdin io.Reader, w io.Writer) (*env.Doc, error) {
	var doc *env.Doc
	var err error
	if path == "-" {
		var data []byte
		data, err = io.ReadAll(io.LimitReader(stdin, env.MaxSize+1))
		if err == nil {
			doc, err = env.Parse("<stdin>", data)
		}
	} else {
		doc, err = env.Load(path)
	}
	var e *env.Error
	if errors.As(err, &e) {
		for _, p := range e.Problems {
			fmt.Fprintln(w, p.String())
		}
		return nil, badInputf("%s: invalid env.yml (%d %s)", path, len(e.Problems), plural(len(e.Problems), "problem"))
	}
	if err != nil {
		return nil, err
	}
	for _, p := range doc.Warnings {
		p.Msg = "warning: " + p.Msg
		fmt.Fprintln(w, p.String())
	}
	return doc, nil
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func envValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Check an env.yml: syntax, known keys, types, keys and certificates",
		Long: `Validate an env.yml the way the appliance will read it (PyYAML, YAML 1.1).

Checks: the "#cloud-config" first line; YAML syntax; one document; size
(at most 1 MiB); plain ASCII; no duplicate keys; no alias bombs or recursive
aliases; only string keys; known keys (unknown ones are warnings) and their
types; appliance.domain present and a host name; inline PEM keys and
certificates (appliance.ssl.key/cert, appliance.dkim.key) and the OpenPGP
secret keys (appliance.backup.encrypt, ecs.vault_encrypt, ecs.vault_sign)
parse. Every problem is listed as FILE:LINE:COLUMN: KEY.PATH: message.

FILE "-" reads standard input. Exit status: 0 valid (warnings may be
printed), 2 invalid, 1 unreadable.`,
		Example: `  ecs-image env validate env.yml
  ecs-image env validate /app/env.yml && echo ready
  ssh root@appliance cat /app/env.yml | ecs-image env validate -`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := loadEnv(args[0], cmd.InOrStdin(), cmd.ErrOrStderr()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", args[0])
			return nil
		},
	}
}

func envFlattenCmd() *cobra.Command {
	var prefix, postfix string
	cmd := &cobra.Command{
		Use:   "flatten FILE [KEYS]",
		Short: "Print env.yml values as shell variables, as the appliance does",
		Long: `Flatten an env.yml into NAME=VALUE lines, byte for byte like the original
appliance's flatten_yaml.py (see docs/env.md): nested keys are joined with
"_" and upper-cased, lists give NAME_0, NAME_1, ... and NAME_LEN, strings
are stripped and quoted like Python's shlex.quote, null prints nothing.

KEYS is a comma-separated list of top-level keys, each giving variables
prefixed KEY_, or "." (the default) for the whole document. The appliance's
scripts use "ecs,appliance" with --prefix "export ". A requested key that is
absent is reported on stderr and skipped. The file is validated first;
FILE "-" reads standard input.`,
		Example: `  ecs-image env flatten env.yml
  ecs-image env flatten env.yml ecs,appliance --prefix 'export '
  eval "$(ecs-image env flatten env.yml appliance --prefix 'export ')"
  ecs-image env flatten env.yml ecs --prefix 'Environment="' --postfix '"'`,
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys := []string{"."}
			if len(args) == 2 {
				keys = strings.Split(args[1], ",")
			}
			doc, err := loadEnv(args[0], cmd.InOrStdin(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			out, missing := env.Flatten(doc, keys, prefix, postfix)
			for _, k := range missing {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: key %q not found\n", args[0], k)
			}
			_, err = io.WriteString(cmd.OutOrStdout(), out)
			return err
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", "", `text before each NAME=VALUE (the appliance uses "export ")`)
	cmd.Flags().StringVar(&postfix, "postfix", "", "text after each NAME=VALUE")
	return cmd
}
