package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/daemon"
)

func init() {
	register(newStatusCmd)
	register(newBlockCmd)
	register(newUnblockCmd)
	register(newAllowCmd)
	register(newDisallowCmd)
	register(newListCmd)
	register(newExplainCmd)
}

// clientFlags are the flags every command talking to the daemon takes.
type clientFlags struct {
	socket string
	json   bool
	// config names the daemon's configuration file: its socket key is the
	// default of --socket, and when the daemon is down its bpffs and
	// state_dir keys say where the pins and reasons are.
	config string
	cmd    *cobra.Command
}

func (f *clientFlags) add(cmd *cobra.Command, fallback bool) {
	f.cmd = cmd
	cmd.Flags().StringVar(&f.socket, "socket", config.Default().Socket, "daemon control socket (default: config key socket)")
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON instead of text")
	help := "configuration file (its socket key)"
	if fallback {
		help = "configuration file (socket, and bpffs and state_dir, read when the daemon is down)"
	}
	cmd.Flags().StringVar(&f.config, "config", config.DefaultPath, help)
}

// socketPath is --socket, or else the socket key of the configuration
// file, so that a daemon configured with another socket is found without
// flags. A configuration that cannot be read (not in the socket group, no
// file) leaves the built-in default.
func (f *clientFlags) socketPath() string {
	if f.cmd == nil || f.cmd.Flags().Changed("socket") {
		return f.socket
	}
	if cfg, err := config.Load(f.config); err == nil && cfg.Socket != "" {
		return cfg.Socket
	}
	return f.socket
}

func (f *clientFlags) client() *api.Client { return api.NewClient(f.socketPath()) }

// exitNotRunning is the exit code of `synguard status` when the daemon
// does not answer (as `systemctl status` uses 3 for inactive).
const exitNotRunning = 3

func ctxOf(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// apiError turns daemon answers into CLI errors: a refused input (400,
// 404, 409) is exit code 2, like any other bad input.
func apiError(err error) error {
	var se *api.StatusError
	if errors.As(err, &se) && se.Code >= 400 && se.Code < 500 && se.Code != 403 {
		return usageError(err)
	}
	if errors.Is(err, api.ErrUnreachable) {
		return fmt.Errorf("%w (is synguard running? `systemctl status synguard`)", err)
	}
	return err
}

// pinnedView is what the daemon-down fallback read.
type pinnedView struct {
	p   *daemon.Pinned
	st  daemon.State
	cfg *config.Config
	// hung: a daemon holds the state dir's lock but did not answer on the
	// socket (wrong --socket, or the daemon is stuck).
	hung bool
}

// statusTimeout bounds `synguard status`'s wait for the daemon.
const statusTimeout = 5 * time.Second

// downNote says why the pins were read instead of asking the daemon.
func (v pinnedView) downNote(f *clientFlags, err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("the daemon does not answer on %s within %s: it is hung or overloaded (`systemctl status synguard`, `journalctl -u synguard`)",
			f.socketPath(), statusTimeout)
	}
	if v.hung {
		return fmt.Sprintf("a synguard daemon holds %s but does not answer on %s (%v): wrong --socket, or the daemon is hung (`systemctl status synguard`, `journalctl -u synguard`)",
			filepath.Join(v.cfg.StateDir, daemon.LockFile), f.socketPath(), err)
	}
	return fmt.Sprintf("daemon NOT running: %v", err)
}

// readPinned is the daemon-down fallback: the kernel maps under bpffs,
// opened read-only (bpf.Open never swaps the daemon's program or drains its
// events, so this is safe while a daemon runs), joined with the reasons in
// the state dir.
func readPinned(f *clientFlags, explicit bool) (pinnedView, error) {
	var v pinnedView
	cfg, _, err := loadConfig(f.config, explicit)
	if err != nil {
		return v, err
	}
	v.cfg = cfg
	store := &daemon.Store{Dir: cfg.StateDir}
	v.hung = store.Locked()
	if v.p, err = daemon.ReadPinned(cfg); err != nil {
		return v, fmt.Errorf("read pinned maps under %s: %w", cfg.BPFFS, err)
	}
	st, err := store.Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, "warning:", err)
	}
	v.st = st
	return v, nil
}

func newStatusCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Health, interfaces, counters, open incidents and top suspects",
		Long: "status asks the daemon for its state. When the daemon does not answer (socket unreachable,\n" +
			"or no answer within 5 s: a hung daemon) it reads the pinned kernel maps directly (read-only),\n" +
			"says so, and exits with code 3.",
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The daemon answers status in milliseconds (its data-plane reads
			// never hold the lock status needs); a daemon that does not is
			// hung, and the operator needs the pinned state now.
			ctx, cancel := context.WithTimeout(ctxOf(cmd), statusTimeout)
			defer cancel()
			st, err := f.client().Status(ctx)
			if err != nil && !errors.Is(err, api.ErrUnreachable) && !errors.Is(err, context.DeadlineExceeded) {
				return apiError(err)
			}
			down := err != nil
			if down {
				v, perr := readPinned(&f, cmd.Flags().Changed("config"))
				st = api.Status{Running: false}
				if perr != nil {
					note := fmt.Sprintf("daemon NOT running: %v", err)
					if v.cfg != nil {
						note = v.downNote(&f, err)
					}
					st.Notes = append(st.Notes, note, "pinned maps not readable: "+perr.Error())
				} else {
					p := v.p
					st.Notes = append(st.Notes, v.downNote(&f, err))
					st.Interfaces, st.Counters, st.Bans, st.Allows = p.Interfaces, p.Counters, len(p.Bans), len(p.Allows)
					st.Protection = pinnedProtection(v.cfg)
					if len(p.Interfaces) == 0 {
						st.Notes = append(st.Notes, "nothing pinned under "+v.cfg.BPFFS+": no interface is protected")
					} else {
						st.Notes = append(st.Notes, "read from the pinned maps under "+v.cfg.BPFFS+"; the kernel keeps enforcing bans while the daemon is down")
					}
					for _, in := range v.st.Incidents {
						if in.Stage != detector.StageResolved {
							st.Incidents = append(st.Incidents, in)
						}
					}
				}
			}
			if f.json {
				if err := printJSON(cmd.OutOrStdout(), st); err != nil {
					return err
				}
			} else {
				printStatus(cmd.OutOrStdout(), st)
			}
			if down {
				return &exitError{code: exitNotRunning, err: errors.New("daemon not running"), silent: true}
			}
			return nil
		},
	}
	f.add(cmd, true)
	return cmd
}

func printStatus(w io.Writer, st api.Status) {
	if st.Running {
		fmt.Fprintf(w, "synguard %s: running, pid %d, up %s, mode %s\n", st.Version, st.PID, time.Since(st.Started).Round(time.Second), strings.ToUpper(st.Mode))
		if !st.LastPoll.IsZero() {
			fmt.Fprintf(w, "last poll: %s ago\n", time.Since(st.LastPoll).Round(time.Millisecond))
		}
	} else {
		fmt.Fprintln(w, "synguard: daemon NOT RUNNING")
	}
	for _, n := range st.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	fmt.Fprintln(w)
	if len(st.Interfaces) == 0 {
		fmt.Fprintln(w, "interfaces: none")
	}
	for _, i := range st.Interfaces {
		att := i.Attach
		if att == "" {
			att = "NOT ATTACHED"
		}
		fmt.Fprintf(w, "interface %-15s xdp %-8s mode %s\n", i.Name, att, i.Mode)
	}
	c := st.Counters
	fmt.Fprintf(w, "\nframes %d: syn %d, ack %d, synack %d, rst %d, other tcp %d, non-tcp %d, non-ip %d, fragments %d, malformed %d\n",
		c.Frames, c.SYN, c.ACK, c.SYNACK, c.RST, c.TCPOther, c.NonTCP, c.NonIP, c.Fragments, c.NotParsed)
	fmt.Fprintf(w, "dropped %d, would-drop %d, allowlisted %d\n", c.Dropped, c.WouldDrop, c.Allowlisted)
	fmt.Fprintf(w, "bans %d, allows %d\n\n", st.Bans, st.Allows)
	printIncidents(w, st.Incidents, "open incidents")
	printProtection(w, st.Protection)
	if st.Running {
		fmt.Fprintln(w)
		printRows(w, st.TopSuspects, "top suspects")
	}
}

func printIncidents(w io.Writer, ins []detector.Incident, title string) {
	if len(ins) == 0 {
		fmt.Fprintf(w, "%s: none\n", title)
		return
	}
	fmt.Fprintf(w, "%s:\n", title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTAGE\tSEVERITY\tKIND\tADDR\tSYN/s\tHALF-OPEN\tDROPPED/s\tOPENED\tREASON")
	for _, in := range ins {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f%%\t%.0f\t%s\t%s\n", in.ID, in.Stage, in.Severity, in.Kind, in.Addr, in.SYNPerSecond,
			100*in.HalfOpenShare, in.DroppedPerSecond, in.OpenedAt.Local().Format("15:04:05"), in.Reason)
	}
	tw.Flush()
}

func printRows(w io.Writer, rows []api.SourceRow, title string) {
	if len(rows) == 0 {
		fmt.Fprintf(w, "%s: none\n", title)
		return
	}
	if title != "" {
		fmt.Fprintf(w, "%s:\n", title)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SOURCE\tSYN/s\tSYN\tACK\tRST\tHALF-OPEN\tSTATE\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%.1f\t%d\t%d\t%d\t%.0f%%\t%s\t\n", r.Addr, r.SYNPerSecond, r.SYN, r.ACK, r.RST, 100*r.HalfOpenShare, r.State)
	}
	tw.Flush()
}

func newBlockCmd() *cobra.Command {
	var f clientFlags
	var ttl, reason string
	cmd := &cobra.Command{
		Use:   "block PREFIX",
		Short: "Ban a prefix (address or CIDR) now; the detector never lifts manual bans",
		Args:  exactArgs(1, "one PREFIX (e.g. 192.0.2.7 or 192.0.2.0/24)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := config.ParsePrefix(args[0])
			if err != nil {
				return usageError(fmt.Errorf("block %w", err))
			}
			if cmd.Flags().Changed("ttl") {
				if _, err := api.ParseTTL(ttl); err != nil {
					return usageError(fmt.Errorf("block %s: --%w", p, err))
				}
			}
			b, err := f.client().Block(ctxOf(cmd), p.String(), ttl, reason)
			if err != nil {
				return apiError(err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), b)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "banned %s until %s (%s): %s\n", b.Prefix, b.Until.Local().Format(time.RFC3339),
				time.Until(b.Until).Round(time.Second), b.Reason)
			return nil
		},
	}
	f.add(cmd, false)
	cmd.Flags().StringVar(&ttl, "ttl", "", "ban length, e.g. 30m or 24h (default: config key manual_ban_ttl, 1h)")
	cmd.Flags().StringVar(&reason, "reason", "", "why, shown by `synguard list bans` and `explain`")
	return cmd
}

func prefixCmd(use, short string, parse func(string) (netip.Prefix, error), do func(ctx context.Context, c *api.Client, p string) (any, error), done string) func() *cobra.Command {
	return func() *cobra.Command {
		var f clientFlags
		verb := strings.Fields(use)[0]
		cmd := &cobra.Command{
			Use:   use,
			Short: short,
			Args:  exactArgs(1, "one PREFIX (e.g. 192.0.2.7 or 192.0.2.0/24)"),
			RunE: func(cmd *cobra.Command, args []string) error {
				p, err := parse(args[0])
				if err != nil {
					return usageError(fmt.Errorf("%s %w", verb, err))
				}
				v, err := do(ctxOf(cmd), f.client(), p.String())
				if err != nil {
					return apiError(err)
				}
				if f.json {
					if v == nil {
						v = map[string]string{verb: p.String()}
					}
					return printJSON(cmd.OutOrStdout(), v)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", done, p)
				return nil
			},
		}
		f.add(cmd, false)
		return cmd
	}
}

var (
	newUnblockCmd = prefixCmd("unblock PREFIX", "Lift a ban", config.ParsePrefix,
		func(ctx context.Context, c *api.Client, p string) (any, error) { return nil, c.Unblock(ctx, p) }, "unbanned")
	newAllowCmd = prefixCmd("allow PREFIX", "Never drop a prefix (kernel allowlist; the detector never bans it)", config.ParseAllowPrefix,
		func(ctx context.Context, c *api.Client, p string) (any, error) { return c.Allow(ctx, p) }, "allowlisted")
	newDisallowCmd = prefixCmd("disallow PREFIX", "Remove a prefix from the allowlist", config.ParsePrefix,
		func(ctx context.Context, c *api.Client, p string) (any, error) { return nil, c.Disallow(ctx, p) }, "removed from the allowlist:")
)

func newListCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:       "list bans|allows|incidents",
		Short:     "List bans, allowlist entries or incidents",
		Long:      "list prints the blocklist (prefix, until, dropped, reason), the allowlist, or open and recently\nresolved incidents. When the daemon does not answer, bans and allows are read from the pinned\nmaps (with reasons from the state dir) and a note on stderr says the daemon is not running.",
		ValidArgs: []string{"bans", "allows", "incidents"},
		Args:      exactArgs(1, "one of bans, allows, incidents"),
		RunE: func(cmd *cobra.Command, args []string) error {
			what := args[0]
			if what != "bans" && what != "allows" && what != "incidents" {
				return usageError(fmt.Errorf("list %q: want bans, allows or incidents", what))
			}
			ctx, c, out := ctxOf(cmd), f.client(), cmd.OutOrStdout()
			var v any
			var err error
			switch what {
			case "bans":
				v, err = c.Bans(ctx)
			case "allows":
				v, err = c.Allows(ctx)
			case "incidents":
				v, err = c.Incidents(ctx)
			}
			if errors.Is(err, api.ErrUnreachable) {
				pv, perr := readPinned(&f, cmd.Flags().Changed("config"))
				if perr != nil {
					return fmt.Errorf("%w; and %v", err, perr)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s: read from the pinned maps and the state dir\n", pv.downNote(&f, err))
				switch what {
				case "bans":
					v, err = daemon.JoinBans(pv.p.Bans, pv.st.Bans), nil
				case "allows":
					v, err = daemon.JoinAllows(pv.p.Allows, pv.st.Allows), nil
				case "incidents":
					v, err = pv.st.Incidents, nil
				}
			}
			if err != nil {
				return apiError(err)
			}
			switch t := v.(type) {
			case []api.Ban:
				if t == nil {
					t = []api.Ban{}
				}
				if f.json {
					return printJSON(out, t)
				}
				printBans(out, t)
			case []api.Allow:
				if t == nil {
					t = []api.Allow{}
				}
				if f.json {
					return printJSON(out, t)
				}
				printAllows(out, t)
			case []detector.Incident:
				if t == nil {
					t = []detector.Incident{}
				}
				if f.json {
					return printJSON(out, t)
				}
				printIncidents(out, t, "incidents")
			}
			return nil
		},
	}
	f.add(cmd, true)
	return cmd
}

func printBans(w io.Writer, bans []api.Ban) {
	if len(bans) == 0 {
		fmt.Fprintln(w, "no bans")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tUNTIL\tLEFT\tDROPPED\tWOULD-DROP\tORIGIN\tREASON")
	for _, b := range bans {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", b.Prefix, b.Until.Local().Format(time.RFC3339), time.Until(b.Until).Round(time.Second),
			b.Dropped, b.WouldDrop, b.Origin, b.Reason)
	}
	tw.Flush()
}

func printAllows(w io.Writer, allows []api.Allow) {
	if len(allows) == 0 {
		fmt.Fprintln(w, "no allowlist entries")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tORIGIN\tADDED")
	for _, a := range allows {
		added := ""
		if !a.Added.IsZero() {
			added = a.Added.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", a.Prefix, a.Origin, added)
	}
	tw.Flush()
}

func newExplainCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "explain ADDR",
		Short: "Why a source is or is not banned, with its figures",
		Args:  exactArgs(1, "one IP address"),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := netip.ParseAddr(args[0])
			if err != nil {
				return usageError(fmt.Errorf("explain %q: not an IP address", args[0]))
			}
			e, err := f.client().Explain(ctxOf(cmd), a.Unmap().String())
			if err != nil {
				return apiError(err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), e)
			}
			printExplanation(cmd.OutOrStdout(), e)
			return nil
		},
	}
	f.add(cmd, false)
	return cmd
}

func printExplanation(w io.Writer, e api.Explanation) {
	fmt.Fprintf(w, "%s: %s\n", e.Addr, strings.ToUpper(e.Verdict))
	if e.Ban != nil {
		fmt.Fprintf(w, "  banned by %s until %s (%s left), %d dropped, %d would-drop; origin %s: %s\n", e.Ban.Prefix,
			e.Ban.Until.Local().Format(time.RFC3339), time.Until(e.Ban.Until).Round(time.Second), e.Ban.Dropped, e.Ban.WouldDrop, e.Ban.Origin, e.Ban.Reason)
	}
	if e.Allow != nil {
		fmt.Fprintf(w, "  allowlisted by %s (origin %s): never dropped\n", e.Allow.Prefix, e.Allow.Origin)
	}
	if e.Protected != "" {
		fmt.Fprintf(w, "  protected by %s (allowlist, protect.prefixes, default gateway or SSH peer): the detector never bans it\n", e.Protected)
	}
	if e.Kernel != nil {
		k := e.Kernel
		fmt.Fprintf(w, "  kernel counters: %d SYN, %d ACK, %d RST; first seen %s, last seen %s\n", k.SYN, k.ACK, k.RST,
			k.FirstSeen.Local().Format(time.RFC3339), k.LastSeen.Local().Format(time.RFC3339))
	} else {
		fmt.Fprintln(w, "  kernel counters: none (never seen, or evicted from the per-source table)")
	}
	if e.Rate != nil {
		fmt.Fprintf(w, "  measured: %.1f SYN/s, %.0f%% half-open\n", e.Rate.SYNPerSecond, 100*e.Rate.HalfOpenShare)
	}
	if e.Detector != "" {
		fmt.Fprintf(w, "  detector: %s\n", e.Detector)
	}
}
