package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/replay"
)

func init() { register(newReplayCmd) }

// newReplayCmd is `synguard replay FILE`: the detector run over a capture
// in capture time, so thresholds can be tried on past incidents.
func newReplayCmd() *cobra.Command {
	var (
		cfgPath string
		asJSON  bool
		observe bool
	)
	cmd := &cobra.Command{
		Use:   "replay FILE",
		Short: "Run the detector over a pcap/pcapng capture and print what it would have decided",
		Long: `replay reads a pcap or pcapng capture (Ethernet), classifies every frame exactly
like the XDP program, emulates its counters, blocklist and early-warning events,
and runs the detector every poll interval in capture time. It prints the
incidents and the bans enforce mode would have made (--observe: none).

--config applies the daemon's configuration file: the detector section, the
poll interval, the early-warning interval and the protected and allowlisted
prefixes. Without it the built-in defaults apply.

A truncated or malformed capture prints the report of what could be read, then
an error naming the file and the position, and exits 1.`,
		Example: `  synguard replay flood.pcap
  synguard replay --config /etc/synguard/synguard.yaml --json flood.pcapng`,
		Args: exactArgs(1, "FILE (a pcap or pcapng capture)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := config.Default()
			if cmd.Flags().Changed("config") {
				c, _, err := loadConfig(cfgPath, true)
				if err != nil {
					return err
				}
				cfg = c
			}
			opt, err := replayOptions(cfg)
			if err != nil {
				return usageError(err)
			}
			opt.Observe = observe
			rep, rerr := replay.File(args[0], opt)
			if rep != nil {
				out := cmd.OutOrStdout()
				var err error
				if asJSON {
					err = rep.WriteJSON(out)
				} else {
					err = rep.WriteText(out)
				}
				if err != nil {
					return err
				}
			}
			return rerr
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", config.DefaultPath, "the daemon's configuration file whose thresholds apply")
	cmd.Flags().BoolVar(&asJSON, "json", false, `print one JSON object: {"packets": N, "incidents": [...], "bans": [...]}`)
	cmd.Flags().BoolVar(&observe, "observe", false, "observe mode: incidents only, no bans")
	return cmd
}

// replayOptions takes what the daemon would use from its configuration.
func replayOptions(cfg *config.Config) (replay.Options, error) {
	opt := replay.Options{
		Detector:        cfg.Detector,
		Poll:            cfg.PollInterval,
		SuspectInterval: cfg.Datapath.SuspectInterval,
	}
	for i, s := range cfg.Protect.Prefixes {
		p, err := config.ParsePrefix(s)
		if err != nil {
			return opt, fmt.Errorf("config key protect.prefixes[%d]: %w", i, err)
		}
		opt.Protected = append(opt.Protected, p)
	}
	for i, s := range cfg.Allow {
		p, err := config.ParseAllowPrefix(s)
		if err != nil {
			return opt, fmt.Errorf("config key allow[%d]: %w", i, err)
		}
		opt.Protected = append(opt.Protected, p)
	}
	return opt, nil
}
