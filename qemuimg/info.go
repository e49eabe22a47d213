package qemuimg

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
)

// Info is what qemu-img reports about a disk image (the fields ecs-image
// uses), under the JSON names `ecs-image base inspect --json` prints.
type Info struct {
	// Path is the image file as the caller named it.
	Path string `json:"path"`
	// Format is qemu-img's format name: qcow2, raw, vmdk, vhdx, vpc.
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size"`
	ClusterSize int64  `json:"cluster-size,omitempty"`
	// Compat is the qcow2 compatibility level (0.10, 1.1).
	Compat string `json:"compat,omitempty"`
	// CreateType is the VMDK subformat (monolithicSparse, streamOptimized).
	CreateType string `json:"create-type,omitempty"`

	// What Inspect refuses; always empty in its results.
	Dirty         bool     `json:"-"`
	Corrupt       bool     `json:"-"`
	BackingFile   string   `json:"-"`
	BackingFormat string   `json:"-"`
	DataFile      string   `json:"-"`
	Extents       []string `json:"-"`
}

// report is `qemu-img info --output=json` as qemu-img writes it.
type report struct {
	Filename        string `json:"filename"`
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	ActualSize      int64  `json:"actual-size"`
	ClusterSize     int64  `json:"cluster-size"`
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	DirtyFlag       bool   `json:"dirty-flag"`
	FormatSpecific  *struct {
		Type string `json:"type"`
		Data struct {
			Compat     string `json:"compat"`
			DataFile   string `json:"data-file"`
			Corrupt    bool   `json:"corrupt"`
			CreateType string `json:"create-type"`
			Extents    []struct {
				Filename string `json:"filename"`
			} `json:"extents"`
		} `json:"data"`
	} `json:"format-specific"`
}

// ReadInfo runs `qemu-img info` on path opened as format (required: no
// probing) and returns the report as is, without judging it. It is for
// images ecs-image made itself (stage disks, overlays); an image a user
// hands in goes through Inspect.
func ReadInfo(ctx context.Context, path, format string) (*Info, error) {
	if format == "" {
		return nil, fmt.Errorf("qemu-img info %s: no format given", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	out, err := Run(ctx, "info", "--output=json", "-U", "-f", format, abs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return parseInfo(path, out)
}

func parseInfo(path string, out []byte) (*Info, error) {
	var r report
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: bad JSON: %w", path, err)
	}
	if r.Format == "" {
		return nil, fmt.Errorf("qemu-img info %s: no format reported", path)
	}
	info := &Info{
		Path: path, Format: r.Format, VirtualSize: r.VirtualSize, ActualSize: r.ActualSize,
		ClusterSize: r.ClusterSize, Dirty: r.DirtyFlag, BackingFormat: r.BackingFormat,
		BackingFile: r.BackingFilename,
	}
	if info.BackingFile == "" {
		info.BackingFile = r.FullBacking
	}
	if fs := r.FormatSpecific; fs != nil {
		info.Compat = fs.Data.Compat
		info.DataFile = fs.Data.DataFile
		info.Corrupt = fs.Data.Corrupt
		info.CreateType = fs.Data.CreateType
		for _, e := range fs.Data.Extents {
			info.Extents = append(info.Extents, e.Filename)
		}
	}
	return info, nil
}
