package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/daemon"
)

func init() { register(newIncidentsCmd) }

// newIncidentsCmd is `synguard incidents show ID`, the command alert
// messages tell on-call to run (alert.DefaultCommand).
func newIncidentsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "incidents", Short: "Show one incident in full (alerts link here)"}
	var f clientFlags
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show an incident: figures, kernel impact, top sources and bans",
		Args:  exactArgs(1, "one incident ID (from an alert or `synguard list incidents`)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ins, err := f.client().Incidents(ctxOf(cmd))
			if errors.Is(err, api.ErrUnreachable) {
				cfg, _, cerr := loadConfig(f.config, cmd.Flags().Changed("config"))
				if cerr != nil {
					return fmt.Errorf("%w; and %v", err, cerr)
				}
				store := &daemon.Store{Dir: cfg.StateDir}
				st, serr := store.Load()
				if serr != nil {
					return fmt.Errorf("%w; and %v", err, serr)
				}
				v := pinnedView{cfg: cfg, hung: store.Locked()}
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s: read from the state dir\n", v.downNote(&f, err))
				ins, err = st.Incidents, nil
			}
			if err != nil {
				return apiError(err)
			}
			for _, in := range ins {
				if in.ID == args[0] {
					if f.json {
						return printJSON(cmd.OutOrStdout(), in)
					}
					printIncident(cmd.OutOrStdout(), in)
					return nil
				}
			}
			return usageError(fmt.Errorf("incident %s: not open and not among the recently resolved (see `synguard list incidents`)", args[0]))
		},
	}
	f.add(show, true)
	cmd.AddCommand(show)
	return cmd
}

func printIncident(w io.Writer, in detector.Incident) {
	fmt.Fprintf(w, "incident %s: %s %s flood on %s, %s\n", in.ID, strings.ToUpper(string(in.Severity)), in.Kind, in.Addr, in.Stage)
	fmt.Fprintf(w, "  opened %s, updated %s", in.OpenedAt.Local().Format(time.RFC3339), in.UpdatedAt.Local().Format(time.RFC3339))
	if in.ResolvedAt != nil {
		fmt.Fprintf(w, ", resolved %s", in.ResolvedAt.Local().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "\n  %d SYN, %d ACK; %.0f SYN/s (peak %.0f), %.0f%% half-open\n", in.SYN, in.ACK, in.SYNPerSecond, in.PeakSYNPerSecond, 100*in.HalfOpenShare)
	if in.Dropped > 0 {
		fmt.Fprintf(w, "  %d dropped under its bans, %.0f/s now\n", in.Dropped, in.DroppedPerSecond)
	}
	fmt.Fprintf(w, "  why: %s\n", in.Reason)
	if in.Kernel.Summary != "" {
		fmt.Fprintf(w, "  kernel: %s\n", in.Kernel.Summary)
	}
	if in.DistinctSources > 0 {
		fmt.Fprintf(w, "  %d distinct sources; top:\n", in.DistinctSources)
		for _, s := range in.TopSources {
			fmt.Fprintf(w, "    %-40s %8.0f SYN/s %10d SYN %10d ACK\n", s.Addr, s.SYNPPS, s.SYN, s.ACK)
		}
	}
	for _, b := range in.Bans {
		fmt.Fprintf(w, "  ban %s until %s (offence %d): %s\n", b.Prefix, b.Until.Local().Format(time.RFC3339), b.Offence, b.Reason)
	}
	if in.Source.IsValid() || in.Kind == detector.KindSource {
		fmt.Fprintf(w, "  next: synguard explain %s\n", in.Addr)
	}
}
