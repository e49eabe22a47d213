// Package qemutest makes tiny bootable disks for testing code that runs
// virtual machines, without an operating system image: a boot sector that
// prints a message on the serial console.
package qemutest

import (
	"errors"
	"os"
	"path/filepath"
)

// DebugExitArgs are the QEMU arguments under which a BootDisk guest makes
// QEMU exit (status 3) right after printing its message. Without them the
// guest halts forever.
var DebugExitArgs = []string{"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"}

// BootDisk writes a 1 MiB raw disk to path whose BIOS boot sector prints
// msg on the first serial port (COM1) and then writes to I/O port 0xf4
// (see DebugExitArgs) and halts. msg may hold up to 482 bytes; use "\r\n"
// line ends.
func BootDisk(path, msg string) error {
	code := []byte{
		0xFA,       // cli
		0xFC,       // cld
		0x31, 0xC0, // xor ax, ax
		0x8E, 0xD8, // mov ds, ax
		0xBE, 0x1B, 0x7C, // mov si, 0x7c1b (msg, at offset 27)
		// loop (offset 9):
		0xAC,       // lodsb
		0x84, 0xC0, // test al, al
		0x74, 0x06, // jz done
		0xBA, 0xF8, 0x03, // mov dx, 0x3f8
		0xEE,       // out dx, al
		0xEB, 0xF5, // jmp loop
		// done (offset 20):
		0xB0, 0x01, // mov al, 1
		0xE6, 0xF4, // out 0xf4, al
		0xF4,       // hlt
		0xEB, 0xFD, // jmp hlt
	}
	if len(msg) > 510-len(code)-1 {
		return errors.New("qemutest: message too long for a boot sector")
	}
	disk := make([]byte, 1<<20)
	copy(disk, code)
	copy(disk[len(code):], msg)
	disk[510], disk[511] = 0x55, 0xAA
	return os.WriteFile(path, disk, 0o644)
}

// LyingKVMScript is a QEMU wrapper for a host whose KVM passes every probe
// and then hangs every guest: the KVM probe (its firmware is a file named
// probe.bin) "succeeds" at once, and a guest started with -accel kvm runs
// under TCG with its CPU stopped (-S), so its serial console stays silent.
// Guests under TCG run normally. With LYING_KVM_FAIL=start a KVM guest's
// QEMU fails as it starts (exit 1); with LYING_KVM_FAIL=abort it runs for
// two seconds, silent, then aborts (SIGABRT), as QEMU does on a KVM error.
const LyingKVMScript = `#!/bin/bash
# QEMU wrapper: a host whose KVM lies (see qemutest.LyingKVMScript).
real=${LYING_KVM_QEMU:-qemu-system-x86_64}
kvm=0 probe=0 prev= args=()
for a in "$@"; do
	if [ "$prev" = -accel ] && [ "$a" = kvm ]; then a=tcg; kvm=1; fi
	if [ "$prev" = -cpu ] && [ "$a" = host ]; then a=max; fi
	case "$a" in */probe.bin) probe=1 ;; esac
	args+=("$a")
	prev=$a
done
if [ $kvm = 1 ] && [ $probe = 1 ]; then exit 85; fi
if [ $kvm = 1 ]; then
	case "${LYING_KVM_FAIL:-}" in
	start)
		echo "qemu-system-x86_64: error: failed to set MSR 0x10a" >&2
		exit 1 ;;
	abort)
		"$real" "${args[@]}" -S &
		sleep 2
		kill -9 $! 2>/dev/null
		wait
		echo "KVM: entry failed, hardware error 0x80000021" >&2
		kill -ABRT $$ ;;
	esac
	args+=(-S)
fi
exec "$real" "${args[@]}"
`

// LyingKVM writes LyingKVMScript into dir and returns its path.
func LyingKVM(dir string) (string, error) {
	p := filepath.Join(dir, "qemu-lying-kvm")
	return p, os.WriteFile(p, []byte(LyingKVMScript), 0o755)
}
