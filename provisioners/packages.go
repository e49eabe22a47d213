package provisioners

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// Packages installs Debian packages with apt-get: non-interactive, with
// retries, optionally without recommends and without documentation.
type Packages struct {
	// Packages to install (names, optionally name=version).
	Packages []string `yaml:"packages"`
	// Update runs apt-get update first (default true).
	Update *bool `yaml:"update"`
	// Upgrade runs apt-get dist-upgrade before installing (default false).
	Upgrade bool `yaml:"upgrade"`
	// InstallRecommends installs recommended packages (default false:
	// --no-install-recommends).
	InstallRecommends bool `yaml:"install_recommends"`
	// ExcludeDocs keeps /usr/share/{doc,man,info} out of the image, except
	// copyright files (dpkg path-exclude; default false).
	ExcludeDocs bool `yaml:"exclude_docs"`
	// Retries is how often a failed apt-get run is retried (default 3).
	Retries *int `yaml:"retries"`
}

var debName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$`) })

// Type implements Provisioner.
func (*Packages) Type() string { return "packages" }

// Check implements Provisioner.
func (p *Packages) Check(string) []FieldError {
	var errs []FieldError
	if len(p.Packages) == 0 && !p.Upgrade {
		errs = append(errs, fieldErr("packages", "required (a list of package names)"))
	}
	for i, n := range p.Packages {
		if !debName().MatchString(n) {
			errs = append(errs, fieldErr(fmt.Sprintf("packages[%d]", i), "%q is not a Debian package name", n))
		}
	}
	if p.Retries != nil && (*p.Retries < 0 || *p.Retries > 20) {
		errs = append(errs, fieldErr("retries", "want 0..20, got %d", *p.Retries))
	}
	return errs
}

// Inputs implements Provisioner.
func (*Packages) Inputs() []string { return nil }

func (p *Packages) retries() int {
	if p.Retries == nil {
		return 3
	}
	return *p.Retries
}

// Script is the shell script that installs the packages (run as root).
func (p *Packages) Script() string {
	var b strings.Builder
	b.WriteString("set -e\nexport DEBIAN_FRONTEND=noninteractive\n")
	// Package indices as gzip rather than xz: under emulation xz costs
	// seconds more to decompress than the larger download takes.
	b.WriteString("apt_opts='-y -q -o Acquire::Languages=none -o Acquire::CompressionTypes::Order::=gz -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-unsafe-io'\n")
	if !p.InstallRecommends {
		b.WriteString("apt_opts=\"$apt_opts --no-install-recommends\"\n")
	}
	if p.ExcludeDocs {
		b.WriteString(`cat >/etc/dpkg/dpkg.cfg.d/ecs-image-nodoc <<'EOT'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
EOT
`)
	}
	// man-db's index rebuild is the slowest trigger under emulation and
	// useless in an appliance.
	b.WriteString("echo 'man-db man-db/auto-update boolean false' | debconf-set-selections 2>/dev/null || true\nrm -f /var/lib/man-db/auto-update\n")
	fmt.Fprintf(&b, "retry() { n=0; until \"$@\"; do n=$((n+1)); if [ $n -gt %d ]; then return 1; fi; echo \"ecs-image: retrying ($n/%d): $*\"; sleep $((n*5)); done; }\n", p.retries(), p.retries())
	if p.Update == nil || *p.Update {
		b.WriteString("retry apt-get $apt_opts update\n")
	}
	if p.Upgrade {
		b.WriteString("retry apt-get $apt_opts dist-upgrade\n")
	}
	if len(p.Packages) > 0 {
		fmt.Fprintf(&b, "retry apt-get $apt_opts install %s\n", strings.Join(p.Packages, " "))
	}
	return b.String()
}

// CheckProduction implements Provisioner: nothing a production variant refuses.
func (*Packages) CheckProduction() []FieldError { return nil }

// Requires implements Provisioner: apt installs the same in a chroot
// (services are enabled, not started).
func (*Packages) Requires() Requirement { return Requirement{Need: NeedChroot} }

// Run implements Runner.
func (p *Packages) Run(ctx context.Context, e *Env) error {
	sh := &Shell{Inline: []string{p.Script()}}
	if err := sh.Run(ctx, e); err != nil {
		return fmt.Errorf("packages %s: %w", strings.Join(p.Packages, " "), err)
	}
	return nil
}
