package prepare

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/ecs-image/ecs-image/contract"
)

// ImageEntry is one entry of /app/images/manifest.json, the index the
// builder's containers and stack provisioners write next to the baked
// image tarballs (contract.ImageEntry).
type ImageEntry = contract.ImageEntry

// ReadImageIndex reads and checks the images manifest; a missing manifest
// is an empty list.
func (a *Agent) ReadImageIndex() ([]ImageEntry, error) {
	data, err := a.Host.ReadFile(ImagesIndex)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var list []ImageEntry
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", ImagesIndex, err)
	}
	for i, e := range list {
		if e.File == "" || path.IsAbs(e.File) || strings.Contains(e.File, "..") {
			return nil, fmt.Errorf("%s: entry %d: file %q must be a relative path inside %s", ImagesIndex, i, e.File, ImagesDir)
		}
		if len(e.Tags) == 0 {
			return nil, fmt.Errorf("%s: entry %d (%s): no tags", ImagesIndex, i, e.File)
		}
		for _, t := range e.Tags {
			if t == "" || strings.ContainsAny(t, " \t\n") || strings.HasPrefix(t, "-") {
				return nil, fmt.Errorf("%s: entry %d (%s): bad tag %q", ImagesIndex, i, e.File, t)
			}
		}
	}
	return list, nil
}

// ImageConfig is what the agent needs from an image's configuration.
type ImageConfig struct {
	ExposedTCP []int
}

// ReadImageConfig reads the configuration of the first image of a
// docker-archive (or OCI layout) tarball without loading it.
func ReadImageConfig(file string) (ImageConfig, error) {
	var cfg ImageConfig
	f, err := os.Open(file)
	if err != nil {
		return cfg, err
	}
	defer f.Close()
	var r io.Reader = f
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return cfg, err
		}
		r = zr
	} else {
		// Keep the *os.File so tar can seek over layer data.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return cfg, err
		}
	}
	small := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return cfg, fmt.Errorf("%s: %w", file, err)
		}
		if h.Typeflag == tar.TypeReg && h.Size < 1<<20 && len(small) < 256 {
			data, err := io.ReadAll(tr)
			if err != nil {
				return cfg, fmt.Errorf("%s: %w", file, err)
			}
			small[path.Clean(h.Name)] = data
		}
	}
	var configData []byte
	if m, ok := small["manifest.json"]; ok {
		var man []struct{ Config string }
		if err := json.Unmarshal(m, &man); err != nil || len(man) == 0 {
			return cfg, fmt.Errorf("%s: bad manifest.json", file)
		}
		configData = small[path.Clean(man[0].Config)]
	} else if idx, ok := small["index.json"]; ok {
		configData = ociConfig(small, idx)
	}
	if configData == nil {
		return cfg, fmt.Errorf("%s: not a docker-archive or OCI image tarball (no manifest.json or index.json)", file)
	}
	var ic struct {
		Config struct {
			ExposedPorts map[string]struct{}
		} `json:"config"`
	}
	if err := json.Unmarshal(configData, &ic); err != nil {
		return cfg, fmt.Errorf("%s: image config: %w", file, err)
	}
	for p := range ic.Config.ExposedPorts {
		num, proto, _ := strings.Cut(p, "/")
		if proto != "" && proto != "tcp" {
			continue
		}
		if n, err := strconv.Atoi(num); err == nil {
			cfg.ExposedTCP = append(cfg.ExposedTCP, n)
		}
	}
	sort.Ints(cfg.ExposedTCP)
	return cfg, nil
}

func ociConfig(small map[string][]byte, index []byte) []byte {
	type desc struct{ Digest string }
	blob := func(d string) []byte {
		alg, hex, _ := strings.Cut(d, ":")
		return small["blobs/"+alg+"/"+hex]
	}
	var idx struct{ Manifests []desc }
	if json.Unmarshal(index, &idx) != nil || len(idx.Manifests) == 0 {
		return nil
	}
	data := blob(idx.Manifests[0].Digest)
	for depth := 0; data != nil && depth < 3; depth++ {
		var m struct {
			Config    *desc
			Manifests []desc
		}
		if json.Unmarshal(data, &m) != nil {
			return nil
		}
		if m.Config != nil {
			return blob(m.Config.Digest)
		}
		if len(m.Manifests) == 0 {
			return nil
		}
		data = blob(m.Manifests[0].Digest)
	}
	return nil
}

// loadedRefs parses `docker load` output.
func loadedRefs(out string) []string {
	var refs []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		for _, p := range []string{"Loaded image ID: ", "Loaded image: "} {
			if strings.HasPrefix(l, p) {
				refs = append(refs, strings.TrimSpace(strings.TrimPrefix(l, p)))
			}
		}
	}
	return refs
}
