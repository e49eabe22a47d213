//go:build !ecsfront

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/boottest"
	"github.com/ecs-image/ecs-image/qemu"
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
	disks       []string
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

--disk FILE (repeatable) attaches a further disk read-write after the
artifact, in order (vdb, vdc, … in the guest): data volumes such as the
ecs-data and ecs-volatile file systems (e.g. made with mke2fs -L ecs-data).
A qcow2 must be self-contained; any other file is attached as raw. The
disks are written to, not overlaid.

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
	badInputCheckers = append(badInputCheckers, boottest.IsBadInput)
	f := vmtestCmd.Flags()
	f.StringVarP(&vmtestFlags.env, "env", "e", "", "env.yml to put on the seed ISO (required unless --no-https)")
	f.DurationVar(&vmtestFlags.timeout, "timeout", 15*time.Minute, "give up after this long (boot to ready)")
	f.BoolVar(&vmtestFlags.keep, "keep", false, "leave the VM running after the checks until Ctrl-C")
	f.IntVar(&vmtestFlags.memory, "memory", 2048, "guest memory in MiB")
	f.IntVar(&vmtestFlags.cpus, "cpus", 2, "guest CPUs")
	f.StringVar(&vmtestFlags.firmware, "firmware", "bios", "guest firmware: bios or uefi (OVMF)")
	f.StringVar(&vmtestFlags.readyMarker, "ready-marker", "", "regular expression of the console line that means ready (default: "+boottest.Ready+"; without --env: cloud-init's final message)")
	f.BoolVar(&vmtestFlags.noHTTPS, "no-https", false, "do not require HTTPS 200 on the forwarded 443 port")
	f.StringVar(&vmtestFlags.expect, "expect", "ready", "state that passes: ready, failed or standby")
	f.StringVar(&vmtestFlags.serialLog, "serial-log", "", "also keep the serial console log in this file")
	f.StringArrayVar(&vmtestFlags.disks, "disk", nil, "attach a further disk read-write (raw or self-contained qcow2; repeatable: vdb, vdc, …)")
	f.BoolVar(&vmtestFlags.json, "json", false, "print the report as JSON")
	f.StringVar(&vmtestFlags.machine, "machine", qemu.MachineQ35, "QEMU machine: q35 (ICH9, SATA CD-ROMs: libvirt's default) or pc (i440fx, IDE CD-ROMs)")
	f.StringVar(&vmtestFlags.seedBus, "seed-bus", "", "where the seed is attached: "+strings.Join(qemu.SeedBuses, ", ")+
		" (sata/ide/scsi/pvscsi: a CD-ROM on AHCI, PIIX IDE, virtio-scsi, VMware PVSCSI; virtio: a read-only virtio disk; default: the machine's CD-ROM, sata on q35, ide on pc)")
	rootCmd.AddCommand(vmtestCmd)
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
	o := boottest.Options{Artifact: artifact, ReadyMarker: f.readyMarker, Expect: f.expect, HTTPS: !f.noHTTPS,
		Timeout: f.timeout, Memory: f.memory, CPUs: f.cpus, Firmware: f.firmware, Machine: f.machine, SeedBus: f.seedBus,
		SerialLog: f.serialLog, Disks: f.disks}
	if f.env != "" {
		data, err := readInput("env", f.env)
		if err != nil {
			return err
		}
		o.Env, o.EnvName = data, f.env
	}
	vm, err := boottest.Start(ctx, o)
	if err != nil {
		return err
	}
	defer vm.Close()
	checkErr := vm.Check(ctx)
	if ctx.Err() != nil {
		return checkErr
	}
	vmtestPrint(cmd.OutOrStdout(), vm.Report, f.json)
	if f.keep {
		vmtestKeep(ctx, cmd.ErrOrStderr(), vm)
	}
	if checkErr != nil {
		if !f.json {
			fmt.Fprintf(cmd.ErrOrStderr(), "last serial console lines:\n%s\n", vm.Report.SerialTail)
		}
		return checkErr
	}
	return nil
}

// vmtestPrint writes the report: as text, or JSON with --json.
func vmtestPrint(w io.Writer, r *boottest.Report, asJSON bool) {
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

func vmtestFirstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// vmtestKeep prints how to reach the VM and waits for Ctrl-C or for the
// guest to power off.
func vmtestKeep(ctx context.Context, w io.Writer, vm *boottest.VM) {
	m, r := vm.Machine, vm.Report
	fmt.Fprintln(w, "\nThe VM keeps running; press Ctrl-C to stop it and discard its overlay.")
	if vm.Key != nil {
		fmt.Fprintf(w, "  ssh -i %s -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p %d %s@127.0.0.1\n",
			vm.KeyFile, r.Ports["22"], boottest.User)
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
