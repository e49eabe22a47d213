package formats

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// chainReader reads an image's guest data straight from the files of its
// qcow2/raw backing chain, at the host offsets `qemu-img map` reports:
// no intermediate raw copy (which costs a write and a read of every data
// byte). It serves only chains whose every data extent is stored
// uncompressed in a layer's own file (no compressed cluster, no external
// data file); openChain says when it cannot, and the caller converts.
type chainReader struct {
	ext   []chainExtent // sorted, contiguous from 0
	files []*os.File    // by depth
	size  int64         // virtual size (reads past it are zeros)
}

// chainExtent is one entry of `qemu-img map --output=json`.
type chainExtent struct {
	Start  int64  `json:"start"`
	Length int64  `json:"length"`
	Depth  int    `json:"depth"`
	Data   bool   `json:"data"`
	Zero   bool   `json:"zero"`
	Offset *int64 `json:"offset"`
}

// data reports whether the extent's bytes are read from a file (else
// they are zeros).
func (e *chainExtent) data() bool { return e.Data && !e.Zero }

// openChain maps the image at path (format qcow2 or raw) and opens its
// chain's files. It returns nil, nil when the chain cannot be read
// directly (a compressed cluster, an external data file, another
// format).
func openChain(ctx context.Context, path, format string) (*chainReader, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	out, err := qemuimg.Run(ctx, "info", "--backing-chain", "--output=json", "-U", "-f", format, abs)
	if err != nil {
		return nil, err
	}
	var layers []struct {
		Filename       string `json:"filename"`
		Format         string `json:"format"`
		VirtualSize    int64  `json:"virtual-size"`
		FormatSpecific struct {
			Data struct {
				DataFile string `json:"data-file"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &layers); err != nil || len(layers) == 0 {
		return nil, fmt.Errorf("qemu-img info --backing-chain %s: unreadable report", abs)
	}
	for _, l := range layers {
		if (l.Format != "qcow2" && l.Format != "raw") || l.FormatSpecific.Data.DataFile != "" || !filepath.IsAbs(l.Filename) {
			return nil, nil
		}
	}
	if out, err = qemuimg.Run(ctx, "map", "--output=json", "-U", "-f", format, abs); err != nil {
		return nil, err
	}
	c := &chainReader{size: layers[0].VirtualSize}
	if err := json.Unmarshal(out, &c.ext); err != nil {
		return nil, fmt.Errorf("qemu-img map %s: %w", abs, err)
	}
	end := int64(0)
	for _, e := range c.ext {
		if e.Start != end || e.Length <= 0 {
			return nil, fmt.Errorf("qemu-img map %s: extents not contiguous at %d", abs, end)
		}
		end += e.Length
		if !e.data() {
			continue
		}
		if e.Offset == nil || *e.Offset < 0 { // compressed: only qemu-img can read it
			return nil, nil
		}
		if e.Depth < 0 || e.Depth >= len(layers) {
			return nil, fmt.Errorf("qemu-img map %s: depth %d of a %d-file chain", abs, e.Depth, len(layers))
		}
	}
	if end != c.size {
		return nil, fmt.Errorf("qemu-img map %s: extents end at %d, the disk at %d", abs, end, c.size)
	}
	for _, l := range layers {
		f, err := os.Open(l.Filename)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.files = append(c.files, f)
	}
	return c, nil
}

// Close closes the chain's files.
func (c *chainReader) Close() error {
	for _, f := range c.files {
		f.Close()
	}
	return nil
}

// regions are the data extents, adjacent ones merged.
func (c *chainReader) regions() []region {
	var rs []region
	for _, e := range c.ext {
		if !e.data() {
			continue
		}
		if n := len(rs); n > 0 && rs[n-1].off+rs[n-1].len == e.Start {
			rs[n-1].len += e.Length
			continue
		}
		rs = append(rs, region{e.Start, e.Length})
	}
	return rs
}

// ReadAt reads guest bytes [off, off+len(p)): data extents from their
// layer's file, everything else (holes, zero clusters, past the virtual
// size) as zeros. A layer's file shorter than its map says is an error.
func (c *chainReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("chain: negative offset %d", off)
	}
	i := sort.Search(len(c.ext), func(i int) bool { return c.ext[i].Start+c.ext[i].Length > off })
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		if i >= len(c.ext) || pos >= c.size {
			clear(p[done:])
			return len(p), nil
		}
		e := &c.ext[i]
		n := int(min(int64(len(p)-done), e.Start+e.Length-pos))
		if e.data() {
			at := *e.Offset + pos - e.Start
			if m, err := c.files[e.Depth].ReadAt(p[done:done+n], at); m < n {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return done + m, fmt.Errorf("chain: %s at %d: %w", c.files[e.Depth].Name(), at, err)
			}
		} else {
			clear(p[done : done+n])
		}
		done += n
		i++
	}
	return done, nil
}
