// Package envgen creates a new env.yml for an ECS appliance: the manual's
// template with fresh secrets (Django secrets, a DKIM key, three OpenPGP
// keys), the DNS records to publish, and optional overrides from an extra
// YAML file.
package envgen

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"sync"
	"text/template"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/env"
)

//go:embed env.yml.tmpl
var templateText string

var tmpl = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("env.yml").Funcs(template.FuncMap{
		"indent": indentLines,
		// Replaced per execution by the overrides' methods.
		"has":   func(string) bool { return false },
		"entry": func(string, int) (string, error) { return "", nil },
		"items": func(string, int) (string, error) { return "", nil },
	}).Parse(templateText))
})

// Options configure Generate.
type Options struct {
	// Domain is the appliance's DNS name (appliance.domain).
	Domain string
	// Extra is an optional YAML document of overrides (see docs/env.md),
	// ExtraFile its name for messages.
	Extra     []byte
	ExtraFile string
	// Progress, if set, is called with short status messages (never secrets).
	Progress func(msg string)

	// pgpBits and dkimBits override the key sizes (tests only).
	pgpBits, dkimBits int
}

// ErrExists is returned by WriteFile when the target exists and force is off.
var ErrExists = errors.New("file exists (use --force to overwrite)")

// DomainError reports an unusable domain name.
type DomainError struct{ Domain, Msg string }

func (e *DomainError) Error() string { return fmt.Sprintf("domain %q: %s", e.Domain, e.Msg) }

var labelRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`) })

// CheckDomain reports whether d is usable as appliance.domain: a lower-case
// DNS name of letters, digits, hyphens and dots.
func CheckDomain(d string) error {
	if d == "" {
		return &DomainError{d, "empty"}
	}
	if len(d) > 253 {
		return &DomainError{d, "longer than 253 characters"}
	}
	for _, l := range strings.Split(d, ".") {
		if !labelRe().MatchString(l) {
			return &DomainError{d, "not a DNS name (lower-case letters, digits, '-' and '.'; no trailing dot)"}
		}
	}
	// The rule env validate applies to appliance.domain, checked here so
	// that no key is generated for a domain the env.yml would refuse.
	if !env.ValidHostname(d) {
		return &DomainError{d, "not a DNS name: its last label is all digits (an IP address is no domain; e.g. ecs.example.org)"}
	}
	return nil
}

type data struct {
	Domain                                             string
	ExtraHosts                                         []string
	SentryDSN                                          string
	DKIMKey                                            string
	DKIMTXT                                            []string
	BackupKey, VaultEncryptKey, VaultSignKey           string
	SecretKey, RegistrationSecret, PasswordResetSecret string
}

// Generate returns a new env.yml for opts.Domain. The result is validated
// with env.Parse. A bad domain yields a *DomainError, a bad extra file an
// *env.Error naming the extra file.
func Generate(ctx context.Context, opts Options) ([]byte, error) {
	if err := CheckDomain(opts.Domain); err != nil {
		return nil, err
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string) {}
	}
	ov, err := parseExtra(opts.ExtraFile, opts.Extra)
	if err != nil {
		return nil, err
	}
	d := data{Domain: opts.Domain}
	if n, ok := ov.values["appliance.allowed_hosts"]; ok {
		for _, h := range strings.Fields(n.Value) {
			if h != opts.Domain {
				d.ExtraHosts = append(d.ExtraHosts, h)
			}
		}
	}
	if n, ok := ov.values["appliance.sentry.dsn"]; ok {
		d.SentryDSN = n.Value
	}
	for _, s := range []*string{&d.SecretKey, &d.RegistrationSecret, &d.PasswordResetSecret} {
		if *s, err = newSecret(SecretBytes); err != nil {
			return nil, err
		}
	}

	pgpBits, dkimBits := PGPBits, DKIMBits
	if opts.pgpBits != 0 {
		pgpBits = opts.pgpBits
	}
	if opts.dkimBits != 0 {
		dkimBits = opts.dkimBits
	}
	progress(fmt.Sprintf("generating keys: DKIM RSA-%d, OpenPGP RSA-%d ecs_backup, ecs_mediaserver, ecs_authority", dkimBits, pgpBits))
	if err := generateKeys(ctx, &d, pgpBits, dkimBits); err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	t, err := tmpl().Clone()
	if err != nil {
		return nil, err
	}
	t.Funcs(template.FuncMap{"has": ov.has, "entry": ov.entry, "items": ov.items})
	if err := t.Execute(&buf, d); err != nil {
		return nil, fmt.Errorf("render env.yml: %w", err)
	}
	if u := ov.unused(); len(u) > 0 {
		return nil, fmt.Errorf("internal error: extra keys not rendered by the template: %s", strings.Join(u, ", "))
	}
	out := buf.Bytes()
	if _, err := env.Parse("generated env.yml", out); err != nil {
		var ee *env.Error
		if errors.As(err, &ee) {
			if probs, ok := ov.blame(ee.Problems); ok {
				return nil, &env.Error{Problems: probs}
			}
		}
		return nil, fmt.Errorf("internal error: the generated env.yml does not validate: %v", err) // not %w: not bad input
	}
	return out, nil
}

// generateKeys makes the DKIM key and the three OpenPGP keys concurrently
// (RSA key generation takes seconds each).
func generateKeys(ctx context.Context, d *data, pgpBits, dkimBits int) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	run := func(what string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", what, err))
				mu.Unlock()
			}
		}()
	}
	run("DKIM key", func() error {
		key, txt, err := newDKIM(dkimBits)
		d.DKIMKey, d.DKIMTXT = key, SplitTXT(txt)
		return err
	})
	for _, k := range []struct {
		uid string
		dst *string
	}{{"ecs_backup", &d.BackupKey}, {"ecs_mediaserver", &d.VaultEncryptKey}, {"ecs_authority", &d.VaultSignKey}} {
		run("OpenPGP key "+k.uid, func() error {
			var err error
			*k.dst, err = newPGPKey(k.uid, pgpBits)
			return err
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-done:
	}
	return errors.Join(errs...)
}

// WriteFile writes data to path with mode 0600 through a temporary file in
// the same directory, renamed into place. Without force an existing path is
// left alone and ErrExists returned. Missing parent directories are created
// with mode 0700.
func WriteFile(path string, data []byte, force bool) error {
	opts := []atomicfile.Option{atomicfile.MkdirAll(0o700)}
	if !force {
		opts = append(opts, atomicfile.NoClobber())
	}
	err := atomicfile.Write(path, data, 0o600, opts...)
	if !force && errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", path, ErrExists)
	}
	return err
}
