package cidata

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/env"
)

const testDomain = "seed.example.org"

func testEnv(t testing.TB) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/env.yml")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func build(t testing.TB, o Options) []byte {
	t.Helper()
	if o.UserData == nil {
		o.UserData = testEnv(t)
	}
	img, err := Build(o)
	if err != nil {
		t.Fatalf("Build(%s): %v", o.Format, err)
	}
	return img
}

func writeTemp(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReproducible(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	first := map[Format][]byte{}
	for _, f := range Formats {
		first[f] = build(t, Options{Format: f})
	}
	// go-diskfs stamps images with the clock (seconds) and the scratch
	// files' change time; cross a second boundary to catch any leak.
	time.Sleep(1100 * time.Millisecond)
	for _, f := range Formats {
		again := build(t, Options{Format: f})
		if !bytes.Equal(first[f], again) {
			t.Errorf("%s: two builds differ (first difference at byte %d)", f, firstDiff(first[f], again))
		}
	}
	if bytes.Equal(first[NoCloud], first[ConfigDrive]) {
		t.Error("nocloud and config-2 images are identical")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestSourceDateEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	def := build(t, Options{})
	if got := string(def[16*isoBlock+813 : 16*isoBlock+827]); got != "19800101000000" {
		t.Errorf("default PVD creation date %q, want 19800101000000", got)
	}

	t.Setenv("SOURCE_DATE_EPOCH", "1700000000") // 2023-11-14T22:13:20Z
	img := build(t, Options{})
	if bytes.Equal(img, def) {
		t.Fatal("SOURCE_DATE_EPOCH did not change the image")
	}
	pvd := img[16*isoBlock:]
	for _, off := range []int{813, 830} {
		if got := string(pvd[off : off+16]); got != "2023111422132000" {
			t.Errorf("PVD date at %d = %q, want 2023111422132000", off, got)
		}
	}
	for _, off := range []int{847, 864} { // expiration, effective: unset
		if got := string(pvd[off : off+16]); got != "0000000000000000" {
			t.Errorf("PVD date at %d = %q, want unset", off, got)
		}
	}
	// Rock Ridge TF and directory records, as an independent reader sees them.
	if out, ok := runTool(t, "isoinfo", "-R", "-l", "-i", writeTemp(t, "seed.iso", img)); ok {
		if !strings.Contains(out, "Nov 14 2023") || strings.Contains(out, "1980") {
			t.Errorf("isoinfo listing does not show 2023-11-14 dates:\n%s", out)
		}
	}
	fat := build(t, Options{Format: VFAT})
	if out, ok := runTool(t, "mdir", "-i", writeTemp(t, "seed.img", fat), "::"); ok {
		if !strings.Contains(out, "2023-11-14  22:13") {
			t.Errorf("mdir does not show 2023-11-14 22:13:\n%s", out)
		}
	}

	// An explicit ModTime wins over the environment.
	mt := build(t, Options{ModTime: time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)})
	if got := string(mt[16*isoBlock+813 : 16*isoBlock+827]); got != "20010203040506" {
		t.Errorf("ModTime: PVD creation date %q", got)
	}

	for _, bad := range []string{"yesterday", "-5", "1e9", "99999999999"} {
		t.Setenv("SOURCE_DATE_EPOCH", bad)
		_, err := Build(Options{UserData: testEnv(t)})
		var ie *InputError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
			t.Errorf("SOURCE_DATE_EPOCH=%q: got %v, want an InputError naming it", bad, err)
		}
	}
}

func TestNoCloudMetaData(t *testing.T) {
	s, err := Prepare(Options{UserData: testEnv(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^iid-ecs-[0-9a-f]{20}$`).MatchString(s.InstanceID) {
		t.Errorf("instance-id %q", s.InstanceID)
	}
	want := "instance-id: " + s.InstanceID + "\nlocal-hostname: " + testDomain + "\n"
	if got := string(fileOf(t, s, "meta-data")); got != want {
		t.Errorf("meta-data:\n%s\nwant:\n%s", got, want)
	}
	if !bytes.Equal(fileOf(t, s, "user-data"), testEnv(t)) {
		t.Error("user-data is not the env.yml unchanged")
	}
	if paths(s) != "meta-data user-data" {
		t.Errorf("files %q", paths(s))
	}

	// Stable for the same content, whatever the format; different otherwise.
	s2, _ := Prepare(Options{UserData: testEnv(t), Format: VFAT})
	if s2.InstanceID != s.InstanceID {
		t.Errorf("vfat instance-id %s != nocloud %s", s2.InstanceID, s.InstanceID)
	}
	other := bytes.Replace(testEnv(t), []byte(testDomain), []byte("other.example.org"), 1)
	s3, err := Prepare(Options{UserData: other})
	if err != nil {
		t.Fatal(err)
	}
	if s3.InstanceID == s.InstanceID {
		t.Error("different env.yml, same instance-id")
	}
	if !strings.Contains(string(fileOf(t, s3, "meta-data")), "local-hostname: other.example.org\n") {
		t.Errorf("meta-data does not follow appliance.domain:\n%s", fileOf(t, s3, "meta-data"))
	}
	s4, _ := Prepare(Options{UserData: testEnv(t), Hostname: "override.example.org"})
	if !strings.Contains(string(fileOf(t, s4, "meta-data")), "local-hostname: override.example.org\n") {
		t.Errorf("Hostname not used:\n%s", fileOf(t, s4, "meta-data"))
	}
}

func TestUserMetaDataMerge(t *testing.T) {
	s, err := Prepare(Options{UserData: testEnv(t), MetaData: []byte("# site\ndsmode: local\npublic-keys: [a, b]\n")})
	if err != nil {
		t.Fatal(err)
	}
	md := string(fileOf(t, s, "meta-data"))
	for _, w := range []string{"instance-id: " + s.InstanceID + "\n", "local-hostname: " + testDomain + "\n", "dsmode: local\n"} {
		if !strings.Contains(md, w) {
			t.Errorf("meta-data lacks %q:\n%s", w, md)
		}
	}
	// The user's own instance-id and hostname win, and the file is kept verbatim.
	own := []byte("instance-id: my-id\nlocal-hostname: my-host\n")
	s, err = Prepare(Options{UserData: testEnv(t), MetaData: own})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fileOf(t, s, "meta-data"), own) || s.InstanceID != "my-id" {
		t.Errorf("meta-data %q (instance-id %q), want the user's verbatim", fileOf(t, s, "meta-data"), s.InstanceID)
	}
	for _, bad := range []string{"- a list\n", "a: [\n", "a: 1\na: 2\n", "instance-id: {x: 1}\n"} {
		_, err := Prepare(Options{UserData: testEnv(t), MetaData: []byte(bad), MetaDataName: "md.yml"})
		var ie *InputError
		if !errors.As(err, &ie) || ie.File != "md.yml" {
			t.Errorf("meta-data %q: got %v, want an InputError naming md.yml", bad, err)
		}
	}
}

func TestConfigDriveFiles(t *testing.T) {
	net := []byte(`{"links": [], "networks": [], "services": []}`)
	s, err := Prepare(Options{Format: ConfigDrive, UserData: testEnv(t), NetworkConfig: net, VendorData: []byte("#cloud-config\npackages: [htop]\n")})
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(s); got != "openstack/latest/meta_data.json openstack/latest/network_data.json openstack/latest/user_data openstack/latest/vendor_data.json" {
		t.Errorf("files %q", got)
	}
	var md map[string]any
	if err := json.Unmarshal(fileOf(t, s, "openstack/latest/meta_data.json"), &md); err != nil {
		t.Fatal(err)
	}
	uuid, _ := md["uuid"].(string)
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(uuid) || uuid != s.InstanceID {
		t.Errorf("uuid %q (instance-id %q)", uuid, s.InstanceID)
	}
	if md["hostname"] != testDomain || md["name"] != testDomain {
		t.Errorf("meta_data.json hostname/name: %v", md)
	}
	var vd map[string]string
	if err := json.Unmarshal(fileOf(t, s, "openstack/latest/vendor_data.json"), &vd); err != nil || vd["cloud-init"] != "#cloud-config\npackages: [htop]\n" {
		t.Errorf("vendor_data.json %q (%v)", fileOf(t, s, "openstack/latest/vendor_data.json"), err)
	}
	if _, err := Prepare(Options{Format: ConfigDrive, UserData: testEnv(t), VendorData: []byte{0x1f, 0x8b, 0xff}}); err == nil {
		t.Error("binary vendor-data accepted for config-2")
	}
	// NoCloud-style YAML network config is refused for config-2.
	_, err = Prepare(Options{Format: ConfigDrive, UserData: testEnv(t), NetworkConfig: []byte("version: 2\n"), NetworkConfigName: "net.yml"})
	var ie *InputError
	if !errors.As(err, &ie) || ie.File != "net.yml" {
		t.Errorf("YAML network config for config-2: %v", err)
	}
	// User meta-data merges into the JSON.
	s, err = Prepare(Options{Format: ConfigDrive, UserData: testEnv(t), MetaData: []byte("availability_zone: nova\nhostname: h.example\n")})
	if err != nil {
		t.Fatal(err)
	}
	md = nil
	_ = json.Unmarshal(fileOf(t, s, "openstack/latest/meta_data.json"), &md)
	if md["availability_zone"] != "nova" || md["hostname"] != "h.example" || md["uuid"] != s.InstanceID {
		t.Errorf("merged meta_data.json: %v", md)
	}
}

func TestNoCloudOptionalFiles(t *testing.T) {
	s, err := Prepare(Options{UserData: testEnv(t), NetworkConfig: []byte("version: 2\nethernets: {}\n"), VendorData: []byte("#!/bin/sh\ntrue\n")})
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(s); got != "meta-data network-config user-data vendor-data" {
		t.Errorf("files %q", got)
	}
	for _, bad := range []string{"[1, 2]\n", "version: [\n", ""} {
		if bad == "" {
			continue
		}
		_, err := Prepare(Options{UserData: testEnv(t), NetworkConfig: []byte(bad)})
		var ie *InputError
		if !errors.As(err, &ie) {
			t.Errorf("network-config %q: got %v, want InputError", bad, err)
		}
	}
	big := bytes.Repeat([]byte("a"), MaxFileSize+1)
	if _, err := Prepare(Options{UserData: testEnv(t), VendorData: big}); err == nil {
		t.Error("oversize vendor-data accepted")
	}
}

func TestInvalidEnvWritesNothing(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "seed.iso")
	bad := []byte("#cloud-config\nappliance:\n  ssl: {}\n")
	for _, f := range Formats {
		err := Write(out, Options{Format: f, UserData: bad, UserDataName: "bad-env.yml"})
		var ee *env.Error
		if !errors.As(err, &ee) {
			t.Fatalf("%s: got %v, want *env.Error", f, err)
		}
		if !strings.Contains(err.Error(), "bad-env.yml") {
			t.Errorf("error does not name the file: %v", err)
		}
	}
	// Broken YAML: the position is reported.
	err := Write(out, Options{UserData: []byte("#cloud-config\nappliance:\n  domain: [x\n"), UserDataName: "broken.yml"})
	if err == nil || !regexp.MustCompile(`broken\.yml:\d+`).MatchString(err.Error()) {
		t.Errorf("broken YAML: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("files left behind: %v", ents)
	}
	// Raw skips the env validation (plain cloud-config seeds).
	if err := Write(out, Options{UserData: []byte("#cloud-config\npackages: [htop]\n"), Raw: true, Hostname: "build"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Prepare(Options{}); err == nil {
		t.Error("empty user-data accepted")
	}
}

func TestWriteMode(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "seed.iso")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(out, Options{UserData: testEnv(t)}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
	data, _ := os.ReadFile(out)
	if !bytes.Equal(data, build(t, Options{})) {
		t.Error("Write and Build differ")
	}
	if err := Write(filepath.Join(dir, "missing", "seed.iso"), Options{UserData: testEnv(t)}); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{"": NoCloud, "nocloud": NoCloud, "config-2": ConfigDrive, "vfat": VFAT} {
		if got, err := ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseFormat("iso"); err == nil {
		t.Error("ParseFormat(iso) succeeded")
	}
}

func fileOf(t *testing.T, s *Seed, p string) []byte {
	t.Helper()
	for _, f := range s.Files {
		if f.Path == p {
			return f.Data
		}
	}
	t.Fatalf("seed has no %s (files: %s)", p, paths(s))
	return nil
}

func paths(s *Seed) string {
	var p []string
	for _, f := range s.Files {
		p = append(p, f.Path)
	}
	return strings.Join(p, " ")
}

func TestBuildConcurrent(t *testing.T) {
	want := build(t, Options{Format: ConfigDrive})
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			img, err := Build(Options{Format: ConfigDrive, UserData: testEnv(t)})
			if err == nil && !bytes.Equal(img, want) {
				err = errors.New("concurrent build differs")
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
