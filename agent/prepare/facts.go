package prepare

import (
	"bufio"
	"bytes"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// memBytes returns the machine's RAM: Agent.MemBytes, else MemTotal from
// /proc/meminfo (under the root), else sysinfo(2).
func (a *Agent) memBytes() int64 {
	if a.MemBytes > 0 {
		return a.MemBytes
	}
	if data, err := a.Host.ReadFile("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "MemTotal:" {
				if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					return kb * 1024
				}
			}
		}
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		return int64(si.Totalram) * int64(si.Unit)
	}
	return 1 << 30
}

func (a *Agent) cores() int {
	if a.Cores > 0 {
		return a.Cores
	}
	return runtime.NumCPU()
}
