package main

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/daemon"
	"github.com/synguard/synguard/internal/kstat"
	"github.com/synguard/synguard/internal/synproxy"
)

func init() {
	register(newProtectCmd)
	register(newUnprotectCmd)
}

// sysctlRestoreFile, in the state dir, lists the sysctls protection changed
// and must put back (synproxy.Options.SavedFile).
const sysctlRestoreFile = "sysctl-restore.json"

// protectionDeps builds the daemon's service protection from the
// configuration: nftables SYNPROXY with kernel-cookie fallback when
// protection.cookies is on, kernel cookies only when it is off.
func protectionDeps(cfg *config.Config, log *slog.Logger) (*daemon.ProtectionDeps, error) {
	mode := synproxy.ModeAuto
	if !cfg.Protection.Cookies {
		mode = synproxy.ModeKernelCookies
	}
	m, err := synproxy.New(synproxy.Options{Mode: mode, Log: log,
		SavedFile: filepath.Join(cfg.StateDir, sysctlRestoreFile)})
	if err != nil {
		return nil, fmt.Errorf("config key protection.cookies: %w", err)
	}
	return &daemon.ProtectionDeps{Validator: m, Peers: kstat.EstablishedPeers}, nil
}

func newProtectCmd() *cobra.Command {
	return serviceCmd("protect", "Protect a service (ADDR:PORT) from a spoofed flood now, until `synguard unprotect`",
		"protect switches service protection on by hand (enforce mode): SYNs from verified sources pass,\n"+
			"the others get XDP SYN cookies completed by nftables SYNPROXY (or share a budget, see the\n"+
			"protection keys of the configuration). It stays on until `synguard unprotect`, across restarts.",
		func(cmd *cobra.Command, c *api.Client, svc string) (api.ServiceProtection, error) {
			return c.Protect(ctxOf(cmd), svc)
		})
}

func newUnprotectCmd() *cobra.Command {
	return serviceCmd("unprotect", "End a service's protection now",
		"unprotect switches a service's protection off, manual or automatic. During an open service\n"+
			"incident, automatic protection of that service is held off until the incident resolves.",
		func(cmd *cobra.Command, c *api.Client, svc string) (api.ServiceProtection, error) {
			return c.Unprotect(ctxOf(cmd), svc)
		})
}

func serviceCmd(verb, short, long string, do func(*cobra.Command, *api.Client, string) (api.ServiceProtection, error)) *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   verb + " ADDR:PORT",
		Short: short,
		Long:  long,
		Args:  exactArgs(1, "one service ADDR:PORT (e.g. 192.0.2.10:443 or [2001:db8::1]:443)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, err := api.ParseService(args[0])
			if err != nil {
				return usageError(fmt.Errorf("%s %w", verb, err))
			}
			p, err := do(cmd, f.client(), svc.String())
			if err != nil {
				return apiError(err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			w := cmd.OutOrStdout()
			switch verb {
			case "protect":
				fmt.Fprintf(w, "protected %s: %s, budget %s\n", p.Service, pathText(p.Path, p.Cookies), budgetText(p.Budget))
			default:
				fmt.Fprintf(w, "unprotected %s (%s): verified %d, admitted %d, dropped %d, cookies sent %d, validated %d\n",
					p.Service, p.State, p.Verified, p.Admitted, p.Dropped, p.CookiesSent, p.CookiesValidated)
				if p.Reason != "" {
					fmt.Fprintln(w, "note:", p.Reason)
				}
			}
			return nil
		},
	}
	f.add(cmd, false)
	return cmd
}

func pathText(path string, cookies bool) string {
	switch {
	case path == "":
		return "-"
	case cookies:
		return "XDP SYN cookies + nftables SYNPROXY"
	}
	return path + " (XDP budget, kernel SYN cookies)"
}

func budgetText(b uint32) string {
	if b == 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%d SYN/s", b)
}

// printProtection is the protection part of `synguard status`.
func printProtection(w io.Writer, p *api.ProtectionStatus) {
	if p == nil {
		return
	}
	fmt.Fprintln(w)
	if !p.Available {
		fmt.Fprintf(w, "service protection: unavailable (%s)\n", p.Note)
		return
	}
	onOff := map[bool]string{true: "on", false: "off"}
	fmt.Fprintf(w, "service protection: auto %s, cookies %s; %d verified sources\n", onOff[p.Auto], onOff[p.Cookies], p.VerifiedSources)
	if p.Note != "" {
		fmt.Fprintln(w, "note:", p.Note)
	}
	if len(p.Services) == 0 {
		fmt.Fprintln(w, "protected services: none")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSTATE\tORIGIN\tPATH\tBUDGET\tVERIFIED\tADMITTED\tDROPPED\tCOOKIES-SENT\tVALIDATED\tSINCE\tINCIDENT")
	for _, s := range p.Services {
		since := "-"
		if s.Since != nil {
			since = s.Since.Local().Format("15:04:05") + " (" + time.Since(*s.Since).Round(time.Second).String() + ")"
		}
		path := s.Path
		if path == "" {
			path = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Service, strings.ToUpper(s.State), s.Origin, path,
			budgetText(s.Budget), s.Verified, s.Admitted, s.Dropped, s.CookiesSent, s.CookiesValidated, since, s.IncidentID)
	}
	tw.Flush()
}

// pinnedProtection is the protection part of the daemon-down status, or
// nil when the pins cannot tell.
func pinnedProtection(cfg *config.Config) *api.ProtectionStatus {
	p, err := daemon.ReadPinnedProtections(cfg)
	if err != nil {
		return nil
	}
	return p
}
