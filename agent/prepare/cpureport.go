package prepare

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// cpuReport says where the machine's CPU time went since the boot: busy
// and idle seconds over all CPUs (/proc/stat) and the units that used the
// most (their cgroups' cpu.stat) so far. Under emulation the first boot is
// CPU-bound, so this is its profile (docs/e2e.md). It reads files only.
func (a *Agent) cpuReport(top int) string {
	stat, err := a.Host.ReadFile("/proc/stat")
	if err != nil {
		return ""
	}
	var busy, idle float64
	line, _, _ := strings.Cut(string(stat), "\n")
	if f := strings.Fields(line); len(f) >= 8 && f[0] == "cpu" {
		for i, v := range f[1:8] {
			n, _ := strconv.ParseFloat(v, 64)
			if i == 3 || i == 4 { // idle, iowait
				idle += n / 100
			} else {
				busy += n / 100
			}
		}
	}
	type unit struct {
		name string
		sec  float64
	}
	var units []unit
	// The running units, and systemd itself (init.scope). A unit that has
	// ended (prepare-appliance, prepare-ecs) has no cgroup left.
	paths, _ := filepath.Glob(a.Host.Path("/sys/fs/cgroup/system.slice/*/cpu.stat"))
	paths = append(paths, a.Host.Path("/sys/fs/cgroup/init.scope/cpu.stat"))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if v, ok := strings.CutPrefix(string(data), "usage_usec "); ok {
			v, _, _ = strings.Cut(v, "\n")
			n, _ := strconv.ParseFloat(v, 64)
			units = append(units, unit{strings.TrimSuffix(filepath.Base(filepath.Dir(p)), ".service"), n / 1e6})
		}
	}
	sort.Slice(units, func(i, j int) bool { return units[i].sec > units[j].sec })
	var b strings.Builder
	fmt.Fprintf(&b, "CPU since the boot: %.1f s busy, %.1f s idle", busy, idle)
	for i, u := range units {
		if i == top || u.sec < 0.05 {
			break
		}
		sep := ", "
		if i == 0 {
			sep = "; by unit: "
		}
		fmt.Fprintf(&b, "%s%s %.1f s", sep, u.name, u.sec)
	}
	return b.String()
}
