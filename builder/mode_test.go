package builder

import (
	"encoding/json"
	"testing"
)

// TestModeLegacyJSON reads stage.json entries and build manifests written
// before the mode was recorded, and the mode they get.
func TestModeLegacyJSON(t *testing.T) {
	for in, want := range map[string]Mode{
		`{"key":"k","booted":true}`:                 ModeBoot,
		`{"key":"k","booted":false,"chroot":true}`:  ModeChroot,
		`{"key":"k","booted":false}`:                ModeOffline,
		`{"key":"k","mode":"chroot","booted":true}`: ModeChroot,
	} {
		var e StageEntry
		if err := json.Unmarshal([]byte(in), &e); err != nil || e.Mode != want || e.Key != "k" {
			t.Errorf("stage.json %s: %+v %v, want %s", in, e, err, want)
		}
	}
	for in, want := range map[string]Mode{
		`{"name":"a","offline":false}`:               ModeBoot,
		`{"name":"a","offline":false,"chroot":true}`: ModeChroot,
		`{"name":"a","offline":true,"merged":true}`:  ModeOffline,
		`{"name":"a","mode":"boot"}`:                 ModeBoot,
	} {
		var r StageRecord
		if err := json.Unmarshal([]byte(in), &r); err != nil || r.Mode != want || r.Name != "a" {
			t.Errorf("manifest stage %s: %+v %v, want %s", in, r, err, want)
		}
	}
	data, _ := json.Marshal(StageRecord{Name: "a", Mode: ModeChroot})
	if string(data) != `{"name":"a","key":"","cached":false,"mode":"chroot"}` {
		t.Errorf("written: %s", data)
	}
}
