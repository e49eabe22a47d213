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

// stepChrootBootFiles records the chroot's newest kernel and its initrd,
// with root= and the boot loader's arguments from grub.cfg (or fstab),
// in the stage's boot/ directory — what stepBootFiles reads from a booted
// guest — so later file-only stages, booted stages and the generalisation
// boot that kernel directly.
type stepChrootBootFiles struct {
	// Key is the stage's key: its entry keeps the boot files.
	Key string
	// BootFrom is the entry whose boot files the parent disk boots with
	// ("": none), BootDir its boot/ directory.
	BootFrom, BootDir string
	// Stage holds the chroot session and the work directory, and
	// receives the boot files' entry.
	Stage *stageRun
	Log   logrus.FieldLogger
}

// chrootBootFilesStep records the chroot's kernel unless the parent's
// recorded one is unchanged.
func (b *buildState) chrootBootFilesStep(sr *stageRun) *stepChrootBootFiles {
	return &stepChrootBootFiles{Key: sr.key, BootFrom: b.bootFrom, BootDir: b.parentBootDir(), Stage: sr, Log: b.log}
}

func (s *stepChrootBootFiles) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	out, err := sr.chroot.Output(ctx, `k=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1); [ -n "$k" ] || exit 0; `+
		`i=/boot/initrd.img-${k#/boot/vmlinuz-}; [ -f "$i" ] && stat -c '%n %s %Y' "$k" "$i"`)
	if err != nil {
		return halt(state, fmt.Errorf("find kernel: %w", err))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		s.Log.Warnf("no kernel with an initrd in /boot; later stages boot from the disk")
		return multistep.ActionContinue
	}
	grub, _ := os.ReadFile(sr.chroot.hostPath("/boot/grub/grub.cfg"))
	args, root := bootConfig(string(grub), func() string {
		fstab, _ := os.ReadFile(sr.chroot.hostPath("/etc/fstab"))
		return string(fstab)
	})
	if root == "" {
		s.Log.Warnf("%v; later stages boot from the disk", errNoRoot)
		return multistep.ActionContinue
	}
	source := strings.Join(lines, "\n")
	if prev := (bootFiles{Dir: s.BootDir}); s.BootFrom != "" && prev.ok() &&
		prev.source() == source && prev.root() == root && prev.cmdline() == args {
		// The kernel and initrd the stage started with (same paths, sizes
		// and times) are kept by an earlier entry: not copied again (they
		// are most of a small stage's cache entry and shared object).
		s.Log.Debugf("kernel and initrd unchanged: boot files of %s", s.BootFrom[:min(12, len(s.BootFrom))])
		return multistep.ActionContinue
	}
	dir := filepath.Join(sr.dir, "boot")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return halt(state, err)
	}
	for i, dst := range []string{"vmlinuz", "initrd.img"} {
		src := strings.Fields(lines[i])[0]
		if err := atomicfile.Copy(sr.chroot.hostPath(src), filepath.Join(dir, dst), 0o644); err != nil {
			return halt(state, fmt.Errorf("copy %s: %w", src, err))
		}
	}
	if err := (bootFiles{Dir: dir}).writeMeta(root, source, args); err != nil {
		return halt(state, err)
	}
	sr.bootFrom = s.Key
	return multistep.ActionContinue
}

func (s *stepChrootBootFiles) Cleanup(multistep.StateBag) {}
