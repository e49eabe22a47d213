package env

import (
	"fmt"
	"sync/atomic"
	"testing"

	"go.yaml.in/yaml/v3"
)

// runSlow runs every slow check once, one after the other or in parallel,
// and records their problems in the checks' order either way.
func TestRunSlow(t *testing.T) {
	for _, n := range []int{0, 1, parallelSlowChecks - 1, parallelSlowChecks, 3 * parallelSlowChecks} {
		c := &checker{file: "env.yml"}
		var ran atomic.Int32
		for i := range n {
			c.slow = append(c.slow, slowCheck{&yaml.Node{Line: i + 1, Column: 1}, fmt.Sprintf("k%d", i), func() string {
				ran.Add(1)
				if i%2 == 1 {
					return fmt.Sprintf("bad %d", i)
				}
				return ""
			}})
		}
		c.runSlow()
		if int(ran.Load()) != n {
			t.Errorf("%d checks: %d ran", n, ran.Load())
		}
		if len(c.probs) != n/2 {
			t.Fatalf("%d checks: %d problems, want %d", n, len(c.probs), n/2)
		}
		for j, p := range c.probs {
			if i := 2*j + 1; p.Msg != fmt.Sprintf("bad %d", i) || p.Line != i+1 || p.Path != fmt.Sprintf("k%d", i) {
				t.Errorf("%d checks: problem %d is %+v", n, j, p)
			}
		}
	}
}
