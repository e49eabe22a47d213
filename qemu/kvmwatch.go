package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// The KVM watchdog: a guest that stays silent under KVM is restarted
// under TCG (see KVMStallTimeout).

// KVMStallTimeout is how long a guest under KVM may stay silent on its
// serial console, before it shows a running kernel or user space, until
// Start's watchdog stops it and restarts it under TCG. Some hosts pass
// every KVM probe and then hang each kernel as it leaves real mode.
var KVMStallTimeout = 30 * time.Second

// alive matches console lines that only a running kernel or user space
// prints: a printk timestamp, systemd, a login prompt, cloud-init, or a
// marker of ecs-image's own guests.
var alive = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^\[\s*[0-9]+\.[0-9]+\]|systemd|login:|cloud-init|Cloud-init|ECS-|ecs-offline|Run /init`)
})

// fallbackAllowed tells whether a KVM guest that stalls may be restarted
// under TCG: not when the template or ECS_IMAGE_ACCEL=kvm asked for KVM.
func (c *Config) fallbackAllowed() bool {
	return !c.AccelForced && !strings.EqualFold(strings.TrimSpace(os.Getenv(AccelEnv)), string(AccelKVM))
}

// errKVMStall stops a QEMU process that the watchdog restarts under TCG.
var errKVMStall = errors.New("no serial console output under KVM")

// watchKVM stops p when its serial console stays silent for stall before
// it shows a running kernel (alive); monitor then restarts the machine
// under TCG, and every later machine of this process starts under TCG.
func (m *Machine) watchKVM(ctx context.Context, p *proc, stall time.Duration) {
	t := time.NewTicker(stall / 30)
	defer t.Stop()
	var off int64
	var partial []byte
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.exited:
			return
		case <-t.C:
		}
		chunk := m.readSerialFrom(off)
		if len(chunk) > 0 {
			off += int64(len(chunk))
			last = time.Now()
			partial = append(partial, chunk...)
			for {
				i := bytes.IndexByte(partial, '\n')
				if i < 0 {
					break
				}
				line := cleanLine(partial[:i])
				partial = partial[i+1:]
				if alive().MatchString(line) {
					m.mu.Lock()
					m.kvmAlive = true
					m.mu.Unlock()
					return
				}
			}
			continue
		}
		if time.Since(last) < stall {
			continue
		}
		what := "nothing on its serial console"
		if tail := tailLines(m.readSerialFrom(0), 1); tail != "" {
			what = fmt.Sprintf("nothing after %q on its serial console", tail)
		}
		reason := fmt.Sprintf("a guest under KVM printed %s for %s (this host's KVM passes the probe but hangs guests)", what, stall)
		markKVMStalled(reason)
		m.mu.Lock()
		m.restart = true
		m.mu.Unlock()
		p.kill()
		return
	}
}

// restartTCG starts the machine again under TCG after the watchdog
// stopped it or QEMU failed under KVM (why; "" is the watchdog's stall).
func (m *Machine) restartTCG(ctx context.Context, bin, why string) error {
	if why == "" {
		why = fmt.Sprintf("%v for %s", errKVMStall, KVMStallTimeout)
	}
	if err := m.restartAs(ctx, bin, AccelTCG, why+"; restarting under TCG"); err != nil {
		return err
	}
	logrus.Infof("qemu %s: restarted under TCG", m.Config.Name)
	return nil
}

// restartAs starts the machine again under accel, with the same disks,
// ports, serial log (appended, after a line saying why) and QMP socket.
func (m *Machine) restartAs(ctx context.Context, bin string, accel Accel, why string) error {
	m.qmp.Close()
	cfg := m.Config
	cfg.Accel = accel
	cfg.serialAppend = true
	if f, err := os.OpenFile(cfg.SerialLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		fmt.Fprintf(f, "\n--- ecs-image: %s ---\n", why)
		f.Close()
	}
	args, err := cfg.Args()
	if err != nil {
		return err
	}
	os.Remove(cfg.QMPSocket)
	p, err := launch(bin, args, cfg.Detachable)
	if err != nil {
		return err
	}
	WriteOwner(m.runDir, p.cmd.Process.Pid)
	m.mu.Lock()
	m.proc, m.Config.Accel, m.restart = p, accel, false
	m.mu.Unlock()
	q, err := m.connect(ctx)
	if err != nil {
		p.kill()
		<-p.exited
		return err
	}
	m.mu.Lock()
	m.qmp = q
	m.mu.Unlock()
	return nil
}
