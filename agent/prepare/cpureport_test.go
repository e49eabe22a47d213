package prepare

import (
	"strings"
	"testing"
)

func TestCPUReport(t *testing.T) {
	a, _ := testAgent(t)
	write := func(p, s string) {
		t.Helper()
		if err := a.Host.MkdirAll(p[:strings.LastIndex(p, "/")], 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Host.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// user nice system idle iowait irq softirq (1/100 s)
	write("/proc/stat", "cpu  3000 0 1000 1500 300 100 50 0 0 0\ncpu0 1 2 3 4 5 6 7\n")
	write("/sys/fs/cgroup/system.slice/docker.service/cpu.stat", "usage_usec 8600000\nuser_usec 1\n")
	write("/sys/fs/cgroup/system.slice/postfix.service/cpu.stat", "usage_usec 5400000\n")
	write("/sys/fs/cgroup/system.slice/idle.service/cpu.stat", "usage_usec 1000\n")
	write("/sys/fs/cgroup/init.scope/cpu.stat", "usage_usec 2500000\n")
	write("/sys/fs/cgroup/system.slice/system-postgresql.slice/cpu.stat", "usage_usec 2700000\n")
	got := a.cpuReport(2)
	want := "CPU since the boot: 41.5 s busy, 18.0 s idle; by unit: docker 8.6 s, postfix 5.4 s"
	if got != want {
		t.Errorf("cpuReport(2) = %q, want %q", got, want)
	}
	if got := a.cpuReport(10); !strings.HasSuffix(got, ", system-postgresql.slice 2.7 s, init.scope 2.5 s") {
		t.Errorf("cpuReport(10) = %q: want every unit above 0.05 s", got)
	}
}
