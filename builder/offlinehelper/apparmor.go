package offlinehelper

import (
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// AppArmorFeaturesDir is where a kernel exports its AppArmor feature set
// (securityfs), the tree apparmor_parser reads at boot to choose and check
// its policy cache.
const AppArmorFeaturesDir = "/sys/kernel/security/apparmor/features"

// Markers of the AppArmor feature set report (Job.AppArmorFeatures): one
// line per directory ("d PATH") and file ("f PATH BASE64"), PATH relative to
// AppArmorFeaturesDir; or MarkerAANone and why the kernel has none.
const (
	MarkerAAFeature = "ECS-OFFLINE-AAFEATURE "
	MarkerAANone    = "ECS-OFFLINE-AAFEATURES-NONE: "
)

// reportAppArmor prints the running kernel's AppArmor feature set.
func reportAppArmor(con io.Writer) {
	if _, err := os.Stat(AppArmorFeaturesDir); err != nil {
		os.MkdirAll("/sys/kernel/security", 0o755)
		syscall.Mount("securityfs", "/sys/kernel/security", "securityfs", 0, "")
	}
	writeAppArmorReport(con, AppArmorFeaturesDir)
}

// writeAppArmorReport prints the feature set tree at dir as the helper
// reports it.
func writeAppArmorReport(con io.Writer, dir string) {
	var lines []string
	err := WalkAppArmorFeatures(dir, func(rel string, data []byte, dir bool) {
		if dir {
			lines = append(lines, "d "+rel)
		} else {
			lines = append(lines, "f "+rel+" "+base64.StdEncoding.EncodeToString(data))
		}
	})
	if err != nil {
		fmt.Fprintf(con, "%s%v\n", MarkerAANone, err)
		return
	}
	for _, l := range lines {
		fmt.Fprintf(con, "%s%s\n", MarkerAAFeature, l)
	}
}

// WalkAppArmorFeatures calls fn for every directory and file under dir (a
// feature set tree), parents first, with its path relative to dir.
func WalkAppArmorFeatures(dir string, fn func(rel string, data []byte, isDir bool)) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("the kernel exports no AppArmor features: %v", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if strings.ContainsAny(rel, " \n") {
			return fmt.Errorf("feature %q: unexpected name", rel)
		}
		switch {
		case d.IsDir():
			fn(rel, nil, true)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fn(rel, data, false)
		}
		return nil
	})
}
