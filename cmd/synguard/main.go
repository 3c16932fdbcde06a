// Command synguard is the SYN-flood defence daemon (`synguard run`) and the
// tools sysadmins use to inspect and steer it.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// commands holds the constructors of every subcommand. Each command lives in
// its own file and adds itself with register from an init function, so that
// commands can be added without touching the root.
var commands []func() *cobra.Command

func register(newCmd func() *cobra.Command) { commands = append(commands, newCmd) }

// newRootCmd builds a fresh command tree; tests build their own.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "synguard",
		Short:         "SYN-flood defence with XDP",
		Long:          "synguard counts SYNs against completed handshakes in XDP, detects half-open floods,\nbans flooding sources in the kernel and alerts on-call.",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{code: 2, err: err} })
	for _, newCmd := range commands {
		root.AddCommand(newCmd())
	}
	return root
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		var e *exitError
		if !errors.As(err, &e) || !e.silent {
			fmt.Fprintln(os.Stderr, "synguard:", err)
		}
		os.Exit(exitCode(err))
	}
}

// exitError carries a specific exit code (2 for invalid configuration or
// usage) through cobra's error return.
type exitError struct {
	code int
	err  error
	// silent: the command already told the user (e.g. status printed
	// "daemon NOT RUNNING"), only the exit code is left to set.
	silent bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	if strings.HasPrefix(err.Error(), "unknown command") {
		return 2
	}
	return 1
}

// usageError marks err as bad input (exit code 2).
func usageError(err error) error { return &exitError{code: 2, err: err} }

// exactArgs is cobra.ExactArgs with exit code 2 and a message naming the
// command (without the root name: main prints "synguard: " before every
// error) and the expected arguments.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError(fmt.Errorf("%s: want %s, got %d argument(s)", commandName(cmd), what, len(args)))
		}
		return nil
	}
}

// commandName is the command's path below the root, e.g. "config check".
func commandName(cmd *cobra.Command) string {
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
}
