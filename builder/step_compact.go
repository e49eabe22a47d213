package builder

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepCompact flattens the generalised overlay chain into one standalone,
// compressed qcow2 (`qemu-img convert -c`; trimmed blocks are not copied),
// written under a temporary name in the output directory.
type stepCompact struct{}

func (s *stepCompact) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := getBuild(state)
	f, err := os.CreateTemp(b.opts.OutputDir, tempName(b.baseName()+".qcow2"))
	if err != nil {
		return halt(state, err)
	}
	f.Close()
	b.compacted = f.Name()
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compat=1.1",
		"-m", "4", "-W", b.genDisk, b.compacted)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return halt(state, ctx.Err())
		}
		return halt(state, fmt.Errorf("qemu-img convert: %v: %s", err, strings.TrimSpace(stderr.String())))
	}
	return multistep.ActionContinue
}

func (s *stepCompact) Cleanup(state multistep.StateBag) {
	b := getBuild(state)
	if b.compacted != "" {
		os.Remove(b.compacted) // renamed away on success
	}
}

// tempPrefix marks temporary files in the output directory, followed by
// the pid of the build that writes them: leftovers of a crashed build are
// removed by the next build into the same directory.
const tempPrefix = ".ecs-image-tmp-"

// tempName is an os.CreateTemp pattern for a temporary output file.
func tempName(name string) string {
	return fmt.Sprintf("%s%d-%s-*", tempPrefix, os.Getpid(), name)
}

func cleanOutputTemps(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), tempPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidStr); err == nil && pid != os.Getpid() && processAlive(pid) {
			continue
		}
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// baseName is the artifacts' base name: template name and variant.
func (b *buildState) baseName() string {
	if b.plan.Variant != "" {
		return b.tmpl.Name + "-" + b.plan.Variant
	}
	return b.tmpl.Name
}
