//go:build integration

package integration

import (
	"testing"
	"time"
)

// Temporary (not committed): builds appliance v2 once, to check the build and warm the stage cache.
func TestP16PrebuildV2(t *testing.T) {
	var d time.Duration
	a := buildUpgrade(t, t.TempDir(), &d)
	t.Logf("appliance v2: %s in %s", a, d)
}
