package prepare

import "strings"

// VariantFile names the image's build variant (dev, test, prod…); the
// template's variants write it (templates/ecs-appliance.yml). An image
// without it is treated as production.
const VariantFile = "/etc/ecs-image/variant"

// DevFallbackVariants are the variants whose images fall back to the
// built-in development env (env.DevelopmentEnv) when no env.yml is found,
// as the original appliance fell back to its default-env. Production
// images — any other variant, or none — never do: they fail naming the
// sources tried.
var DevFallbackVariants = map[string]bool{"dev": true, "test": true}

// DevEnvSource is the source recorded for the built-in development env.
const DevEnvSource = "builtin:default-env.yml"

// Variant returns the image's variant from VariantFile ("" when absent).
func (a *Agent) Variant() string {
	data, err := a.Host.ReadFile(VariantFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}
