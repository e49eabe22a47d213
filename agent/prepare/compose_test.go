package prepare

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
)

func TestComposeDetection(t *testing.T) {
	write := func(root, p, data string) {
		t.Helper()
		f := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		files map[string]string
		want  ComposeTool
	}{
		{"plugin (Debian 13)", map[string]string{"/usr/libexec/docker/cli-plugins/docker-compose": "\x7fELF", "/usr/bin/docker-compose": "\x7fELF"},
			ComposeTool{Name: "docker", Args: []string{"compose"}, V2: true}},
		{"python script (Debian 12)", map[string]string{"/usr/bin/docker-compose": "#!/usr/bin/python3\n"}, ComposeTool{Name: "docker-compose"}},
		{"standalone v2 binary", map[string]string{"/usr/local/bin/docker-compose": "\x7fELF"}, ComposeTool{Name: "docker-compose", V2: true}},
		{"none", nil, ComposeTool{Name: "docker-compose"}},
	}
	for _, c := range cases {
		root := t.TempDir()
		for p, d := range c.files {
			write(root, p, d)
		}
		a := &Agent{Host: &host.Host{Root: root}}
		got := a.Compose()
		if got.Name != c.want.Name || got.V2 != c.want.V2 || len(got.Args) != len(c.want.Args) {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	name, args := ComposeTool{Name: "docker", Args: []string{"compose"}, V2: true}.Command("-p", "ecs", "up")
	if name != "docker" || len(args) != 4 || args[0] != "compose" || args[3] != "up" {
		t.Errorf("Command: %s %q", name, args)
	}
}

func TestComposeEnvV2(t *testing.T) {
	got := ComposeEnvV2([]Var{{"A", "plain"}, {"B", "it's \"q\" $HOME \\x"}, {"C", "line1\nline2"}})
	want := "A=\"plain\"\nB=\"it's \\\"q\\\" \\$HOME \\\\x\"\nC=\"line1\nline2\"\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
