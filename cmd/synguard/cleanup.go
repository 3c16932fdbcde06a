package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/synproxy"
)

func init() { register(newCleanupCmd) }

func newCleanupCmd() *cobra.Command {
	var f clientFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Detach XDP and remove everything synguard left in the kernel (bans, allowlist, protection)",
		Long: "cleanup detaches the XDP program from every interface and removes every pin under the bpffs\n" +
			"directory (config key bpffs): the kernel forgets all bans and the allowlist. It also removes\n" +
			"service protection's nftables tables and puts back the sysctls protection changed, which a\n" +
			"daemon that was killed could not (they are listed in " + sysctlRestoreFile + " in the state dir).\n" +
			"It refuses while the daemon answers on its socket unless --force. The state dir is otherwise\n" +
			"left alone.",
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := loadConfig(f.config, cmd.Flags().Changed("config"))
			if err != nil {
				return err
			}
			if _, err := f.client().Status(ctxOf(cmd)); err == nil && !force {
				return usageError(fmt.Errorf("cleanup: the daemon is running on %s; stop it first (systemctl stop synguard) or use --force", f.socketPath()))
			} else if err != nil && !errors.Is(err, api.ErrUnreachable) && !force {
				return fmt.Errorf("cleanup: cannot tell whether the daemon runs: %w", err)
			}
			dirs, err := filepath.Glob(filepath.Join(cfg.BPFFS, "*"))
			if err != nil {
				return err
			}
			var errs []error
			for _, d := range dirs {
				if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
					continue
				}
				if err := bpf.Remove(d); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s (xdp detached from %s)\n", d, filepath.Base(d))
			}
			if err := os.Remove(cfg.BPFFS); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove %s: %w", cfg.BPFFS, err))
			}
			if len(dirs) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "nothing pinned under %s\n", cfg.BPFFS)
			}
			errs = append(errs, cleanupProtection(ctxOf(cmd), cfg, cmd.OutOrStdout(), cmd.ErrOrStderr()))
			return errors.Join(errs...)
		},
	}
	f.add(cmd, true)
	cmd.Flags().BoolVar(&force, "force", false, "clean up even while the daemon answers")
	return cmd
}

// cleanupProtection removes what service protection leaves behind when the
// daemon dies without ending it: the nftables tables and changed sysctls.
func cleanupProtection(ctx context.Context, cfg *config.Config, out, errOut io.Writer) error {
	m, err := synproxy.New(synproxy.Options{SavedFile: filepath.Join(cfg.StateDir, sysctlRestoreFile),
		Log: slog.New(slog.NewTextHandler(errOut, nil))})
	if err != nil {
		return err
	}
	var errs []error
	if _, err := exec.LookPath("nft"); err == nil { // no nft, no tables
		for _, t := range m.Tables() {
			if exec.CommandContext(ctx, "nft", "list", "table", "inet", t).Run() != nil {
				continue // not there
			}
			if o, err := exec.CommandContext(ctx, "nft", "delete", "table", "inet", t).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("remove nftables table inet %s: %w: %s", t, err, bytes.TrimSpace(o)))
				continue
			}
			fmt.Fprintf(out, "removed nftables table inet %s\n", t)
		}
	}
	restored, err := m.Restore(ctx)
	keys := make([]string, 0, len(restored))
	for k := range restored {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(out, "restored %s=%s (changed by service protection)\n", k, restored[k])
	}
	return errors.Join(append(errs, err)...)
}
