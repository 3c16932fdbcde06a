package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/api"
)

func init() { register(newTopCmd) }

func newTopCmd() *cobra.Command {
	var f clientFlags
	var n int
	var interval time.Duration
	var once bool
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Live view of the busiest sources: SYN rate, SYN, ACK, half-open share, state",
		Long: "top refreshes a table of the busiest sources every --interval. SYN/s is measured between two\n" +
			"refreshes when a source was on the previous screen, otherwise it comes from the daemon.\n" +
			"--once (implied by --json or when stdout is not a terminal) prints one table.",
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 1 || n > 10000 {
				return usageError(fmt.Errorf("-n %d: want 1 to 10000", n))
			}
			if interval < 200*time.Millisecond {
				return usageError(fmt.Errorf("--interval %s: at least 200ms", interval))
			}
			c, out := f.client(), cmd.OutOrStdout()
			live := !once && !f.json && isTerminal(os.Stdout)
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(sigs)
			prev := map[netip.Addr]api.SourceRow{}
			var prevAt time.Time
			for {
				rows, err := c.Top(ctxOf(cmd), n)
				if err != nil {
					return apiError(err)
				}
				now := time.Now()
				if rows == nil {
					rows = []api.SourceRow{}
				}
				if f.json {
					return printJSON(out, rows)
				}
				if !prevAt.IsZero() {
					dt := now.Sub(prevAt).Seconds()
					for i, r := range rows {
						if p, ok := prev[r.Addr]; ok && r.SYN >= p.SYN && dt > 0 {
							rows[i].SYNPerSecond = float64(r.SYN-p.SYN) / dt
						}
					}
				}
				prev, prevAt = map[netip.Addr]api.SourceRow{}, now
				for _, r := range rows {
					prev[r.Addr] = r
				}
				if live {
					fmt.Fprint(out, "\033[H\033[2J")
					fmt.Fprintf(out, "synguard top — %s — refresh %s, Ctrl-C quits\n\n", now.Format("15:04:05"), interval)
				}
				printRows(out, rows, "")
				if !live {
					return nil
				}
				select {
				case <-sigs:
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	f.add(cmd, false)
	cmd.Flags().IntVarP(&n, "rows", "n", 20, "number of sources shown")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "refresh interval")
	cmd.Flags().BoolVar(&once, "once", false, "print one table and exit")
	return cmd
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
