//go:build ecsfront

package main

// The front program (go build -tags ecsfront): `make build` and the .deb
// install it as ecs-image and the complete program (this package without
// the tag) beside it, as git does with its libexec programs. It links only
// the commands that must start in a few milliseconds — version and cidata
// (main.go, cidata.go, input.go), not the AWS SDK, the registry client,
// QEMU drivers and PDF writers the rest needs: Go runs the init function of
// every linked package before main, whatever the command. Every other
// command, help, completion and any use of --help or --version replace this
// process with the complete program (execve: same arguments, environment,
// pid, signals and exit code), which defines the same version and cidata
// commands from the same files: a user sees one program. A plain
// `go install ./cmd/ecs-image` builds the complete program alone.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// registerCompletions: the front completes nothing (__complete goes to the
// complete program).
func registerCompletions() {}

func main() {
	// `ecs-image version` alone skips cobra's parsing and hooks (≈0.2 ms):
	// the version command's own Run, as cobra would call it.
	if len(os.Args) == 2 && os.Args[1] == "version" {
		versionCmd.Run(versionCmd, nil)
		os.Exit(exitOK)
	}
	if !runsHere(os.Args[1:]) {
		err := execComplete()
		fmt.Fprintf(os.Stderr, "ecs-image: %v\n", err)
		os.Exit(exitFailure)
	}
	os.Exit(run(os.Args[1:]))
}

// runsHere reports whether args name one of the front's own commands
// without asking for help or the version flag; anything else, unknown
// commands included, is the complete program's (its messages stay its
// own).
func runsHere(args []string) bool {
	for _, a := range args {
		switch a {
		case "-h", "--help", "--version", "help", "completion", "__complete", "__completeNoDesc":
			return false
		}
	}
	cmd, _, err := rootCmd.Find(args)
	return err == nil && cmd != rootCmd
}

// completeCandidates are where the complete program is looked for,
// relative to the directory of this executable: make build's
// bin/libexec/ecs-image, the .deb's /usr/lib/ecs-image/ecs-image, and a
// libexec tree (/usr/local/libexec/ecs-image/ecs-image).
var completeCandidates = []string{
	"libexec/ecs-image",
	"../lib/ecs-image/ecs-image",
	"../libexec/ecs-image/ecs-image",
}

// completeProgram returns the path of the complete program, never this
// executable itself (a front copied there would execute itself forever).
func completeProgram() (string, error) {
	self, err := executable()
	if err != nil {
		return "", fmt.Errorf("cannot find this executable: %w", err)
	}
	selfSt, err := os.Stat(self)
	if err != nil {
		return "", err
	}
	dir := filepath.Dir(self)
	var tried []string
	for _, c := range completeCandidates {
		p := filepath.Join(dir, c)
		tried = append(tried, p)
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 || os.SameFile(st, selfSt) {
			continue
		}
		return p, nil
	}
	return "", fmt.Errorf("the complete ecs-image program is not installed beside this front program (looked for %v); `make build` writes it to bin/libexec/ecs-image, the .deb to /usr/lib/ecs-image/ecs-image, and `go install ./cmd/ecs-image` builds it as ecs-image itself", tried)
}

// executable is the path of this program: /proc/self/exe, or where there
// is no /proc (a chroot without it) argv[0] as a path or found on $PATH.
func executable() (string, error) {
	if p, err := os.Executable(); err == nil {
		return p, nil
	}
	arg0 := os.Args[0]
	if strings.Contains(arg0, "/") {
		return filepath.EvalSymlinks(arg0)
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, arg0)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return filepath.EvalSymlinks(p)
		}
	}
	return "", fmt.Errorf("%s: not found on $PATH and no /proc/self/exe", arg0)
}

// execComplete replaces this process with the complete program, given the
// same arguments and environment. It returns only on error.
func execComplete() error {
	p, err := completeProgram()
	if err != nil {
		return err
	}
	err = syscall.Exec(p, os.Args, os.Environ())
	return errors.Join(fmt.Errorf("%s: cannot execute", p), err)
}
