package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/synguard/synguard/bpf"
	"github.com/synguard/synguard/internal/api"
)

func init() { register(newCleanupCmd) }

func newCleanupCmd() *cobra.Command {
	var f clientFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Detach XDP and remove everything synguard pinned (bans, allowlist, counters)",
		Long: "cleanup detaches the XDP program from every interface and removes every pin under the bpffs\n" +
			"directory (config key bpffs): the kernel forgets all bans and the allowlist. It refuses while\n" +
			"the daemon answers on its socket unless --force. The state dir is left alone.",
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
			return errors.Join(errs...)
		},
	}
	f.add(cmd, true)
	cmd.Flags().BoolVar(&force, "force", false, "clean up even while the daemon answers")
	return cmd
}
