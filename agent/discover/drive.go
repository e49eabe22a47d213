package discover

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/ecs-image/ecs-image/cidata"
)

// candidates lists the devices (host paths) worth probing for label.
func candidates(cfg Config, label string) []string {
	if len(cfg.Devices) > 0 {
		return cfg.Devices
	}
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, l := range []string{label, strings.ToUpper(label)} {
		p := cfg.Host.Path("/dev/disk/by-label/" + l)
		if _, err := os.Stat(p); err == nil {
			add(p)
		}
	}
	entries, err := os.ReadDir(cfg.Host.Path("/sys/class/block"))
	if err == nil {
		names := make([]string, 0, len(entries))
		for _, e := range entries {
			n := e.Name()
			if strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") {
				continue
			}
			names = append(names, n)
		}
		// CD-ROMs first: that is where seeds usually are.
		sort.SliceStable(names, func(i, j int) bool {
			return strings.HasPrefix(names[i], "sr") && !strings.HasPrefix(names[j], "sr")
		})
		for _, n := range names {
			add(cfg.Host.Path("/dev/" + n))
		}
	}
	return out
}

// findDrive looks for a drive with one of labels and reads file from it.
func findDrive(ctx context.Context, cfg Config, labels []string, file, prefix string) ([]byte, string, error) {
	var probeErrs []string
	for _, dev := range candidates(cfg, labels[0]) {
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		_, label, err := cidata.Probe(dev)
		if err != nil {
			if !errors.Is(err, cidata.ErrNotSeed) && !errors.Is(err, fs.ErrNotExist) {
				probeErrs = append(probeErrs, err.Error())
			}
			continue
		}
		if !matchLabel(label, labels) {
			continue
		}
		return readDrive(cfg, dev, file, prefix)
	}
	if len(probeErrs) > 0 && len(cfg.Devices) > 0 {
		return nil, "", errors.New(strings.Join(probeErrs, "; "))
	}
	return nil, "", errAbsent
}

func devName(cfg Config, dev string) string {
	if len(cfg.Devices) > 0 || cfg.Host.IsRealRoot() {
		return dev
	}
	return "/" + strings.TrimPrefix(strings.TrimPrefix(dev, cfg.Host.Root), "/")
}

func matchLabel(label string, labels []string) bool {
	for _, l := range labels {
		if strings.EqualFold(strings.TrimSpace(label), l) {
			return true
		}
	}
	return false
}

// readDrive reads file from the seed drive dev with cidata's reader (the
// one `ecs-image cidata inspect` uses), without mounting it.
func readDrive(cfg Config, dev, file, prefix string) ([]byte, string, error) {
	img, err := cidata.Open(dev)
	if err != nil {
		return nil, "", err
	}
	defer img.Close()
	data, err := img.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("%w (%s has no %s)", errEmpty, dev, file)
	}
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", dev, err)
	}
	return data, fmt.Sprintf("%s%s (%s)", prefix, devName(cfg, dev), img.Info.FS), nil
}
