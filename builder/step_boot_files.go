package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// stepBootFiles copies the guest's newest kernel and its initrd, the root=
// it booted with and its whole command line, into the stage's boot/ directory: later file-only
// stages and generalisation boot them in the offline helper.
type stepBootFiles struct {
	// Key is the stage's key: its entry keeps the boot files.
	Key string
	// Stage holds the guest's files, the work directory and the kernel
	// the VM booted directly; it receives the boot files' entry.
	Stage *stageRun
	Log   logrus.FieldLogger
}

// guestFiles is the booted guest as stepBootFiles reads it.
type guestFiles interface {
	// Output is a command's standard output.
	Output(ctx context.Context, command string) (string, error)
	// Fetch copies the root-readable guest file src to the host file dst.
	Fetch(ctx context.Context, src, dst string) error
}

func (s *stepBootFiles) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	dir := filepath.Join(sr.dir, "boot")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return halt(state, err)
	}
	out, err := sr.files.Output(ctx, `k=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1); v=${k#/boot/vmlinuz-}; i=/boot/initrd.img-$v; `+
		`r=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^root=//p' | tail -n 1); echo "$k $i $r"; `+
		`[ -z "$k" ] || stat -c '%n %s %Y' "$k" "$i" 2>/dev/null; echo --; cat /proc/cmdline`)
	if err != nil {
		return halt(state, fmt.Errorf("find kernel: %w", err))
	}
	head, cmdline, _ := strings.Cut(out, "--\n")
	lines := strings.SplitN(strings.TrimSpace(head), "\n", 2)
	f := strings.Fields(lines[0])
	if len(f) < 2 || !strings.HasPrefix(f[0], "/boot/vmlinuz-") {
		s.Log.Warnf("no kernel found in /boot; later file-only stages of this chain cannot run offline")
		return multistep.ActionContinue
	}
	source := ""
	if len(lines) > 1 {
		source = strings.TrimSpace(lines[1])
	}
	// The kernel this VM booted directly is still the newest: keep the
	// host's copy instead of reading 40+ MiB over SSH again.
	reuse := sr.kernel != nil && source != "" && sr.kernel.source() == source
	for _, c := range []struct{ src, dst string }{{f[0], "vmlinuz"}, {f[1], "initrd.img"}} {
		dst := filepath.Join(dir, c.dst)
		if reuse {
			if err := linkOrCopy(filepath.Join(sr.kernel.Dir, c.dst), dst); err != nil {
				return halt(state, err)
			}
			continue
		}
		if err := sr.files.Fetch(ctx, c.src, dst); err != nil {
			return halt(state, err)
		}
	}
	root := ""
	if len(f) > 2 {
		root = f[2]
	}
	if err := (bootFiles{Dir: dir}).writeMeta(root, source, strings.TrimSpace(cmdline)); err != nil {
		return halt(state, err)
	}
	sr.bootFrom = s.Key
	s.Log.Debugf("kept %s and %s (root=%s, reused %v)", f[0], f[1], root, reuse)
	return multistep.ActionContinue
}

func (s *stepBootFiles) Cleanup(multistep.StateBag) {}

// linkOrCopy hard-links src to dst (both in the stage cache), else copies.
func linkOrCopy(src, dst string) error {
	os.Remove(dst)
	if os.Link(src, dst) == nil {
		return nil
	}
	return atomicfile.Copy(src, dst, 0o644)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
