package main

import (
	"archive/tar"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/env"
	"github.com/ecs-image/ecs-image/qemu"
	"github.com/ecs-image/ecs-image/qemuimg"
)

var vmtestFlags struct {
	env         string
	timeout     time.Duration
	keep        bool
	memory      int
	cpus        int
	firmware    string
	readyMarker string
	noHTTPS     bool
	expect      string
	serialLog   string
	json        bool
	machine     string
	seedBus     string
}

var vmtestCmd = &cobra.Command{
	Use:   "test ARTIFACT [--env ENV.yml] [flags]",
	Short: "Boot an appliance image under QEMU with a seed from env.yml and check that it comes up",
	Long: `Boot ARTIFACT under QEMU (KVM when it works, else TCG) without modifying it:
the VM writes to a qcow2 overlay in a temporary directory. ARTIFACT may be
qcow2, raw, vmdk, vhdx or vhd (the format is probed from its header, and the image
inspected like a base: no backing, data or extent files), or
an OVA (its first disk is used).

With --env, a NoCloud seed ISO is made from the env.yml (validated first) and
attached as a CD-ROM. Without --env (only with --no-https), the seed is plain
cloud-config creating a user "ecs-test" with an ephemeral SSH key, for booting
bare bases.

Guest ports 22, 80 and 443 are forwarded to free ports on 127.0.0.1. The
command then waits for:
  1. the agent's console line on the serial port (ttyS0):
     ECS-APPLIANCE-READY, or ECS-APPLIANCE-FAILED: <reason> /
     ECS-APPLIANCE-STANDBY, which end the wait at once (and so does QEMU
     exiting, or a kernel panic). --ready-marker replaces the ready line
     with a regular expression (e.g. cloud-init's final message for a bare
     base);
  2. unless --no-https: an HTTPS GET of / through the forwarded 443 port
     (Host and SNI: the env.yml's appliance.domain; self-signed certificates
     accepted) answering 200.
It prints a report (accelerator, time to SSH banner, to the ready line and to
HTTPS 200, forwarded ports) and exits 0, or exits 1 with the last serial
console lines on failure or after --timeout. Bad input exits 2.

--expect failed|standby turns the check around: the run passes when the
agent reports that state (e.g. for an env.yml that is meant to be broken).

--keep leaves the VM running after the checks and prints how to reach it,
until Ctrl-C. Without --keep, the VM is killed (the overlay is discarded
anyway). Ctrl-C at any time stops QEMU and removes the temporary files.`,
	Example: `  # Boot a built appliance with a demo env and check it comes up
  ecs-image test out/ecs-appliance.qcow2 --env env.yml

  # Keep it running afterwards to look around (Ctrl-C to stop)
  ecs-image test out/ecs-appliance.qcow2 --env env.yml --keep

  # Boot a converted vmdk, only wait for the console line, JSON report
  ecs-image test out/ecs-appliance.vmdk --env env.yml --no-https --json

  # Boot a bare base until cloud-init has finished
  ecs-image test base.qcow2 --no-https --ready-marker 'Cloud-init v\. \S+ finished at'

  # As libvirt's i440fx machines attach it: the seed on an IDE CD-ROM
  ecs-image test out/ecs-appliance.qcow2 --env env.yml --machine pc --seed-bus ide

  # A broken env.yml must leave the appliance visibly failed
  ecs-image test out/ecs-appliance.qcow2 --env broken.yml --expect failed`,
	Args: exactArgs(1),
	RunE: runVMTest,
}

func init() {
	f := vmtestCmd.Flags()
	f.StringVarP(&vmtestFlags.env, "env", "e", "", "env.yml to put on the seed ISO (required unless --no-https)")
	f.DurationVar(&vmtestFlags.timeout, "timeout", 15*time.Minute, "give up after this long (boot to ready)")
	f.BoolVar(&vmtestFlags.keep, "keep", false, "leave the VM running after the checks until Ctrl-C")
	f.IntVar(&vmtestFlags.memory, "memory", 2048, "guest memory in MiB")
	f.IntVar(&vmtestFlags.cpus, "cpus", 2, "guest CPUs")
	f.StringVar(&vmtestFlags.firmware, "firmware", "bios", "guest firmware: bios or uefi (OVMF)")
	f.StringVar(&vmtestFlags.readyMarker, "ready-marker", "", "regular expression of the console line that means ready (default: "+vmtestReady+"; without --env: cloud-init's final message)")
	f.BoolVar(&vmtestFlags.noHTTPS, "no-https", false, "do not require HTTPS 200 on the forwarded 443 port")
	f.StringVar(&vmtestFlags.expect, "expect", "ready", "state that passes: ready, failed or standby")
	f.StringVar(&vmtestFlags.serialLog, "serial-log", "", "also keep the serial console log in this file")
	f.BoolVar(&vmtestFlags.json, "json", false, "print the report as JSON")
	f.StringVar(&vmtestFlags.machine, "machine", qemu.MachineQ35, "QEMU machine: q35 (ICH9, SATA CD-ROMs: libvirt's default) or pc (i440fx, IDE CD-ROMs)")
	f.StringVar(&vmtestFlags.seedBus, "seed-bus", "", "where the seed is attached: "+strings.Join(qemu.SeedBuses, ", ")+
		" (sata/ide/scsi/pvscsi: a CD-ROM on AHCI, PIIX IDE, virtio-scsi, VMware PVSCSI; virtio: a read-only virtio disk; default: the machine's CD-ROM, sata on q35, ide on pc)")
	rootCmd.AddCommand(vmtestCmd)
}

// Console markers of the in-VM agent (agent/status).
const (
	vmtestReady   = "ECS-APPLIANCE-READY"
	vmtestFailed  = "ECS-APPLIANCE-FAILED"
	vmtestStandby = "ECS-APPLIANCE-STANDBY"
	// cloud-init's final message ("Cloud-init v. 22.4.2 finished at …").
	vmtestCloudInitDone = `Cloud-init v\. \S+ finished at`
	vmtestUser          = "ecs-test"
)

// vmtestForwards are the guest ports forwarded to host loopback ports.
var vmtestForwards = []int{22, 80, 443}

// vmtestReport is what `ecs-image test` found.
type vmtestReport struct {
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

// vmtestMarkers classifies console lines.
type vmtestMarkers struct {
	ready *regexp.Regexp
	all   *regexp.Regexp
}

var (
	vmtestFailedRE  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(regexp.QuoteMeta(vmtestFailed) + `(?::\s*(.*))?`) })
	vmtestStandbyRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(regexp.QuoteMeta(vmtestStandby) + `(?::\s*(.*))?`) })
	vmtestPanicRE   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`Kernel panic - not syncing(?::\s*(.*))?`) })
)

func newVMTestMarkers(ready string) (*vmtestMarkers, error) {
	re, err := regexp.Compile(ready)
	if err != nil {
		return nil, fmt.Errorf("--ready-marker: %v", err)
	}
	all := regexp.MustCompile("(?:" + ready + ")|" + vmtestFailedRE().String() + "|" + vmtestStandbyRE().String() + "|" + vmtestPanicRE().String())
	return &vmtestMarkers{ready: re, all: all}, nil
}

// classify returns the state a console line announces ("ready", "failed",
// "standby", "panic") and the reason it gives.
func (v *vmtestMarkers) classify(line string) (state, reason string) {
	if m := vmtestFailedRE().FindStringSubmatch(line); m != nil {
		return "failed", strings.TrimSpace(m[1])
	}
	if m := vmtestStandbyRE().FindStringSubmatch(line); m != nil {
		return "standby", strings.TrimSpace(m[1])
	}
	if m := vmtestPanicRE().FindStringSubmatch(line); m != nil {
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

// vmtestConsoleHas reports whether a console line so far matches re.
func vmtestConsoleHas(m *qemu.Machine, re *regexp.Regexp) bool {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // read what is there, do not wait
	_, err := m.WaitSerialMatch(ctx, re)
	return err == nil
}

// vmtestDatasource is the datasource cloud-init named on the console so far.
func vmtestDatasource(m *qemu.Machine) string {
	found := ""
	for _, l := range strings.Split(m.SerialTail(5000), "\n") {
		if ds, _, ok := cidata.ConsoleDatasource(l); ok {
			found = ds
		}
	}
	return found
}

func runVMTest(cmd *cobra.Command, args []string) error {
	f := vmtestFlags
	ctx := cmd.Context()
	artifact := args[0]
	switch f.expect {
	case "ready", "failed", "standby":
	default:
		return badInputf("--expect: want ready, failed or standby, got %q", f.expect)
	}
	if f.memory < 256 || f.cpus < 1 {
		return badInputf("--memory must be at least 256 (MiB) and --cpus at least 1")
	}
	if f.firmware != qemu.FirmwareBIOS && f.firmware != qemu.FirmwareUEFI {
		return badInputf("--firmware: want bios or uefi, got %q", f.firmware)
	}
	if f.timeout <= 0 {
		return badInputf("--timeout must be positive")
	}
	if err := (&qemu.Config{Disk: artifact, Machine: f.machine, SeedBus: f.seedBus}).Validate(); err != nil {
		return badInputf("--machine/--seed-bus: %v", err)
	}
	if f.env == "" && !f.noHTTPS {
		return badInputf("--env ENV.yml is required (without an env.yml the appliance cannot come up; use --no-https to boot a bare base)")
	}
	if _, err := os.Stat(artifact); err != nil {
		return badInput(err)
	}
	readyMarker := f.readyMarker
	if readyMarker == "" {
		readyMarker = regexp.QuoteMeta(vmtestReady)
		if f.env == "" {
			readyMarker = vmtestCloudInitDone
		}
	}
	markers, err := newVMTestMarkers(readyMarker)
	if err != nil {
		return badInput(err)
	}

	// Leftovers of a killed earlier run go first.
	qemu.RemoveStaleDirs(filepath.Join(os.TempDir(), "ecs-image-test-*"))
	work, err := os.MkdirTemp("", "ecs-image-test-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := qemu.WriteOwner(work); err != nil {
		return err
	}

	// The seed.
	var seed cidata.Options
	var domain string
	var key *communicator.Key
	if f.env != "" {
		data, err := readInput("env", f.env)
		if err != nil {
			return err
		}
		doc, err := env.Parse(f.env, data)
		if err != nil {
			return err // *env.Error: bad input, with file:line
		}
		domain = doc.Domain()
		seed = cidata.Options{UserData: data, UserDataName: f.env}
	} else {
		if key, err = communicator.GenerateKey(); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(work, "id_ed25519"), key.PrivatePEM, 0o600); err != nil {
			return err
		}
		seed = cidata.Options{UserData: vmtestCloudConfig(key.AuthorizedKey), UserDataName: "generated cloud-config", Raw: true, Hostname: "ecs-test"}
	}
	seedPath := filepath.Join(work, "seed.iso")
	if err := cidata.Write(seedPath, seed); err != nil {
		return err
	}

	// The disk: an overlay on the artifact, which stays untouched.
	disk, diskFormat, format, err := vmtestDisk(ctx, artifact, work)
	if err != nil {
		return err
	}
	overlay := filepath.Join(work, "overlay.qcow2")
	if err := qemu.Overlay(ctx, disk, diskFormat, overlay, 0); err != nil {
		return err
	}

	serialLog := filepath.Join(work, "serial.log")
	if f.serialLog != "" {
		serialLog = f.serialLog
	}
	cfg := qemu.Config{
		Name: "ecs-test-" + strings.TrimSuffix(filepath.Base(artifact), filepath.Ext(artifact)),
		Disk: overlay, DiskFormat: "qcow2", CDROMs: []string{seedPath}, Machine: f.machine, SeedBus: f.seedBus,
		Memory: f.memory, CPUs: f.cpus, Firmware: f.firmware, SerialLog: serialLog,
	}
	for _, p := range vmtestForwards {
		cfg.Forwards = append(cfg.Forwards, qemu.Forward{Guest: p})
	}
	rep := &vmtestReport{Artifact: artifact, Format: format, Memory: f.memory, CPUs: f.cpus, Ports: map[string]int{},
		Machine: cfg.Machine, SeedBus: cfg.SeedBusUsed()}
	logrus.Infof("booting %s (%s) on an overlay (machine %s, seed on %s), seed from %s", artifact, format, rep.Machine, rep.SeedBus, vmtestNameOr(f.env, "a generated cloud-config"))
	m, err := qemu.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		m.Kill()
		<-m.Done()
	}()
	rep.Accel = string(m.Config.Accel)
	for _, p := range vmtestForwards {
		rep.Ports[fmt.Sprint(p)] = m.HostPort(p)
	}

	deadline, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	stopWaiting := m.Waiting(logrus.StandardLogger(), "the appliance to come up")
	checkErr := vmtestCheck(deadline, m, markers, domain, f.expect, !f.noHTTPS, rep)
	stopWaiting()
	rep.Accel = string(m.Accel())
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	rep.OK = checkErr == nil
	rep.Datasource = vmtestDatasource(m)
	if checkErr != nil {
		rep.Error = checkErr.Error()
		rep.SerialTail = m.SerialTail(40)
	}
	vmtestPrint(cmd.OutOrStdout(), rep, f.json)
	if f.keep {
		vmtestKeep(ctx, cmd.ErrOrStderr(), m, rep, key, work)
	}
	if checkErr != nil {
		if !f.json {
			fmt.Fprintf(cmd.ErrOrStderr(), "last serial console lines:\n%s\n", rep.SerialTail)
		}
		return checkErr
	}
	return nil
}

// vmtestCheck waits for the console marker, the SSH banner and HTTPS 200,
// filling rep as they come.
func vmtestCheck(ctx context.Context, m *qemu.Machine, markers *vmtestMarkers, domain, expect string, https bool, rep *vmtestReport) error {
	since := func() float64 { return time.Since(m.Started).Round(100 * time.Millisecond).Seconds() }

	// The SSH banner, in the background (informational).
	sshCtx, stopSSH := context.WithCancel(ctx)
	var sshWG sync.WaitGroup
	sshWG.Add(1)
	go func() {
		defer sshWG.Done()
		if vmtestWaitSSH(sshCtx, m.HostPort(22)) == nil {
			rep.SSHSeconds = since()
			logrus.Infof("SSH is up after %.1fs", rep.SSHSeconds)
		}
	}()
	defer func() { stopSSH(); sshWG.Wait() }()

	// A bare base (no env.yml): its boot reaching the serial getty without
	// a line from cloud-init means cloud-init never ran — ds-identify saw
	// no seed — and its final line will never come.
	wait := markers.all
	if domain == "" {
		wait = regexp.MustCompile(markers.all.String() + "|" + cidata.ConsoleGettyRE().String())
	}
	var line string
	for {
		var err error
		line, err = m.WaitSerialMatch(ctx, wait)
		if err != nil {
			rep.State = "timeout"
			if m.Exited() {
				rep.State = "exited"
			}
			return err
		}
		if s, _ := markers.classify(line); s != "" || !cidata.ConsoleGettyRE().MatchString(line) {
			break
		}
		wait = markers.all
		if !vmtestConsoleHas(m, cidata.ConsoleCloudInitRE()) {
			rep.State, rep.Line, rep.ReadySeconds = "no-seed", line, since()
			rep.Reason = "the guest reached its login prompt and cloud-init never ran: ds-identify found no seed (the guest's kernel has no driver for the seed on " + rep.SeedBus + ", or no cidata label)"
			return fmt.Errorf("the appliance reported no-seed, want %s: %s", expect, rep.Reason)
		}
	}
	state, reason := markers.classify(line)
	rep.State, rep.Reason, rep.Line = state, reason, line
	rep.ReadySeconds = since()
	logrus.Infof("console after %.1fs: %s", rep.ReadySeconds, line)
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(m.HostPort(443)))
	if https && (state == "failed" || state == "standby") {
		// The agent's status page shows the reason: report what it says.
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		status, body, err := vmtestWaitHTTPS(pctx, addr, domain, false, m.Done())
		cancel()
		if err == nil {
			rep.HTTPSStatus, rep.StatusPage = status, vmtestPageText(body, 500)
		}
	}
	if state != expect {
		if reason != "" {
			return fmt.Errorf("the appliance reported %s, want %s: %s", state, expect, reason)
		}
		return fmt.Errorf("the appliance reported %s, want %s (%s)", state, expect, line)
	}
	if !https || state != "ready" {
		return nil
	}
	status, _, err := vmtestWaitHTTPS(ctx, addr, domain, true, m.Done())
	rep.HTTPSStatus = status
	if err != nil {
		return err
	}
	rep.HTTPSSeconds = since()
	logrus.Infof("HTTPS answered %d after %.1fs", status, rep.HTTPSSeconds)
	return nil
}

// vmtestWaitSSH waits until the forwarded port answers with an SSH banner.
func vmtestWaitSSH(ctx context.Context, port int) error {
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			stop := context.AfterFunc(ctx, func() { c.Close() })
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 4)
			_, err = io.ReadFull(c, buf)
			stop()
			c.Close()
			if err == nil && string(buf) == "SSH-" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// vmtestWaitHTTPS polls https://DOMAIN/ at addr (the forwarded 443 port) until
// it answers 200 (want200) or anything (otherwise), stopped is closed (QEMU
// exited) or ctx ends.
func vmtestWaitHTTPS(ctx context.Context, addr, domain string, want200 bool, stopped <-chan struct{}) (int, string, error) {
	host := domain
	if host == "" {
		host = "localhost"
	}
	tr := &http.Transport{
		// The appliance's certificate is self-signed (or for a domain that
		// does not resolve to this loopback forward): skip verification.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: host},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	url := "https://" + host + "/"
	var last string
	status := 0
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			status = resp.StatusCode
			if status == http.StatusOK || !want200 {
				return status, string(body), nil
			}
			if msg := fmt.Sprintf("HTTP %d", status); msg != last {
				logrus.Infof("%s via %s answered %s, waiting for 200", url, addr, msg)
				last = msg
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return status, "", fmt.Errorf("%s via %s: no 200 before the time-out (last: %s)", url, addr, last)
		case <-stopped:
			return status, "", fmt.Errorf("%s via %s: QEMU exited before it answered 200", url, addr)
		case <-time.After(2 * time.Second):
		}
	}
}

// vmtestCloudConfig is the seed for booting a bare base without an env.yml.
func vmtestCloudConfig(authorizedKey string) []byte {
	return []byte(`#cloud-config
users:
  - default
  - name: ` + vmtestUser + `
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - "` + authorizedKey + `"
`)
}

// vmtestPolicy: the artifacts `ecs-image test` boots, inspected like every
// image a user hands in (no backing, data or extent files).
var vmtestPolicy = qemuimg.Policy{
	Formats: []string{"qcow2", "raw", "vmdk", "vhdx", "vpc"},
	Hint:    "(want qcow2, raw, vmdk, vhdx, vhd or an OVA)",
}

// vmtestDisk returns the disk to put the overlay on, its format and the
// format's label for reports: the artifact itself, or the first disk of an
// OVA extracted into work.
func vmtestDisk(ctx context.Context, artifact, work string) (disk, format, label string, err error) {
	if vmtestIsTar(artifact) {
		disk, err := vmtestExtractOVA(artifact, work)
		if err != nil {
			return "", "", "", badInput(err)
		}
		info, err := qemuimg.Inspect(ctx, disk, vmtestPolicy)
		if err != nil {
			return "", "", "", badInput(fmt.Errorf("%s: %w", artifact, err))
		}
		return disk, info.Format, "ova/" + info.Format, nil
	}
	info, err := qemuimg.Inspect(ctx, artifact, vmtestPolicy)
	if err != nil {
		return "", "", "", badInput(err)
	}
	return artifact, info.Format, info.Format, nil
}

// vmtestIsTar reports whether path is a tar archive (an OVA).
func vmtestIsTar(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 262)
	if _, err := io.ReadFull(f, buf); err != nil {
		return false
	}
	return string(buf[257:262]) == "ustar"
}

// vmtestExtractOVA copies the first .vmdk of an OVA into dir.
func vmtestExtractOVA(ova, dir string) (string, error) {
	f, err := os.Open(ova)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s: an OVA without a .vmdk disk", ova)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", ova, err)
		}
		if h.Typeflag != tar.TypeReg || !strings.HasSuffix(strings.ToLower(h.Name), ".vmdk") {
			continue
		}
		out := filepath.Join(dir, "ova-disk.vmdk")
		w, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", err
		}
		if _, err := io.Copy(w, tr); err != nil {
			w.Close()
			return "", fmt.Errorf("%s: %s: %w", ova, h.Name, err)
		}
		return out, w.Close()
	}
}

func vmtestPrint(w io.Writer, r *vmtestReport, asJSON bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(r)
		return
	}
	fmt.Fprintf(w, "artifact:  %s (%s)\n", r.Artifact, r.Format)
	fmt.Fprintf(w, "machine:   %s, accel %s, %d MiB, %d CPUs, seed on %s\n", r.Machine, r.Accel, r.Memory, r.CPUs, r.SeedBus)
	fmt.Fprintf(w, "ports:     ssh 127.0.0.1:%d, http 127.0.0.1:%d, https 127.0.0.1:%d\n", r.Ports["22"], r.Ports["80"], r.Ports["443"])
	at := func(s float64) string {
		if s == 0 {
			return "not seen"
		}
		return fmt.Sprintf("%.1fs", s)
	}
	fmt.Fprintf(w, "ssh:       %s\n", at(r.SSHSeconds))
	if r.Line != "" {
		fmt.Fprintf(w, "console:   %s after %s (%s)\n", r.State, at(r.ReadySeconds), r.Line)
	} else {
		fmt.Fprintf(w, "console:   %s\n", r.State)
	}
	if r.HTTPSStatus != 0 && r.HTTPSSeconds != 0 {
		fmt.Fprintf(w, "https:     %d after %s\n", r.HTTPSStatus, at(r.HTTPSSeconds))
	} else if r.HTTPSStatus != 0 {
		fmt.Fprintf(w, "https:     %d\n", r.HTTPSStatus)
	}
	if r.StatusPage != "" {
		fmt.Fprintf(w, "page:      %s\n", r.StatusPage)
	}
	if r.Datasource != "" {
		fmt.Fprintf(w, "cloud-init: %s\n", r.Datasource)
	}
	if r.OK {
		fmt.Fprintf(w, "result:    PASS\n")
	} else {
		fmt.Fprintf(w, "result:    FAIL: %s\n", vmtestFirstLine(r.Error))
	}
}

var (
	vmtestHTMLDrop = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`(?is)<(script|style|head)\b.*?</(script|style|head)>`)
	})
	vmtestHTMLTag = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?s)<[^>]*>`) })
)

// vmtestPageText is the visible text of an HTML page, whitespace collapsed, cut
// at max bytes.
func vmtestPageText(body string, max int) string {
	t := vmtestHTMLTag().ReplaceAllString(vmtestHTMLDrop().ReplaceAllString(body, " "), " ")
	t = strings.NewReplacer("&amp;", "&", "&lt;", "<", "&gt;", ">", "&quot;", `"`, "&#39;", "'", "&nbsp;", " ").Replace(t)
	t = strings.Join(strings.Fields(t), " ")
	if len(t) > max {
		t = t[:max] + "…"
	}
	return t
}

func vmtestFirstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// vmtestKeep prints how to reach the VM and waits for Ctrl-C or for the
// guest to power off.
func vmtestKeep(ctx context.Context, w io.Writer, m *qemu.Machine, r *vmtestReport, key *communicator.Key, work string) {
	fmt.Fprintln(w, "\nThe VM keeps running; press Ctrl-C to stop it and discard its overlay.")
	if key != nil {
		fmt.Fprintf(w, "  ssh -i %s -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p %d %s@127.0.0.1\n",
			filepath.Join(work, "id_ed25519"), r.Ports["22"], vmtestUser)
	} else {
		fmt.Fprintf(w, "  ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p %d root@127.0.0.1   (keys from the env.yml)\n", r.Ports["22"])
	}
	fmt.Fprintf(w, "  https://127.0.0.1:%d/   http://127.0.0.1:%d/\n", r.Ports["443"], r.Ports["80"])
	fmt.Fprintf(w, "  serial console log: %s\n", m.SerialLog())
	select {
	case <-ctx.Done():
	case <-m.Done():
		fmt.Fprintln(w, "The VM has stopped.")
	}
}

func vmtestNameOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
