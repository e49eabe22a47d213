package provisioners

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strings"
	"sync"

	"github.com/ecs-image/ecs-image/contract"
)

// Stack declares the application stack: its compose file, baked verbatim
// as /app/docker-compose.yml, and its container images, baked as the
// containers provisioner bakes them. The agent renders only the stack's
// environment (env files, .env) and runs it; nginx proxies / to Web and
// each of Proxies to its port, stunnel hands incoming mail to SMTPD.
//
// The compose file is checked at validate time: every service names an
// image (no build:), bind mounts come from the runtime layout only
// (contract.VolumeRoots), the declared ports are published on 127.0.0.1,
// and, in a production variant, every image that is not baked is pinned
// by digest (CheckProduction). See docs/builder.md, "stack".
type Stack struct {
	// Compose is the compose file (relative to the template).
	Compose string `yaml:"compose"`
	// Project is the compose project name (default "ecs").
	Project string `yaml:"project"`
	// Web is the service nginx proxies / to and its loopback port.
	Web StackEndpoint `yaml:"web"`
	// Proxies are further nginx locations to loopback ports.
	Proxies []StackProxy `yaml:"proxies"`
	// SMTPD is the loopback port incoming mail is handed to (0: none).
	SMTPD int `yaml:"smtpd"`
	// Images are baked like the containers provisioner's images.
	Images []ContainerImage `yaml:"images"`
	// Dir is where the image tarballs go (default /app/images).
	Dir string `yaml:"dir"`

	compose *composeFile
	images  *Containers
}

// StackEndpoint is a compose service and its loopback port.
type StackEndpoint struct {
	Service string `yaml:"service"`
	Port    int    `yaml:"port"`
}

// StackProxy is an nginx location and the loopback port it proxies to.
type StackProxy struct {
	Path string `yaml:"path"`
	Port int    `yaml:"port"`
}

var locationRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^/[A-Za-z0-9._~/-]*$`) })

// Type implements Provisioner.
func (*Stack) Type() string { return "stack" }

// Check implements Provisioner.
func (s *Stack) Check(dir string) []FieldError {
	var errs []FieldError
	if s.Project == "" {
		s.Project = "ecs"
	}
	if !serviceNameRe().MatchString(s.Project) {
		errs = append(errs, fieldErr("project", "%q: want letters, digits, - and _", s.Project))
	}
	s.images = &Containers{Images: s.Images, Dir: s.Dir}
	errs = append(errs, s.images.Check(dir)...)
	s.Images, s.Dir = s.images.Images, s.images.Dir
	if s.Compose == "" {
		return append(errs, fieldErr("compose", "required: the application's compose file"))
	}
	s.Compose = absPath(dir, s.Compose)
	c, err := readCompose(s.Compose)
	if err != nil {
		return append(errs, fieldErr("compose", "%v", err))
	}
	s.compose = c
	for i, p := range c.problems {
		// One field per problem: the template reports each, at compose's line.
		errs = append(errs, fieldErr(fmt.Sprintf("compose[%d]", i), "%s", p))
	}
	checkPort := func(field string, port int) bool {
		if port < 1 || port > 65535 {
			errs = append(errs, fieldErr(field, "%d is not a port", port))
			return false
		}
		return true
	}
	if s.Web.Service == "" || s.Web.Port == 0 {
		errs = append(errs, fieldErr("web", "required: {service: NAME, port: LOOPBACK_PORT}, the service nginx proxies / to"))
	} else if c.service(s.Web.Service) == nil {
		errs = append(errs, fieldErr("web.service", "%q is not a service of %s", s.Web.Service, s.Compose))
	} else if checkPort("web.port", s.Web.Port) && !c.publishedOn(s.Web.Service, s.Web.Port) {
		errs = append(errs, fieldErr("web.port", "%s does not publish 127.0.0.1:%d on service %s", s.Compose, s.Web.Port, s.Web.Service))
	}
	seen := map[string]bool{}
	for i, p := range s.Proxies {
		f := fmt.Sprintf("proxies[%d]", i)
		switch {
		case !locationRe().MatchString(p.Path) || p.Path == "/" || strings.Contains(p.Path, ".."):
			errs = append(errs, fieldErr(f+".path", "%q: want an absolute URL path other than /", p.Path))
		case seen[p.Path]:
			errs = append(errs, fieldErr(f+".path", "%q is listed twice", p.Path))
		}
		seen[p.Path] = true
		if checkPort(f+".port", p.Port) && !c.publishedOn("", p.Port) {
			errs = append(errs, fieldErr(f+".port", "no service of %s publishes 127.0.0.1:%d", s.Compose, p.Port))
		}
	}
	if s.SMTPD != 0 && checkPort("smtpd", s.SMTPD) && !c.publishedOn("", s.SMTPD) {
		errs = append(errs, fieldErr("smtpd", "no service of %s publishes 127.0.0.1:%d", s.Compose, s.SMTPD))
	}
	return errs
}

var serviceNameRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`) })

func (s *Stack) bakedTags() map[string]bool {
	baked := map[string]bool{}
	for _, im := range s.Images {
		for _, t := range im.Tags {
			baked[normRef(t)] = true
		}
	}
	return baked
}

// CheckProduction implements Provisioner: it refuses what a production
// image must not have, a registry image without a digest, among the
// stack's images or named by the compose file without being baked.
func (s *Stack) CheckProduction() []FieldError {
	var errs []FieldError
	for i, im := range s.Images {
		if im.Ref != "" && !hasDigest(im.Ref) {
			errs = append(errs, fieldErr(fmt.Sprintf("images[%d].ref", i), "%q has no digest: a production variant pins registry images (NAME@sha256:…)", im.Ref))
		}
	}
	if s.compose == nil {
		return errs
	}
	baked := s.bakedTags()
	for _, svc := range s.compose.services {
		if svc.image == "" || baked[normRef(svc.image)] || hasDigest(svc.image) {
			continue
		}
		n := svc.imageNode
		errs = append(errs, fieldErr("compose.services."+svc.name+".image", "%s:%d:%d: services.%s.image: %q is not baked and has no digest: a production variant pins it (NAME@sha256:…) or bakes it (images:)",
			s.compose.file, n.Line, n.Column, svc.name, svc.image))
	}
	return errs
}

// Requires implements Provisioner: it only places files.
func (*Stack) Requires() Requirement { return Requirement{Need: NeedFiles} }

// Inputs implements Provisioner.
func (s *Stack) Inputs() []string {
	in := []string{s.Compose}
	if s.images != nil {
		in = append(in, s.images.Inputs()...)
	}
	return in
}

// Contract returns the stack description the agent reads (contract.StackFile).
func (s *Stack) Contract() contract.Stack {
	st := contract.Stack{Project: s.Project, Web: contract.Endpoint{Service: s.Web.Service, Port: s.Web.Port}, SMTPD: s.SMTPD}
	for _, p := range s.Proxies {
		st.Proxies = append(st.Proxies, contract.Proxy{Path: p.Path, Port: p.Port})
	}
	if s.compose != nil {
		for _, svc := range s.compose.services {
			st.Services = append(st.Services, svc.name)
			st.Volumes = append(st.Volumes, svc.volumes...)
		}
	}
	return st
}

// Place implements Placer: the images (as the containers provisioner), the
// compose file and the stack description.
func (s *Stack) Place(ctx context.Context, a *Archive) error {
	if s.images == nil || s.compose == nil {
		return fmt.Errorf("stack: not checked")
	}
	if len(s.images.Images) > 0 {
		if err := s.images.Place(ctx, a); err != nil {
			return err
		}
	}
	root := Owner{"root", "root"}
	if err := a.Parents(contract.ComposeFile, root); err != nil {
		return err
	}
	if err := a.Bytes(contract.ComposeFile, s.compose.data, 0o644, root); err != nil {
		return err
	}
	data, err := json.MarshalIndent(s.Contract(), "", "  ")
	if err != nil {
		return err
	}
	return a.Bytes(path.Clean(contract.StackFile), append(data, '\n'), 0o644, root)
}
