package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/daemon"
)

func init() { register(newConfigCmd) }

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Check the configuration file",
	}
	var path string
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and print the effective configuration",
		Long: "check validates the configuration file (unknown keys are errors), reads the alert sinks'\n" +
			"secret and URL files, and prints the effective configuration, defaults included, as YAML\n" +
			"(inline webhook and slack URLs redacted). Exit code 2 when the configuration is invalid.",
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, notes, err := loadConfig(path, cmd.Flags().Changed("config"))
			if err != nil {
				return err
			}
			if err := daemon.CheckInterfaces(cfg.Interfaces); err != nil {
				return usageError(err)
			}
			if err := cfg.CheckSecrets(); err != nil {
				return usageError(err)
			}
			// Inline webhook and slack URLs are credentials: never print them.
			out, err := cfg.Redacted().Marshal()
			if err != nil {
				return err
			}
			for _, n := range notes {
				fmt.Fprintln(cmd.ErrOrStderr(), "note:", n)
			}
			if len(cfg.Interfaces) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "note: interfaces is empty: `synguard run` protects the interfaces of the default routes")
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# effective configuration (%s)\n%s", describePath(path, notes), out)
			fmt.Fprintln(cmd.ErrOrStderr(), "configuration OK")
			return nil
		},
	}
	check.Flags().StringVar(&path, "config", config.DefaultPath, "configuration file")
	cmd.AddCommand(check)
	return cmd
}

func describePath(path string, notes []string) string {
	if len(notes) > 0 {
		return "built-in defaults"
	}
	return path
}

// loadConfig reads the configuration file. A missing file at the default
// path means the built-in defaults (a first run before the admin wrote
// one); a missing file named explicitly is an error. Invalid
// configurations come back as exit code 2.
func loadConfig(path string, explicit bool) (*config.Config, []string, error) {
	cfg, err := config.Load(path)
	if err == nil {
		return cfg, nil, nil
	}
	if config.IsInvalid(err) {
		return nil, nil, usageError(err)
	}
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return config.Default(), []string{fmt.Sprintf("%s does not exist: using built-in defaults", path)}, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, usageError(fmt.Errorf("--config %s: no such file", path))
	}
	return nil, nil, err
}

// logLevel parses the log.level key (validated by config) into lv, so that
// a reload can change the level of the running logger.
func logLevel(lv *slog.LevelVar, level string) {
	switch strings.ToLower(level) {
	case "debug":
		lv.Set(slog.LevelDebug)
	case "warn":
		lv.Set(slog.LevelWarn)
	case "error":
		lv.Set(slog.LevelError)
	default:
		lv.Set(slog.LevelInfo)
	}
}

// newLogger builds the slog logger on w for the log.format key, at the
// level lv holds (log.level; a reload sets it with logLevel).
func newLogger(w io.Writer, lv *slog.LevelVar, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: lv}
	if os.Getenv("JOURNAL_STREAM") != "" && format != "json" {
		// journald stamps every line itself.
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
