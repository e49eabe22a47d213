// Package boottest boots an appliance image under QEMU and checks that it
// comes up: the image (qcow2, raw, vmdk, vhdx, vhd, or an OVA's first disk)
// is inspected like every image a user hands in and booted on a throw-away
// qcow2 overlay, with a NoCloud seed made from an env.yml (or a generated
// cloud-config for a bare base); then the agent's console line, the SSH
// banner and HTTPS 200 through forwarded loopback ports are awaited and
// reported. `ecs-image test` is its command line (flags and output).
package boottest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/env"
	"github.com/ecs-image/ecs-image/qemu"
)

// Console markers of the in-VM agent (agent/status).
const (
	Ready   = "ECS-APPLIANCE-READY"
	Failed  = "ECS-APPLIANCE-FAILED"
	Standby = "ECS-APPLIANCE-STANDBY"
	// CloudInitDone is cloud-init's final message ("Cloud-init v. 22.4.2
	// finished at …"), the ready line of a bare base.
	CloudInitDone = `Cloud-init v\. \S+ finished at`
	// User is the user the generated cloud-config creates (no env.yml).
	User = "ecs-test"
)

// Forwards are the guest ports forwarded to host loopback ports.
var Forwards = []int{22, 80, 443}

// Options say what to boot and what passes. Zero values take the
// defaults of `ecs-image test`.
type Options struct {
	Artifact string
	// Env is the env.yml put on the seed ISO, EnvName its name for
	// messages; nil: a cloud-config creating User with an ephemeral SSH
	// key (VM.Key), for booting bare bases.
	Env     []byte
	EnvName string
	// ReadyMarker is the regular expression of the console line that
	// means ready (default: Ready; without Env: CloudInitDone).
	ReadyMarker string
	// Expect is the state that passes: ready (default), failed or standby.
	Expect string
	// HTTPS also requires HTTPS 200 on the forwarded 443 port.
	HTTPS   bool
	Timeout time.Duration // boot to ready; default 15m
	Memory  int           // MiB; default 2048
	CPUs    int           // default 2
	// Firmware, Machine and SeedBus are as in qemu.Config.
	Firmware, Machine, SeedBus string
	// SerialLog also keeps the serial console log in this file.
	SerialLog string
	// Disks are further disks (raw, or self-contained qcow2) attached
	// read-write after the artifact's overlay, in order (vdb, vdc, …):
	// data volumes such as ecs-data and ecs-volatile. They are written to.
	Disks []string
	Log   logrus.FieldLogger // default: logrus's standard logger
}

// Report is what a boot test found.
type Report struct {
	Artifact     string         `json:"artifact"`
	Format       string         `json:"format"`
	Accel        string         `json:"accel"`
	Memory       int            `json:"memory_mib"`
	CPUs         int            `json:"cpus"`
	Machine      string         `json:"machine"`
	SeedBus      string         `json:"seed_bus"`
	Ports        map[string]int `json:"ports"`
	Datasource   string         `json:"datasource,omitempty"`
	SSHSeconds   float64        `json:"ssh_seconds,omitempty"`
	ReadySeconds float64        `json:"ready_seconds,omitempty"`
	HTTPSSeconds float64        `json:"https_seconds,omitempty"`
	HTTPSStatus  int            `json:"https_status,omitempty"`
	StatusPage   string         `json:"status_page,omitempty"`
	State        string         `json:"state"`
	Line         string         `json:"console_line,omitempty"`
	Reason       string         `json:"reason,omitempty"`
	OK           bool           `json:"ok"`
	Error        string         `json:"error,omitempty"`
	SerialTail   string         `json:"serial_tail,omitempty"`
}

// InputError is bad input: an unreadable or unsafe artifact, a bad ready
// marker (the CLI exits 2).
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// IsBadInput reports whether err is an *InputError.
func IsBadInput(err error) bool {
	var ie *InputError
	return errors.As(err, &ie)
}

// VM is a booted artifact.
type VM struct {
	Machine *qemu.Machine
	Report  *Report
	// Key is the SSH key of User (nil when booted with an env.yml); its
	// private half is KeyFile.
	Key     *communicator.Key
	KeyFile string
	// Work is the temporary directory (overlay, seed, serial log).
	Work string

	opts    Options
	markers *markers
	domain  string
	log     logrus.FieldLogger
}

func (o *Options) defaults() {
	if o.Expect == "" {
		o.Expect = "ready"
	}
	if o.Timeout == 0 {
		o.Timeout = 15 * time.Minute
	}
	if o.Memory == 0 {
		o.Memory = 2048
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.Firmware == "" {
		o.Firmware = qemu.FirmwareBIOS
	}
	if o.Machine == "" {
		o.Machine = qemu.MachineQ35
	}
	if o.ReadyMarker == "" {
		o.ReadyMarker = regexp.QuoteMeta(Ready)
		if o.Env == nil {
			o.ReadyMarker = CloudInitDone
		}
	}
	if o.Log == nil {
		o.Log = logrus.StandardLogger()
	}
}

// Start makes the seed and the overlay in a new temporary directory and
// boots the artifact; the artifact is not modified. Close the VM.
func Start(ctx context.Context, o Options) (*VM, error) {
	o.defaults()
	mk, err := newMarkers(o.ReadyMarker)
	if err != nil {
		return nil, &InputError{err}
	}
	v := &VM{opts: o, markers: mk, log: o.Log}
	var seed cidata.Options
	if o.Env != nil {
		doc, err := env.Parse(o.EnvName, o.Env)
		if err != nil {
			return nil, err // *env.Error: bad input, with file:line
		}
		v.domain = doc.Domain()
		seed = cidata.Options{UserData: o.Env, UserDataName: o.EnvName}
	}

	// Leftovers of a killed earlier run go first.
	qemu.RemoveStaleDirs(filepath.Join(os.TempDir(), "ecs-image-test-*"))
	if v.Work, err = os.MkdirTemp("", "ecs-image-test-"); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			v.Close()
		}
	}()
	if err := qemu.WriteOwner(v.Work); err != nil {
		return nil, err
	}
	if o.Env == nil {
		if v.Key, err = communicator.GenerateKey(); err != nil {
			return nil, err
		}
		v.KeyFile = filepath.Join(v.Work, "id_ed25519")
		if err := os.WriteFile(v.KeyFile, v.Key.PrivatePEM, 0o600); err != nil {
			return nil, err
		}
		seed = cidata.Options{UserData: CloudConfig(v.Key.AuthorizedKey), UserDataName: "generated cloud-config", Raw: true, Hostname: "ecs-test"}
	}
	seedPath := filepath.Join(v.Work, "seed.iso")
	if err := cidata.Write(seedPath, seed); err != nil {
		return nil, err
	}

	// The disk: an overlay on the artifact, which stays untouched.
	disk, diskFormat, format, err := artifactDisk(ctx, o.Artifact, v.Work)
	if err != nil {
		return nil, err
	}
	var dataDisks []qemu.DataDisk
	seen := map[string]bool{}
	if abs, err := filepath.Abs(o.Artifact); err == nil {
		seen[abs] = true
	}
	for _, d := range o.Disks {
		dd, err := dataDisk(ctx, d)
		if err != nil {
			return nil, &InputError{fmt.Errorf("disk %s: %w", d, err)}
		}
		if seen[dd.File] {
			return nil, &InputError{fmt.Errorf("disk %s: attached twice (or it is the artifact)", d)}
		}
		seen[dd.File] = true
		dataDisks = append(dataDisks, dd)
	}
	overlay := filepath.Join(v.Work, "overlay.qcow2")
	if err := qemu.Overlay(ctx, disk, diskFormat, overlay, 0); err != nil {
		return nil, err
	}

	serialLog := filepath.Join(v.Work, "serial.log")
	if o.SerialLog != "" {
		serialLog = o.SerialLog
	}
	cfg := qemu.Config{
		Name: "ecs-test-" + strings.TrimSuffix(filepath.Base(o.Artifact), filepath.Ext(o.Artifact)),
		Disk: overlay, DiskFormat: "qcow2", CDROMs: []string{seedPath}, Machine: o.Machine, SeedBus: o.SeedBus,
		Memory: o.Memory, CPUs: o.CPUs, Firmware: o.Firmware, SerialLog: serialLog,
		DataDisks: dataDisks,
	}
	for _, p := range Forwards {
		cfg.Forwards = append(cfg.Forwards, qemu.Forward{Guest: p})
	}
	v.Report = &Report{Artifact: o.Artifact, Format: format, Memory: o.Memory, CPUs: o.CPUs, Ports: map[string]int{},
		Machine: cfg.Machine, SeedBus: cfg.SeedBusUsed()}
	seedFrom := o.EnvName
	if o.Env == nil {
		seedFrom = "a generated cloud-config"
	}
	v.log.Infof("booting %s (%s) on an overlay (machine %s, seed on %s), seed from %s", o.Artifact, format, v.Report.Machine, v.Report.SeedBus, seedFrom)
	if v.Machine, err = qemu.Start(ctx, cfg); err != nil {
		return nil, err
	}
	v.Report.Accel = string(v.Machine.Config.Accel)
	for _, p := range Forwards {
		v.Report.Ports[fmt.Sprint(p)] = v.Machine.HostPort(p)
	}
	ok = true
	return v, nil
}

// Close kills QEMU and removes the temporary directory.
func (v *VM) Close() {
	if v.Machine != nil {
		v.Machine.Kill()
		<-v.Machine.Done()
	}
	os.RemoveAll(v.Work)
}

// Check waits, until the options' time-out, for the console marker, the
// SSH banner and HTTPS 200, and fills the report: nil when the appliance
// reached the expected state. When ctx ends, it returns an "interrupted"
// error and the report is incomplete.
func (v *VM) Check(ctx context.Context) error {
	deadline, cancel := context.WithTimeout(ctx, v.opts.Timeout)
	defer cancel()
	stopWaiting := v.Machine.Waiting(v.log, "the appliance to come up")
	err := v.check(deadline)
	stopWaiting()
	rep := v.Report
	rep.Accel = string(v.Machine.Accel())
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	rep.OK = err == nil
	rep.Datasource = consoleDatasource(v.Machine)
	if err != nil {
		rep.Error = err.Error()
		rep.SerialTail = v.Machine.SerialTail(40)
	}
	return err
}

// markers classifies console lines.
type markers struct {
	ready *regexp.Regexp
	all   *regexp.Regexp
}

var (
	failedRE  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(regexp.QuoteMeta(Failed) + `(?::\s*(.*))?`) })
	standbyRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(regexp.QuoteMeta(Standby) + `(?::\s*(.*))?`) })
	panicRE   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`Kernel panic - not syncing(?::\s*(.*))?`) })
)

func newMarkers(ready string) (*markers, error) {
	re, err := regexp.Compile(ready)
	if err != nil {
		return nil, fmt.Errorf("--ready-marker: %v", err)
	}
	all := regexp.MustCompile("(?:" + ready + ")|" + failedRE().String() + "|" + standbyRE().String() + "|" + panicRE().String())
	return &markers{ready: re, all: all}, nil
}

// agentMarkers are the in-VM agent's markers (ready: Ready).
var agentMarkers = sync.OnceValue(func() *markers {
	m, err := newMarkers(regexp.QuoteMeta(Ready))
	if err != nil {
		panic(err)
	}
	return m
})

// WaitState waits until the console shows the in-VM agent's marker (Ready,
// Failed or Standby) or a kernel panic, and returns the state it announces
// ("ready", "failed", "standby" or "panic"), the reason it gives and the
// line. It fails when ctx ends or QEMU exits first.
func WaitState(ctx context.Context, m *qemu.Machine) (state, reason, line string, err error) {
	mk := agentMarkers()
	if line, err = m.WaitSerialMatch(ctx, mk.all); err != nil {
		return "", "", "", err
	}
	state, reason = mk.classify(line)
	return state, reason, line, nil
}

// classify returns the state a console line announces ("ready", "failed",
// "standby", "panic") and the reason it gives.
func (v *markers) classify(line string) (state, reason string) {
	if m := failedRE().FindStringSubmatch(line); m != nil {
		return "failed", strings.TrimSpace(m[1])
	}
	if m := standbyRE().FindStringSubmatch(line); m != nil {
		return "standby", strings.TrimSpace(m[1])
	}
	if m := panicRE().FindStringSubmatch(line); m != nil {
		return "panic", "kernel panic: " + strings.TrimSpace(m[1])
	}
	if v.ready.MatchString(line) {
		if ds, noSeed, _ := cidata.ConsoleDatasource(line); noSeed {
			// cloud-init finished without the seed (a bare base's ready line).
			return "no-seed", "cloud-init found no seed (" + ds + "): the guest's kernel has no driver for the seed's controller, or no cidata label was found"
		}
		return "ready", ""
	}
	return "", ""
}

// consoleHas reports whether a console line so far matches re.
func consoleHas(m *qemu.Machine, re *regexp.Regexp) bool {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // read what is there, do not wait
	_, err := m.WaitSerialMatch(ctx, re)
	return err == nil
}

// consoleDatasource is the datasource cloud-init named on the console so far.
func consoleDatasource(m *qemu.Machine) string {
	found := ""
	for _, l := range strings.Split(m.SerialTail(5000), "\n") {
		if ds, _, ok := cidata.ConsoleDatasource(l); ok {
			found = ds
		}
	}
	return found
}

// CloudConfig is the seed for booting a bare base without an env.yml: User
// with authorizedKey and passwordless sudo.
func CloudConfig(authorizedKey string) []byte {
	return []byte(`#cloud-config
users:
  - default
  - name: ` + User + `
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - "` + authorizedKey + `"
`)
}
