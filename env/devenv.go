package env

import _ "embed"

// developmentEnv is the original appliance's default-env.yml (its
// pillar/default-env.sls, as shared/compat/default-env.yml): domain
// localhost, snakeoil TLS, no storage volumes, and secrets and keys that
// are public. testdata/default-env.yml is the same file, byte for byte.
//
//go:embed testdata/default-env.yml
var developmentEnv []byte

// DevelopmentEnv returns the built-in development env.yml: what the
// original appliance fell back to without an env.yml. Its secrets are
// published: only development and test appliances may use it.
func DevelopmentEnv() []byte { return append([]byte(nil), developmentEnv...) }
