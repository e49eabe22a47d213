package offlinehelper

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAppArmorReport: the feature tree is reported parents first, one
// line per directory and file, contents base64; no tree is reported as
// none with the reason.
func TestAppArmorReport(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "caps"), 0o755)
	os.MkdirAll(filepath.Join(dir, "policy", "versions"), 0o755)
	os.WriteFile(filepath.Join(dir, "caps", "mask"), []byte("chown dac_override\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "policy", "versions", "v8"), []byte("yes\n"), 0o644)
	var out bytes.Buffer
	writeAppArmorReport(&out, dir)
	want := MarkerAAFeature + "d caps\n" +
		MarkerAAFeature + "f caps/mask Y2hvd24gZGFjX292ZXJyaWRlCg==\n" +
		MarkerAAFeature + "d policy\n" +
		MarkerAAFeature + "d policy/versions\n" +
		MarkerAAFeature + "f policy/versions/v8 eWVzCg==\n"
	if out.String() != want {
		t.Errorf("report:\n%s\nwant:\n%s", out.String(), want)
	}
	out.Reset()
	writeAppArmorReport(&out, filepath.Join(dir, "missing"))
	if !strings.HasPrefix(out.String(), MarkerAANone) || !strings.Contains(out.String(), "no AppArmor features") {
		t.Errorf("no tree: %q", out.String())
	}
}
