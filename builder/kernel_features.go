package builder

// The AppArmor feature sets of image kernels. A booted image's
// apparmor.service uses the policy cache only when the cache was compiled
// for its kernel's feature set (the cache directory's name and its
// .features file follow the kernel's set, read from securityfs; the
// feature pin of Debian's parser.conf does not change them). The offline
// helper, which boots the image's own kernel, compiles the cache there;
// a generalisation in a chroot on the build host runs under the host's
// kernel, so it passes the image kernel's set to the image's own
// apparmor_parser (--kernel-features DIR). The set is read once per kernel
// in a helper boot and kept here under the kernel file's digest: later
// builds with that kernel boot no VM at all.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
)

// aaFeatureSet is a kernel's AppArmor feature set as the helper reported
// it: its tree's directories and files, or why there is none.
type aaFeatureSet struct {
	None  string // the kernel has no AppArmor features (why); then empty
	Dirs  []string
	Files map[string][]byte
}

// addLine reads one MarkerAAFeature line (without the marker).
func (s *aaFeatureSet) addLine(l string) error {
	kind, rest, _ := strings.Cut(l, " ")
	switch kind {
	case "d":
		if err := checkFeaturePath(rest); err != nil {
			return err
		}
		s.Dirs = append(s.Dirs, rest)
	case "f":
		name, b64, _ := strings.Cut(rest, " ")
		if err := checkFeaturePath(name); err != nil {
			return err
		}
		data, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return fmt.Errorf("feature %s: %v", name, err)
		}
		if s.Files == nil {
			s.Files = map[string][]byte{}
		}
		s.Files[name] = data
	default:
		return fmt.Errorf("feature line %q", l)
	}
	return nil
}

// checkFeaturePath refuses a path that would leave the tree (the report
// comes from the image's kernel: not trusted).
func checkFeaturePath(p string) error {
	if p == "" || strings.ContainsAny(p, "\x00\\") || path.IsAbs(p) || path.Clean(p) != p || !filepath.IsLocal(p) {
		return fmt.Errorf("feature path %q", p)
	}
	return nil
}

// empty tells whether nothing was reported.
func (s *aaFeatureSet) empty() bool { return s.None == "" && len(s.Dirs) == 0 && len(s.Files) == 0 }

// kernelFeatures is the cache of feature sets: DIR/<sha256 of the kernel
// file>/ holds features/ (the tree, as the kernel exports it) or none (a
// kernel without AppArmor: why).
type kernelFeatures struct{ Dir string }

// kernelFeaturesOf is the feature set cache beside the stage cache's
// entries (not an entry: no stage.json).
func kernelFeaturesOf(c *StageCache) kernelFeatures {
	return kernelFeatures{Dir: filepath.Join(c.Dir, "kernel-features")}
}

// fileDigest is the hex SHA-256 of a file's content.
func fileDigest(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lookup returns the recorded set of the kernel of the given digest: the
// features directory, or none's reason; found is false when the kernel
// was never recorded.
func (k kernelFeatures) lookup(digest string) (dir, none string, found bool) {
	d := filepath.Join(k.Dir, digest)
	if data, err := os.ReadFile(filepath.Join(d, "none")); err == nil {
		return "", strings.TrimSpace(string(data)), true
	}
	if fi, err := os.Stat(filepath.Join(d, "features")); err == nil && fi.IsDir() {
		return filepath.Join(d, "features"), "", true
	}
	return "", "", false
}

// store records s for the kernel of the given digest (atomically: a
// temporary directory renamed into place; a concurrent build's record of
// the same kernel is kept).
func (k kernelFeatures) store(digest string, s *aaFeatureSet) error {
	if s.empty() {
		return errors.New("no AppArmor feature set reported")
	}
	if err := os.MkdirAll(k.Dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(k.Dir, ".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if s.None != "" {
		if err := os.WriteFile(filepath.Join(tmp, "none"), []byte(s.None+"\n"), 0o644); err != nil {
			return err
		}
	} else {
		root := filepath.Join(tmp, "features")
		if err := os.Mkdir(root, 0o755); err != nil {
			return err
		}
		for _, d := range s.Dirs {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				return err
			}
		}
		for name, data := range s.Files {
			p := filepath.Join(root, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				return err
			}
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(k.Dir, digest)); err != nil {
		if _, _, found := k.lookup(digest); found {
			return nil
		}
		return err
	}
	return nil
}

// copyFeatures copies a recorded feature tree into dst (the chroot's /run).
func copyFeatures(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	return offlinehelper.WalkAppArmorFeatures(src, func(rel string, data []byte, dir bool) {
		p := filepath.Join(dst, filepath.FromSlash(rel))
		if dir {
			os.MkdirAll(p, 0o755)
		} else {
			os.WriteFile(p, data, 0o644)
		}
	})
}

// kernelVersion reads the release (what uname -r prints) from an x86
// bzImage's setup header: kernel_version at 0x20e points (+0x200) to a
// string "RELEASE (builder) #…".
func kernelVersion(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", fmt.Errorf("%s: not a bzImage: %v", p, err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" || binary.LittleEndian.Uint16(hdr[0x206:]) < 0x0200 {
		return "", fmt.Errorf("%s: not a bzImage (no setup header)", p)
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20e:])) + 0x200
	buf := make([]byte, 256)
	n, err := f.ReadAt(buf, off)
	if n == 0 {
		return "", fmt.Errorf("%s: kernel version: %v", p, err)
	}
	s, _, _ := bytes.Cut(buf[:n], []byte{0})
	ver, _, _ := strings.Cut(string(s), " ")
	if ver == "" || strings.ContainsAny(ver, "/\x00") || ver == "." || ver == ".." {
		return "", fmt.Errorf("%s: no kernel version in the setup header", p)
	}
	return ver, nil
}
