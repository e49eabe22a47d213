package template

import (
	"encoding/json"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestMode(t *testing.T) {
	for _, m := range []Mode{ModeAuto, ModeBoot, ModeChroot, ModeOffline} {
		got, err := NewMode(m.String())
		if err != nil || got != m {
			t.Errorf("NewMode(%q) = %v, %v", m.String(), got, err)
		}
		data, err := json.Marshal(m)
		if err != nil || string(data) != `"`+m.String()+`"` {
			t.Errorf("json %s: %s %v", m, data, err)
		}
		var back Mode
		if err := json.Unmarshal(data, &back); err != nil || back != m {
			t.Errorf("json %s: back %v %v", data, back, err)
		}
	}
	if m, err := NewMode(""); err != nil || m != ModeAuto {
		t.Errorf("empty: %v %v", m, err)
	}
	if _, err := NewMode("vm"); err == nil {
		t.Error("vm: no error")
	}
	if _, err := json.Marshal(Mode(9)); err == nil {
		t.Error("Mode(9) marshalled")
	}
	for in, want := range map[string]string{
		"mode: boot":    "",
		"mode: chroot":  "",
		"mode: auto":    "",
		"mode: offline": `"offline": want auto, boot or chroot`,
		"mode: [boot]":  "want auto, boot or chroot, got a list",
	} {
		var v struct {
			Mode Mode `yaml:"mode"`
		}
		err := yaml.Unmarshal([]byte(in), &v)
		if err != nil {
			if want == "" || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want %q", in, err, want)
			}
		} else if want != "" {
			t.Errorf("%s: no error, want %q", in, want)
		}
	}
}
