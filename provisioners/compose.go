package provisioners

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"go.yaml.in/yaml/v3"

	"github.com/ecs-image/ecs-image/contract"
)

// composeFile is what the stack provisioner reads from a compose file.
type composeFile struct {
	file     string
	data     []byte
	services []composeService
	problems []string // "file:line:col: path: message"
}

type composeService struct {
	name      string
	image     string
	imageNode *yaml.Node
	ports     []composePort
	volumes   []contract.Volume
}

// composePort is a published port "[IP:]HOST:CONTAINER[/proto]".
type composePort struct {
	ip        string
	host      int
	container string
}

func (c *composeFile) problem(n *yaml.Node, where, format string, args ...any) {
	pos := c.file
	if n != nil {
		pos = fmt.Sprintf("%s:%d:%d", c.file, n.Line, n.Column)
	}
	c.problems = append(c.problems, fmt.Sprintf("%s: %s: %s", pos, where, fmt.Sprintf(format, args...)))
}

func mapGet(n *yaml.Node, key string) (*yaml.Node, *yaml.Node) {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i], n.Content[i+1]
		}
	}
	return nil, nil
}

// readCompose parses file and checks what the appliance needs of it:
// services with images (no build:), bind mounts only, and only from the
// runtime layout (contract.VolumeRoots).
func readCompose(file string) (*composeFile, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, cleanErr(err)
	}
	c := &composeFile{file: file, data: data}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: not a compose file (want a mapping with services:)", file)
	}
	root := doc.Content[0]
	if k, v := mapGet(root, "volumes"); k != nil && v.Kind == yaml.MappingNode && len(v.Content) > 0 {
		c.problem(v.Content[0], "volumes."+v.Content[0].Value, "named volumes live in docker's data-root, outside the runtime layout: bind-mount a directory under %s", strings.Join(contract.VolumeRoots, ", "))
	}
	k, svcs := mapGet(root, "services")
	if k == nil || svcs.Kind != yaml.MappingNode || len(svcs.Content) == 0 {
		return nil, fmt.Errorf("%s: no services", file)
	}
	for i := 0; i+1 < len(svcs.Content); i += 2 {
		s := composeService{name: svcs.Content[i].Value}
		body := svcs.Content[i+1]
		where := "services." + s.name
		if body.Kind != yaml.MappingNode {
			c.problem(body, where, "want a mapping")
			continue
		}
		if bk, _ := mapGet(body, "build"); bk != nil {
			c.problem(bk, where+".build", "the appliance builds no images: list the image in the stack's images")
		}
		if _, img := mapGet(body, "image"); img == nil || img.Kind != yaml.ScalarNode || img.Value == "" {
			c.problem(body, where+".image", "required")
		} else {
			s.image, s.imageNode = img.Value, img
			if strings.Contains(img.Value, "$") {
				c.problem(img, where+".image", "%q: no variables in image names (the builder must know what is baked)", img.Value)
			} else if _, err := name.ParseReference(img.Value); err != nil {
				c.problem(img, where+".image", "%v", err)
			}
		}
		if _, vf := mapGet(body, "volumes_from"); vf != nil {
			c.problem(vf, where+".volumes_from", "not supported: declare the bind mounts")
		}
		if _, vols := mapGet(body, "volumes"); vols != nil {
			if vols.Kind != yaml.SequenceNode {
				c.problem(vols, where+".volumes", "want a list")
			} else {
				for j, v := range vols.Content {
					vol, ok := c.volume(v, fmt.Sprintf("%s.volumes[%d]", where, j))
					if ok {
						vol.Service = s.name
						s.volumes = append(s.volumes, vol)
					}
				}
			}
		}
		if _, ports := mapGet(body, "ports"); ports != nil && ports.Kind == yaml.SequenceNode {
			for _, p := range ports.Content {
				if p.Kind == yaml.ScalarNode {
					s.ports = append(s.ports, parsePort(p.Value))
				}
			}
		}
		c.services = append(c.services, s)
	}
	return c, nil
}

// volume checks one entry of a service's volumes (short "SRC:DST[:MODE]"
// or long {type: bind, source, target, read_only}).
func (c *composeFile) volume(n *yaml.Node, where string) (contract.Volume, bool) {
	var v contract.Volume
	switch n.Kind {
	case yaml.ScalarNode:
		parts := strings.Split(n.Value, ":")
		if len(parts) < 2 || len(parts) > 3 {
			c.problem(n, where, "%q: want HOST_PATH:CONTAINER_PATH[:ro] (anonymous volumes live in docker's data-root)", n.Value)
			return v, false
		}
		v.Source, v.Target = parts[0], parts[1]
		if len(parts) == 3 {
			for _, o := range strings.Split(parts[2], ",") {
				if o == "ro" {
					v.ReadOnly = true
				}
			}
		}
	case yaml.MappingNode:
		if _, t := mapGet(n, "type"); t != nil && t.Value != "bind" {
			c.problem(t, where+".type", "%q: only bind mounts keep data in the runtime layout", t.Value)
			return v, false
		}
		_, src := mapGet(n, "source")
		_, dst := mapGet(n, "target")
		if src == nil || dst == nil {
			c.problem(n, where, "want source and target")
			return v, false
		}
		v.Source, v.Target = src.Value, dst.Value
		if _, ro := mapGet(n, "read_only"); ro != nil && ro.Value == "true" {
			v.ReadOnly = true
		}
	default:
		c.problem(n, where, "want a string or a mapping")
		return v, false
	}
	if strings.Contains(v.Source, "$") {
		c.problem(n, where, "%q: no variables in host paths (they are checked against the runtime layout at build time)", v.Source)
		return v, false
	}
	if m := contract.CheckVolumeSource(v.Source); m != "" {
		c.problem(n, where, "%s: %s", v.Source, m)
		return v, false
	}
	if !strings.HasPrefix(v.Target, "/") {
		c.problem(n, where, "%q: the container path must be absolute", v.Target)
		return v, false
	}
	return v, true
}

func parsePort(s string) composePort {
	var p composePort
	s, _, _ = strings.Cut(s, "/")
	parts := strings.Split(s, ":")
	switch len(parts) {
	case 3:
		p.ip = parts[0]
		p.host, _ = strconv.Atoi(parts[1])
		p.container = parts[2]
	case 2:
		p.host, _ = strconv.Atoi(parts[0])
		p.container = parts[1]
	default:
		p.container = parts[0]
	}
	return p
}

func (c *composeFile) service(name string) *composeService {
	for i := range c.services {
		if c.services[i].name == name {
			return &c.services[i]
		}
	}
	return nil
}

// publishedOn reports whether a service publishes host port on 127.0.0.1
// (any service when name is "").
func (c *composeFile) publishedOn(name string, port int) bool {
	for _, s := range c.services {
		if name != "" && s.name != name {
			continue
		}
		for _, p := range s.ports {
			if p.host == port && p.ip == "127.0.0.1" {
				return true
			}
		}
	}
	return false
}

// normRef normalises an image reference ("ecs/ecs" → "index.docker.io/ecs/ecs:latest").
func normRef(s string) string {
	r, err := name.ParseReference(s)
	if err != nil {
		return s
	}
	return r.Name()
}

// hasDigest reports whether ref names its image by digest.
func hasDigest(ref string) bool {
	r, err := name.ParseReference(ref)
	if err != nil {
		return false
	}
	_, ok := r.(name.Digest)
	return ok
}
