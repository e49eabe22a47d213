package qemu

import (
	"fmt"
	"net"
	"sync"
)

// handedOut remembers ports this process already gave to a VM, so two VMs
// started by the same process never race for the same port.
var (
	portMu    sync.Mutex
	handedOut = map[int]bool{}
)

// FreePort returns a TCP port on 127.0.0.1 that is free right now: it binds
// port 0, notes the port the kernel chose and closes the listener. Another
// process may still take the port before QEMU binds it; Start retries with
// new ports when QEMU cannot set up a forward.
func FreePort() (int, error) {
	portMu.Lock()
	defer portMu.Unlock()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free loopback port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut[p] {
			handedOut[p] = true
			return p, nil
		}
	}
	return 0, fmt.Errorf("find a free loopback port: every port offered was already handed out")
}

// releasePort lets FreePort return p again (the VM using it has exited).
func releasePort(p int) {
	portMu.Lock()
	delete(handedOut, p)
	portMu.Unlock()
}

// allocate returns a copy of fwds with a free host port for every Host 0.
func allocate(fwds []Forward) ([]Forward, []int, error) {
	out := make([]Forward, len(fwds))
	var got []int
	for i, f := range fwds {
		if f.Host == 0 {
			p, err := freePort()
			if err != nil {
				for _, q := range got {
					releasePort(q)
				}
				return nil, nil, err
			}
			f.Host = p
			got = append(got, p)
		}
		out[i] = f
	}
	return out, got, nil
}

// freePort is FreePort; tests replace it.
var freePort = FreePort
