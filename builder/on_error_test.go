package builder

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// fakeStep fails its first fails runs; it records runs and clean-ups.
type fakeStep struct {
	fails, runs, cleanups int
}

func (f *fakeStep) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	f.runs++
	if f.runs <= f.fails {
		return halt(state, errors.New("boom"))
	}
	return multistep.ActionContinue
}

func (f *fakeStep) Cleanup(multistep.StateBag) { f.cleanups++ }

// runOnError runs a stage of two steps, the second failing once, under
// mode with the answers given to Ask.
func runOnError(t *testing.T, ctx context.Context, mode string, answers ...string) (first, second *fakeStep, state *multistep.BasicStateBag, asked int) {
	t.Helper()
	first, second = &fakeStep{}, &fakeStep{fails: 1}
	b := &buildState{opts: Options{OnError: mode}, log: quietLog()}
	b.opts.Ask = func(q string) (string, error) {
		asked++
		if !strings.Contains(q, " of stage s failed: boom") {
			t.Errorf("question %q does not name the stage", q)
		}
		if len(answers) == 0 {
			return AskCleanup, errors.New("no more answers")
		}
		a := answers[0]
		answers = answers[1:]
		return a, nil
	}
	state = new(multistep.BasicStateBag)
	state.Put("build", b)
	(&multistep.BasicRunner{Steps: onErrorSteps([]multistep.Step{first, second}, "s")}).Run(ctx, state)
	return first, second, state, asked
}

func TestOnError(t *testing.T) {
	ctx := context.Background()
	// cleanup: the failure cleans up every step that ran.
	f, s, st, asked := runOnError(t, ctx, OnErrorCleanup)
	if _, failed := st.GetOk("error"); !failed || aborted(st) || f.cleanups != 1 || s.cleanups != 1 || asked != 0 {
		t.Errorf("cleanup: failed %v aborted %v cleanups %d/%d asked %d", failed, aborted(st), f.cleanups, s.cleanups, asked)
	}
	// abort: nothing is cleaned up, the state says so.
	f, s, st, _ = runOnError(t, ctx, OnErrorAbort)
	if _, failed := st.GetOk("error"); !failed || !aborted(st) || f.cleanups != 0 || s.cleanups != 0 {
		t.Errorf("abort: failed %v aborted %v cleanups %d/%d", failed, aborted(st), f.cleanups, s.cleanups)
	}
	// ask, retry: the failed step runs again and the stage goes on.
	f, s, st, asked = runOnError(t, ctx, OnErrorAsk, AskRetry)
	if _, failed := st.GetOk("error"); failed || s.runs != 2 || asked != 1 || f.cleanups != 1 {
		t.Errorf("ask retry: failed %v runs %d asked %d", failed, s.runs, asked)
	}
	// ask, abort and ask, cleanup.
	f, _, st, _ = runOnError(t, ctx, OnErrorAsk, AskAbort)
	if !aborted(st) || f.cleanups != 0 {
		t.Errorf("ask abort: aborted %v cleanups %d", aborted(st), f.cleanups)
	}
	f, _, st, _ = runOnError(t, ctx, OnErrorAsk, AskCleanup)
	if aborted(st) || f.cleanups != 1 {
		t.Errorf("ask cleanup: aborted %v cleanups %d", aborted(st), f.cleanups)
	}
	// ask without an answer (end of input): clean up.
	f, _, st, _ = runOnError(t, ctx, OnErrorAsk)
	if aborted(st) || f.cleanups != 1 {
		t.Errorf("ask, no answer: aborted %v cleanups %d", aborted(st), f.cleanups)
	}
	// Ctrl-C (a cancelled context) always cleans up, without asking.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	first := &fakeStep{fails: 1}
	b := &buildState{opts: Options{OnError: OnErrorAbort}, log: quietLog()}
	st = new(multistep.BasicStateBag)
	st.Put("build", b)
	(&onErrorStep{step: first, name: "first", stage: "s"}).Run(cctx, st)
	if aborted(st) {
		t.Error("a cancelled build was kept")
	}

	if _, err := Build(ctx, Options{Template: "x.yml", OnError: "keep"}); err == nil {
		t.Error("Build accepted on-error keep")
	}
}
