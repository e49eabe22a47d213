package status

import (
	"strings"
	"sync"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
)

func TestWarnSetsAndClearsWithoutTouchingState(t *testing.T) {
	h := host.New(t.TempDir(), &host.Recorder{})
	if err := Update(h, State{State: Preparing, Step: "prepare-appliance/tls", Domain: "ecs.example.org"}); err != nil {
		t.Fatal(err)
	}
	if err := Warn(h, "tls", "certificate not issued:\nsecond line"); err != nil {
		t.Fatal(err)
	}
	st, err := Read(h)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != Preparing || st.Step != "prepare-appliance/tls" || st.Warnings["tls"] != "certificate not issued:; second line" {
		t.Fatalf("state %+v", st)
	}
	// Later updates keep the warning; the page shows it.
	if err := Update(h, State{State: Starting}); err != nil {
		t.Fatal(err)
	}
	page, _ := h.ReadFile(StatusPage)
	if !strings.Contains(string(page), "Warning (tls): certificate not issued:; second line") {
		t.Errorf("page:\n%s", page)
	}
	if err := Warn(h, "tls", ""); err != nil {
		t.Fatal(err)
	}
	if st, _ := Read(h); len(st.Warnings) != 0 || st.State != Starting {
		t.Errorf("after clearing: %+v", st)
	}
}

// Concurrent writers (the chain and `ecs-agent acme`) lose no update.
func TestUpdatesAreSerialised(t *testing.T) {
	h := host.New(t.TempDir(), &host.Recorder{})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = Warn(h, string(rune('a'+i)), "w")
		}()
	}
	wg.Wait()
	if st, _ := Read(h); len(st.Warnings) != 20 {
		t.Errorf("%d of 20 warnings recorded: %v", len(st.Warnings), st.Warnings)
	}
}
