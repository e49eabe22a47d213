package formats

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// ovfParams fill the OVF 1.0 descriptor template.
type ovfParams struct {
	Name, Product, Vendor, Version string
	CPUs, MemoryMiB                int
	DiskFile                       string
	DiskFileSize                   int64
	Capacity                       int64
	SystemType                     string // vssd:VirtualSystemType, e.g. vmx-13
	ControllerType                 int    // rasd:ResourceType: 6 = parallel SCSI, 20 = SATA
	ControllerSubType              string // lsilogic, AHCI
	NICSubType                     string // VmxNet3, E1000
	MAC                            string // optional rasd:Address of the NIC
}

// rasd elements are in alphabetical order, as the CIM schema's sequence
// requires.
var ovfTemplate = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("ovf").Funcs(template.FuncMap{"x": xmlEscape}).Parse(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{{x .DiskFile}}" ovf:id="file1" ovf:size="{{.DiskFileSize}}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{{.Capacity}}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{{x .Name}}">
    <Info>A virtual machine</Info>
    <Name>{{x .Name}}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian GNU/Linux (64-bit)</Description>
    </OperatingSystemSection>
    <ProductSection>
      <Info>Information about the installed software</Info>
      <Product>{{x .Product}}</Product>
      <Vendor>{{x .Vendor}}</Vendor>
      <Version>{{x .Version}}</Version>
    </ProductSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{{x .Name}}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{{x .SystemType}}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{{.CPUs}} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.CPUs}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{{.MemoryMiB}}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.MemoryMiB}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>Disk controller</rasd:Description>
        <rasd:ElementName>Disk controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>{{x .ControllerSubType}}</rasd:ResourceSubType>
        <rasd:ResourceType>{{.ControllerType}}</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
{{- if .MAC}}
        <rasd:Address>{{x .MAC}}</rasd:Address>
{{- end}}
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>{{x .NICSubType}} ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>{{x .NICSubType}}</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`))
})

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func renderOVF(p ovfParams) ([]byte, error) {
	var b bytes.Buffer
	if err := ovfTemplate().Execute(&b, p); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// vmwareOVF are the descriptor parameters for VMware (ESXi 6.5+).
func vmwareOVF(o Options, name string) ovfParams {
	return ovfParams{Name: name, Product: o.Product, Vendor: o.Vendor, Version: o.Version, CPUs: o.CPUs, MemoryMiB: o.MemoryMiB,
		SystemType: "vmx-" + vmwareHWVersion, ControllerType: 6, ControllerSubType: "lsilogic", NICSubType: "VmxNet3"}
}

// writeOVA writes an OVF 1.0 package as one ustar archive: the descriptor
// first, then the SHA256 manifest, then the disk (the order DSP0243 requires).
func writeOVA(ctx context.Context, j *job) error {
	vmdk, _, err := j.streamVMDK(ctx, 1)
	if err != nil {
		return err
	}
	disk := j.base + "-disk1.vmdk"
	p := vmwareOVF(j.opts, j.base)
	p.DiskFile = disk
	return writeOVFTar(ctx, j, j.out, j.base+".ovf", j.base+".mf", p, vmdk, disk, tar.FormatUSTAR, nil, nil)
}

// writeOVFTar renders the descriptor for the vmdk at vmdkPath and writes the
// tar: descriptor, manifest, disk, then the extra files. A non-nil wrap
// wraps the file writer (gzip for Vagrant boxes).
func writeOVFTar(ctx context.Context, j *job, out, ovfName, mfName string, p ovfParams, vmdkPath, diskName string, format tar.Format, extra []tarFile, wrap func(io.Writer) io.WriteCloser) error {
	st, err := os.Stat(vmdkPath)
	if err != nil {
		return err
	}
	p.DiskFileSize = st.Size()
	p.Capacity = j.in.VirtualSize
	ovf, err := renderOVF(p)
	if err != nil {
		return err
	}
	diskSum, _, err := atomicfile.SHA256File(ctx, vmdkPath)
	if err != nil {
		return err
	}
	ovfSum := sha256.Sum256(ovf)
	mf := fmt.Sprintf("SHA256(%s)= %s\nSHA256(%s)= %s\n", ovfName, hex.EncodeToString(ovfSum[:]), diskName, diskSum)

	files := []tarFile{{name: ovfName, data: ovf}, {name: mfName, data: []byte(mf)}, {name: diskName, path: vmdkPath}}
	files = append(files, extra...)
	return writeTar(ctx, j, out, format, files, wrap)
}

// tarFile is a member of an archive: in-memory data or a file on disk.
type tarFile struct {
	name string
	data []byte
	path string
}

// writeTar writes files into a tar at out, optionally through wrap (e.g.
// gzip), with progress for the on-disk members.
func writeTar(ctx context.Context, j *job, out string, format tar.Format, files []tarFile, wrap func(io.Writer) io.WriteCloser) error {
	var total int64
	for _, f := range files {
		if f.path != "" {
			st, err := os.Stat(f.path)
			if err != nil {
				return err
			}
			total += st.Size()
		}
	}
	tr := j.tracker("pack", total)
	defer tr.Done()

	fh, err := os.Create(out)
	if err != nil {
		return err
	}
	defer fh.Close()
	bw := bufio.NewWriterSize(fh, 1<<20)
	var dst io.Writer = bw
	var wc io.WriteCloser
	if wrap != nil {
		wc = wrap(bw)
		dst = wc
	}
	tw := tar.NewWriter(dst)
	now := time.Now().UTC().Truncate(time.Second)
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr := &tar.Header{Name: f.name, Mode: 0o644, ModTime: now, Typeflag: tar.TypeReg, Format: format, Uname: "root", Gname: "root"}
		if f.path == "" {
			hdr.Size = int64(len(f.data))
			if err := tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("tar %s: %w", f.name, err)
			}
			if _, err := tw.Write(f.data); err != nil {
				return err
			}
			continue
		}
		src, err := os.Open(f.path)
		if err != nil {
			return err
		}
		st, err := src.Stat()
		if err != nil {
			src.Close()
			return err
		}
		hdr.Size = st.Size()
		if err := tw.WriteHeader(hdr); err != nil {
			src.Close()
			return fmt.Errorf("tar %s: %w", f.name, err)
		}
		_, err = io.Copy(tw, tr.Reader(ctxReader{ctx, src}))
		src.Close()
		if err != nil {
			return fmt.Errorf("tar %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if wc != nil {
		if err := wc.Close(); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := fh.Sync(); err != nil {
		return err
	}
	return fh.Close()
}

// ctxReader stops reading once ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
