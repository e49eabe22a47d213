package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepBootFiles copies the guest's newest kernel and its initrd, and the
// root= it booted with, into the stage's boot/ directory: later file-only
// stages and generalisation boot them in the offline helper.
type stepBootFiles struct{}

func (s *stepBootFiles) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, sr := getBuild(state), getStage(state)
	dir := filepath.Join(sr.dir, "boot")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return halt(state, err)
	}
	out, err := sr.client.Output(ctx, `k=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1); v=${k#/boot/vmlinuz-}; `+
		`r=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^root=//p' | tail -n 1); echo "$k /boot/initrd.img-$v $r"`, false)
	if err != nil {
		return halt(state, fmt.Errorf("find kernel: %w", err))
	}
	f := strings.Fields(out)
	if len(f) < 2 || f[0] == "" {
		b.log.Warnf("no kernel found in /boot; later file-only stages of this chain cannot run offline")
		return multistep.ActionContinue
	}
	for _, c := range []struct{ src, dst string }{{f[0], "vmlinuz"}, {f[1], "initrd.img"}} {
		if err := s.fetch(ctx, sr, c.src, filepath.Join(dir, c.dst)); err != nil {
			return halt(state, err)
		}
	}
	root := ""
	if len(f) > 2 {
		root = f[2]
	}
	if err := os.WriteFile(filepath.Join(dir, "root"), []byte(root+"\n"), 0o644); err != nil {
		return halt(state, err)
	}
	sr.bootFrom = sr.key
	b.log.Debugf("kept %s and %s (root=%s)", f[0], f[1], root)
	return multistep.ActionContinue
}

// fetch copies a root-readable guest file to dst.
func (s *stepBootFiles) fetch(ctx context.Context, sr *stageRun, src, dst string) error {
	sess, err := sr.client.SSH().NewSession()
	if err != nil {
		return err
	}
	defer sess.Close()
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	sess.Stdout = f
	if err := sess.Run("sudo -n cat " + shellQuote(src)); err != nil {
		return fmt.Errorf("copy %s from the guest: %w", src, err)
	}
	return f.Close()
}

func (s *stepBootFiles) Cleanup(multistep.StateBag) {}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
