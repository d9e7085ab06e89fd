//go:build !linux

package e2e

import "os/exec"

// dieWithTest has no portable equivalent of Linux's parent-death signal
// elsewhere; the tests' cleanups reap their processes.
func dieWithTest(cmd *exec.Cmd) {}
