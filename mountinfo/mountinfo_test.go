package mountinfo

import (
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

func TestParse(t *testing.T) {
	data := []byte(`22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
35 22 0:30 / /my\040data rw,nosuid shared:9 - ext4 /dev/disk\040x rw
garbage line
36 22 0:31 / /tmp rw - tmpfs tmpfs rw
`)
	got := Parse(data)
	want := []Mount{
		{Point: "/", Source: "/dev/vda1", FSType: "ext4"},
		{Point: "/my data", Source: "/dev/disk x", FSType: "ext4"},
		{Point: "/tmp", Source: "tmpfs", FSType: "tmpfs"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d mounts %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mount %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b\011c`: "/a b\tc",
		`/plain`:       "/plain",
		`/trail\04`:    `/trail\04`,
		`/bad\9xx`:     `/bad\9xx`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadHasRoot(t *testing.T) {
	testenv.File(t, Path, "Linux with /proc mounted")
	ms, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Point == "/" {
			return
		}
	}
	t.Errorf("no mount of / in %d mounts", len(ms))
}
