package main

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/synguard/synguard/alert"
	"github.com/synguard/synguard/internal/config"
)

func init() { register(newAlertCmd) }

// newAlertCmd is `synguard alert test NAME`: it proves a sink works (URL,
// credentials, network path) before an incident has to.
func newAlertCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alert",
		Short: "Work with the alert sinks of the configuration",
	}
	var path string
	test := &cobra.Command{
		Use:   "test NAME",
		Short: "Send a test message through the alert sink NAME and report the outcome",
		Long: "test sends a clearly marked test message through the sink called NAME in the configuration's\n" +
			"alerts list, with the same retries as the daemon (backoff with jitter on network errors,\n" +
			"timeouts, 5xx and 429), and reports the outcome. A pagerduty test triggers and at once\n" +
			"resolves an info-severity event. Exit code 1 when the message could not be delivered,\n" +
			"2 when NAME or the sink's configuration (secret files included) is invalid.",
		Args: exactArgs(1, "the name of one sink under alerts:"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, _, err := loadConfig(path, cmd.Flags().Changed("config"))
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			res, err := alert.SendTest(ctxOf(cmd), cfg.Alerts, args[0], alert.Options{Logger: log})
			var ce *alert.ConfigError
			switch {
			case errors.Is(err, alert.ErrNoSuchSink), errors.As(err, &ce):
				return usageError(err)
			case err != nil:
				return fmt.Errorf("alert test: not delivered after %d attempt(s) in %s: %w", res.Attempts, res.Elapsed.Round(time.Millisecond), err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "alert test: %s sink %q delivered (HTTP %d, %d request(s), %d attempt(s), %s)\n",
				res.Type, res.Sink, res.Status, res.Requests, res.Attempts, res.Elapsed.Round(time.Millisecond))
			return nil
		},
	}
	test.Flags().StringVar(&path, "config", config.DefaultPath, "configuration file")
	cmd.AddCommand(test)
	return cmd
}
