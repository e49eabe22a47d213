package builder

import (
	"encoding/json"
	"testing"

	"github.com/ecs-image/ecs-image/builder/template"
)

// TestModeLegacyJSON reads stage.json entries and build manifests written
// before the mode was recorded, and the mode they get.
func TestModeLegacyJSON(t *testing.T) {
	for in, want := range map[string]template.Mode{
		`{"key":"k","booted":true}`:                 template.ModeBoot,
		`{"key":"k","booted":false,"chroot":true}`:  template.ModeChroot,
		`{"key":"k","booted":false}`:                template.ModeOffline,
		`{"key":"k","mode":"chroot","booted":true}`: template.ModeChroot,
	} {
		var e StageEntry
		if err := json.Unmarshal([]byte(in), &e); err != nil || e.Mode != want || e.Key != "k" {
			t.Errorf("stage.json %s: %+v %v, want %s", in, e, err, want)
		}
	}
	for in, want := range map[string]template.Mode{
		`{"name":"a","offline":false}`:               template.ModeBoot,
		`{"name":"a","offline":false,"chroot":true}`: template.ModeChroot,
		`{"name":"a","offline":true,"merged":true}`:  template.ModeOffline,
		`{"name":"a","mode":"boot"}`:                 template.ModeBoot,
	} {
		var r StageRecord
		if err := json.Unmarshal([]byte(in), &r); err != nil || r.Mode != want || r.Name != "a" {
			t.Errorf("manifest stage %s: %+v %v, want %s", in, r, err, want)
		}
	}
	data, _ := json.Marshal(StageRecord{Name: "a", Mode: template.ModeChroot})
	if string(data) != `{"name":"a","key":"","cached":false,"mode":"chroot"}` {
		t.Errorf("written: %s", data)
	}
}
