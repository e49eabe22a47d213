package builder

import "github.com/ecs-image/ecs-image/builder/template"

// Mode is where a stage ran: the template language's stage mode
// (template.Mode), as the stage run, the stage cache entry and the build
// manifest record it. The names below are template's.
type Mode = template.Mode

// The modes (see template.Mode).
const (
	ModeAuto    = template.ModeAuto
	ModeBoot    = template.ModeBoot
	ModeChroot  = template.ModeChroot
	ModeOffline = template.ModeOffline
)

// LoadTemplate reads and validates the template at path (template.Load).
func LoadTemplate(path string) (*template.Template, error) { return template.Load(path) }
