package status

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
)

// ConsoleDevices receive the console markers (best effort).
var ConsoleDevices = []string{"/dev/console", "/dev/ttyS0"}

// Console writes one line to the agent's stderr (the journal) and to the
// console devices, best effort: a device that is missing or blocks is
// skipped. Under a test root the devices are plain files.
func Console(h *host.Host, line string) {
	fmt.Fprintln(os.Stderr, line)
	for _, dev := range ConsoleDevices {
		p := h.Path(dev)
		flags := os.O_WRONLY | os.O_APPEND | syscall.O_NOCTTY | syscall.O_NONBLOCK
		if !h.IsRealRoot() {
			flags |= os.O_CREATE
			_ = os.MkdirAll(filepath.Dir(p), 0o755)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			f, err := os.OpenFile(p, flags, 0o644)
			if err != nil {
				return
			}
			defer f.Close()
			if h.IsRealRoot() {
				_, _ = f.Write([]byte("\r\n" + line + "\r\n"))
			} else {
				_, _ = f.Write([]byte(line + "\n"))
			}
		}()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
	}
}
