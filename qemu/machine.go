package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/childproc"
)

// Machine is a running QEMU virtual machine.
type Machine struct {
	// Config is the resolved configuration: accelerator chosen, host
	// ports allocated, serial log and QMP socket paths set.
	Config Config
	// Started is when QEMU was started.
	Started time.Time

	runDir    string
	ownSerial bool
	proc      *proc
	qmp       *qmp
	ports     []int

	done chan struct{}

	mu         sync.Mutex
	err        error
	killReason error
	restart    bool // the KVM watchdog stopped QEMU: start it under TCG
	// kvmAlive: the guest showed a running kernel under KVM (watchKVM).
	kvmAlive bool
	// crashRestarted: QEMU died of a crash signal once and was restarted.
	crashRestarted bool
	detached       bool   // left running when ecs-image exits (Detach)
	saved          []byte // serial log content kept after exit
	savedBase      int64  // file offset of saved[0]
}

// ErrKilled is the exit error of a machine stopped with Kill.
var ErrKilled = errors.New("qemu killed")

// ExitError reports a QEMU process that ended: its own output and the last
// lines of the guest's serial console.
type ExitError struct {
	Name       string
	Err        error  // the process's exit status, or why it was stopped
	Output     string // QEMU's stdout and stderr (tail)
	SerialTail string // last lines of the serial console
}

func (e *ExitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "qemu %s", e.Name)
	if e.Err == nil {
		b.WriteString(" exited: the guest powered off")
	} else {
		fmt.Fprintf(&b, " exited: %v", e.Err)
	}
	if out := strings.TrimSpace(e.Output); out != "" {
		fmt.Fprintf(&b, "\nqemu output:\n%s", out)
	}
	if e.SerialTail != "" {
		fmt.Fprintf(&b, "\nlast serial console lines:\n%s", e.SerialTail)
	} else {
		b.WriteString("\n(the serial console is empty)")
	}
	return b.String()
}

func (e *ExitError) Unwrap() error { return e.Err }

// hostfwdFailed is QEMU's message when a forwarded host port is taken.
const hostfwdFailed = "Could not set up host forwarding rule"

// startAttempts bounds retries when a forwarded port was taken meanwhile.
const startAttempts = 5

// Start validates cfg, resolves its defaults (accelerator, free host ports,
// serial log, QMP socket, UEFI variable store) and starts QEMU. It returns
// once QEMU answers on QMP, i.e. the VM is running. Cancelling ctx at any
// time kills QEMU and removes its temporary files.
func Start(ctx context.Context, cfg Config) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("qemu %s: %w", cfg.Name, err)
	}
	for _, f := range append([]string{cfg.Disk}, cfg.CDROMs...) {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("qemu %s: %w", cfg.Name, err)
		}
	}
	bin, err := exec.LookPath(cfg.binary())
	if err != nil {
		return nil, fmt.Errorf("qemu: %w (install Debian's qemu-system-x86 package)", err)
	}
	if cfg.Accel == "" {
		cfg.Accel = DetectAccel(ctx)
	}
	if cfg.Accel == AccelKVM && cfg.fallbackAllowed() {
		if reason := kvmStalled(); reason != "" {
			cfg.Accel = AccelTCG
		}
	}
	if cfg.Name == "" {
		cfg.Name = strings.TrimSuffix(filepath.Base(cfg.Disk), filepath.Ext(cfg.Disk))
	}
	tmp := os.TempDir()
	if len(tmp) > 70 {
		// Unix socket paths are limited to 107 bytes.
		tmp = "/tmp"
	}
	removeStaleRunDirs()
	runDir, err := os.MkdirTemp(tmp, "ecs-qemu-")
	if err != nil {
		return nil, fmt.Errorf("qemu %s: %w", cfg.Name, err)
	}
	if err := WriteOwner(runDir); err != nil {
		os.RemoveAll(runDir)
		return nil, fmt.Errorf("qemu %s: %w", cfg.Name, err)
	}
	m := &Machine{runDir: runDir, done: make(chan struct{})}
	fail := func(err error) (*Machine, error) {
		os.RemoveAll(runDir)
		for _, p := range m.ports {
			releasePort(p)
		}
		return nil, err
	}
	if cfg.SerialLog == "" {
		cfg.SerialLog = filepath.Join(runDir, "serial.log")
		m.ownSerial = true
	}
	if cfg.QMPSocket == "" {
		cfg.QMPSocket = filepath.Join(runDir, "qmp.sock")
	}
	if cfg.Firmware == FirmwareUEFI && cfg.UEFIVars == "" {
		cfg.UEFIVars = filepath.Join(runDir, "OVMF_VARS.fd")
		if err := atomicfile.Copy(DefaultUEFIVars, cfg.UEFIVars, 0o600); err != nil {
			return fail(fmt.Errorf("qemu %s: UEFI variable store: %w (install Debian's ovmf package)", cfg.Name, err))
		}
	}
	if cfg.Firmware == FirmwareUEFI {
		code := cfg.UEFICode
		if code == "" {
			code = DefaultUEFICode
		}
		if _, err := os.Stat(code); err != nil {
			return fail(fmt.Errorf("qemu %s: UEFI firmware: %w (install Debian's ovmf package)", cfg.Name, err))
		}
	}

	for attempt := 1; ; attempt++ {
		fwds, got, err := allocate(cfg.Forwards)
		if err != nil {
			return fail(fmt.Errorf("qemu %s: %w", cfg.Name, err))
		}
		run := cfg
		run.Forwards = fwds
		args, err := run.Args()
		if err != nil {
			return fail(fmt.Errorf("qemu %s: %w", cfg.Name, err))
		}
		os.Remove(run.QMPSocket)
		os.Remove(run.SerialLog)
		logrus.Debugf("qemu %s: %s %s", cfg.Name, bin, strings.Join(args, " "))
		p, err := launch(bin, args, cfg.Detachable)
		if err != nil {
			return fail(fmt.Errorf("qemu %s: %w", cfg.Name, err))
		}
		WriteOwner(runDir, p.cmd.Process.Pid)
		m.ports = got
		m.Config = run
		m.proc = p
		m.Started = time.Now()
		q, err := m.connect(ctx)
		if err == nil {
			m.qmp = q
			break
		}
		p.kill()
		<-p.exited
		for _, port := range got {
			releasePort(port)
		}
		m.ports = nil
		if ctx.Err() != nil {
			return fail(fmt.Errorf("qemu %s: %w", cfg.Name, ctx.Err()))
		}
		out := p.out.String()
		if strings.Contains(out, hostfwdFailed) && len(got) > 0 && attempt < startAttempts {
			logrus.Debugf("qemu %s: a forwarded port was taken, retrying with new ports", cfg.Name)
			continue
		}
		if run.Accel == AccelKVM && cfg.fallbackAllowed() && attempt < startAttempts {
			// The probe passed, yet QEMU could not start under KVM.
			markKVMStalled(fmt.Sprintf("qemu exited under KVM as it started (%v: %s)", p.err, lastOutput(out)))
			cfg.Accel = AccelTCG
			continue
		}
		return fail(&ExitError{Name: cfg.Name, Err: p.err, Output: out, SerialTail: tailLines(readTail(run.SerialLog), 30)})
	}
	logrus.Infof("qemu %s: started (accel %s, %d MiB, %d CPUs%s)", m.Config.Name, m.Config.Accel, m.Config.memory(), m.Config.cpus(), m.describeForwards())
	if m.Config.Accel == AccelKVM && m.Config.fallbackAllowed() {
		go m.watchKVM(ctx, m.proc, KVMStallTimeout)
	}
	go m.monitor(ctx, bin)
	return m, nil
}

// connect waits for QMP to answer, or for QEMU to exit first.
func (m *Machine) connect(ctx context.Context) (*qmp, error) {
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	p := m.current()
	go func() {
		select {
		case <-p.exited:
			cancel()
		case <-cctx.Done():
		}
	}()
	q, err := dialQMP(cctx, m.Config.QMPSocket)
	if err != nil {
		select {
		case <-p.exited:
			return nil, errors.New("qemu exited")
		default:
		}
		return nil, err
	}
	return q, nil
}

func (m *Machine) describeForwards() string {
	var parts []string
	for _, f := range m.Config.Forwards {
		parts = append(parts, fmt.Sprintf("guest %d → 127.0.0.1:%d", f.Guest, f.Host))
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, ", ")
}

// monitor waits for QEMU to exit (killing it when ctx ends), then keeps the
// serial log in memory, removes the temporary files and closes Done.
func (m *Machine) monitor(ctx context.Context, bin string) {
	for {
		p := m.current()
		select {
		case <-p.exited:
		case <-ctx.Done():
			m.mu.Lock()
			detached := m.detached
			m.mu.Unlock()
			if detached {
				return // QEMU stays; ecs-image is about to exit
			}
			m.kill(ctx.Err())
			<-p.exited
		}
		m.mu.Lock()
		restart := m.restart && m.killReason == nil
		why := ""
		if !restart && m.killReason == nil && p.err != nil && m.Config.Accel == AccelKVM && m.Config.fallbackAllowed() && !m.kvmAlive {
			// QEMU failed under KVM before the guest's kernel showed
			// life (a KVM error, an abort): the host's KVM is not usable.
			restart = true
			m.mu.Unlock()
			why = fmt.Sprintf("qemu exited under KVM before the guest's kernel printed anything (%v: %s)", p.err, lastOutput(p.out.String()))
			markKVMStalled(why)
			m.mu.Lock()
		}
		crash := !restart && m.killReason == nil && !m.crashRestarted && qemuCrashed(p.err)
		if crash {
			m.crashRestarted = true
		}
		m.mu.Unlock()
		if crash {
			// QEMU itself died (a QEMU bug, seen as a rare SIGSEGV under
			// TCG), not the guest: one more try on the same disks.
			logrus.Warnf("qemu %s crashed (%v) after %s: a QEMU bug, not the guest; restarting it once. QEMU's last output: %s",
				m.Config.Name, p.err, time.Since(m.Started).Round(time.Second), lastOutput(p.out.String()))
			if err := m.restartAs(ctx, bin, m.Config.Accel, fmt.Sprintf("qemu crashed (%v); restarting it", p.err)); err != nil {
				m.mu.Lock()
				if m.killReason == nil {
					m.killReason = fmt.Errorf("qemu %s: restart after a crash: %w", m.Config.Name, err)
				}
				m.mu.Unlock()
				break
			}
			continue
		}
		if !restart {
			break
		}
		if err := m.restartTCG(ctx, bin, why); err != nil {
			m.mu.Lock()
			if m.killReason == nil {
				m.killReason = fmt.Errorf("qemu %s: restart under TCG: %w", m.Config.Name, err)
			}
			m.mu.Unlock()
			break
		}
	}
	data, base := readAllTail(m.Config.SerialLog, maxSaved)
	m.qmp.Close()
	os.RemoveAll(m.runDir)
	for _, p := range m.ports {
		releasePort(p)
	}
	m.mu.Lock()
	m.saved, m.savedBase = data, base
	switch {
	case m.killReason != nil:
		m.err = m.killReason
	case m.proc.err != nil:
		m.err = &ExitError{Name: m.Config.Name, Err: m.proc.err, Output: m.proc.out.String(), SerialTail: tailLines(data, 30)}
	}
	m.mu.Unlock()
	logrus.Debugf("qemu %s: exited after %s (%v)", m.Config.Name, time.Since(m.Started).Round(time.Second), m.err)
	close(m.done)
}

// maxSaved bounds the serial log kept in memory after exit.
const maxSaved = 4 << 20

// Done is closed when QEMU has exited and its temporary files are removed.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Err is why QEMU exited: nil while it runs and after a clean guest power
// off, ErrKilled after Kill, the context's error after cancellation, else
// an *ExitError.
func (m *Machine) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Exited reports whether QEMU has exited.
func (m *Machine) Exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// exitError describes the exit for callers that waited for something else.
func (m *Machine) exitError() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.err.(*ExitError); ok {
		return e
	}
	return &ExitError{Name: m.Config.Name, Err: m.err, Output: m.proc.out.String(), SerialTail: tailLines(m.saved, 30)}
}

// HostPort is the host loopback port forwarded to guest TCP port guest, or 0.
func (m *Machine) HostPort(guest int) int {
	for _, f := range m.Config.Forwards {
		if f.Guest == guest {
			return f.Host
		}
	}
	return 0
}

// Detach leaves QEMU running when ecs-image exits (the machine must have
// been started with Config.Detachable) and returns its process id: the
// end of ecs-image's context no longer stops it. Its run directory stays
// until QEMU is gone (stale run directories are removed by a later Start).
func (m *Machine) Detach() (int, error) {
	if !m.Config.Detachable {
		return 0, fmt.Errorf("qemu %s: not started detachable", m.Config.Name)
	}
	if m.Exited() {
		return 0, fmt.Errorf("qemu %s: already exited", m.Config.Name)
	}
	m.mu.Lock()
	m.detached = true
	m.mu.Unlock()
	return m.current().cmd.Process.Pid, nil
}

// RunDir is the machine's temporary directory (QMP socket, owner file).
func (m *Machine) RunDir() string { return m.runDir }

// Kill stops QEMU at once (SIGKILL). Done is closed soon after.
func (m *Machine) Kill() { m.kill(ErrKilled) }

func (m *Machine) kill(reason error) {
	m.mu.Lock()
	if m.killReason == nil {
		m.killReason = reason
	}
	m.mu.Unlock()
	m.current().kill()
}

// current is the running QEMU process (another after a restart).
func (m *Machine) current() *proc {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc
}

// QMP runs a QMP command (e.g. "query-status") and returns its raw result.
func (m *Machine) QMP(ctx context.Context, cmd string, args any) ([]byte, error) {
	m.mu.Lock()
	q := m.qmp
	m.mu.Unlock()
	if q == nil {
		return nil, errNoQMP
	}
	return q.Execute(ctx, cmd, args)
}

// powerdownRepeat is how often Shutdown repeats the ACPI power button press
// (a press during early boot, before systemd-logind listens, is lost).
var powerdownRepeat = 15 * time.Second

// Shutdown powers the guest off like a power button press (ACPI, through
// QMP system_powerdown) and waits up to timeout for QEMU to exit. If the
// guest does not power off in time, QEMU is told to quit and killed if it
// does not; Shutdown then returns an error, as the disk may be inconsistent.
func (m *Machine) Shutdown(ctx context.Context, timeout time.Duration) error {
	if m.Exited() {
		return m.Err()
	}
	logrus.Infof("qemu %s: powering off (ACPI)", m.Config.Name)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := m.QMP(qctx, "system_powerdown", nil)
		cancel()
		if err != nil && !m.Exited() {
			logrus.Debugf("qemu %s: %v", m.Config.Name, err)
		}
		select {
		case <-m.done:
			return m.Err()
		case <-ctx.Done():
			m.kill(ctx.Err())
			<-m.done
			return ctx.Err()
		case <-deadline.C:
			return m.forceStop(fmt.Errorf("qemu %s: the guest did not power off within %s of the ACPI power button; stopped QEMU", m.Config.Name, timeout))
		case <-time.After(powerdownRepeat):
		}
	}
}

// forceStop asks QEMU to quit, kills it when that does not work, and
// returns why.
func (m *Machine) forceStop(why error) error {
	m.mu.Lock()
	if m.killReason == nil {
		m.killReason = why
	}
	m.mu.Unlock()
	qctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	m.QMP(qctx, "quit", nil)
	cancel()
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.kill(why)
		<-m.done
	}
	return why
}

// proc is one QEMU process.
type proc struct {
	cmd    *exec.Cmd
	out    *tailBuffer
	exited chan struct{}
	err    error
}

func launch(bin string, args []string, detachable bool) (*proc, error) {
	p := &proc{out: &tailBuffer{max: 64 << 10}, exited: make(chan struct{})}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	// Own process group: a terminal's Ctrl-C reaches ecs-image, which
	// decides how QEMU stops. Pdeathsig: QEMU never outlives ecs-image.
	// Detachable: it may (Machine.Detach).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	sig := syscall.SIGKILL
	if detachable {
		sig = 0
	}
	wait, err := childproc.Start(cmd, sig)
	if err != nil {
		return nil, err
	}
	p.cmd = cmd
	go func() {
		p.err = wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) kill() {
	select {
	case <-p.exited:
	default:
		p.cmd.Process.Kill()
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// Accel is the accelerator QEMU runs under now (TCG after the KVM
// watchdog restarted it).
func (m *Machine) Accel() Accel {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.Config.Accel
}

// WaitingEvery is how often Waiting reports a wait that goes on.
var WaitingEvery = 30 * time.Second

// Waiting logs, every WaitingEvery until stop is called or the machine
// exits, what the caller waits for, for how long, and the console's last
// line, so that no long wait is silent.
func (m *Machine) Waiting(log logrus.FieldLogger, what string) (stop func()) {
	done := make(chan struct{})
	start := time.Now()
	go func() {
		t := time.NewTicker(WaitingEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-m.done:
				return
			case <-t.C:
				last := m.SerialTail(1)
				if last == "" {
					last = "(nothing yet)"
				}
				log.Infof("qemu %s: still waiting for %s (%s, accel %s); console: %s", m.Config.Name, what, time.Since(start).Round(time.Second), m.Accel(), last)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}

// qemuCrashed tells whether QEMU's exit was a crash of QEMU itself (a
// fatal signal it did not ask for), not a guest power off or a kill.
func qemuCrashed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return false
	}
	switch ws.Signal() {
	case syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGILL, syscall.SIGFPE, syscall.SIGABRT:
		return true
	}
	return false
}

// lastOutput is the end of QEMU's own output, on one line.
func lastOutput(out string) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return "(none)"
	}
	lines := strings.Split(out, "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return strings.Join(lines, " | ")
}
