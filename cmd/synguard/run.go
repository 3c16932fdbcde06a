package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/synguard/synguard/alert"
	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
	"github.com/synguard/synguard/internal/config"
	"github.com/synguard/synguard/internal/daemon"
)

func init() { register(newRunCmd) }

// runFlags are the flags of `synguard run`; each overrides its config key.
type runFlags struct {
	config       string
	ifaces       []string
	mode         string
	socket       string
	stateDir     string
	bpffs        string
	metricsAddr  string
	logLevel     string
	logFormat    string
	detachOnExit bool
}

func newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon (what the systemd service starts)",
		Long: "run attaches the XDP data plane to the configured interfaces, feeds the detector every poll\n" +
			"interval and on early-warning events, applies and lifts bans, sends alerts, and serves the\n" +
			"control API on a Unix socket and Prometheus metrics over HTTP. Under systemd (Type=notify)\n" +
			"it reports READY=1 once everything is attached and serving. SIGHUP reloads the configuration.\n" +
			"Flags override the configuration file.",
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, notes, err := effectiveRunConfig(cmd, f)
			if err != nil {
				return err
			}
			reload := func(running *config.Config) (*config.Config, error) {
				next, err := config.Load(f.config)
				if err != nil {
					return nil, err
				}
				applyRunFlags(cmd, f, next)
				if len(next.Interfaces) == 0 {
					next.Interfaces = running.Interfaces // resolved from the default routes at start
				}
				if err := next.Validate(); err != nil {
					return nil, flagNamed(err)
				}
				if err := next.CheckSecrets(); err != nil {
					return nil, err
				}
				return next, nil
			}
			return runDaemon(cmd.Context(), cfg, f.config, notes, reload)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", config.DefaultPath, "configuration file")
	fl.StringArrayVar(&f.ifaces, "iface", nil, "interface to protect (repeatable; overrides config key interfaces)")
	fl.StringVar(&f.mode, "mode", "", "observe or enforce (config key mode)")
	fl.StringVar(&f.socket, "socket", "", "control socket path (config key socket; default /run/synguard/synguard.sock)")
	fl.StringVar(&f.stateDir, "state-dir", "", "state directory (config key state_dir; default /var/lib/synguard)")
	fl.StringVar(&f.bpffs, "bpffs", "", "bpffs directory for pins (config key bpffs; default /sys/fs/bpf/synguard)")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "Prometheus HOST:PORT, empty disables (config key metrics_addr; default 127.0.0.1:9717)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (config key log.level)")
	fl.StringVar(&f.logFormat, "log-format", "", "text or json (config key log.format)")
	fl.BoolVar(&f.detachOnExit, "detach-on-exit", false, "remove XDP when the daemon stops (config key detach_on_exit); bans then stop applying")
	return cmd
}

// effectiveRunConfig loads the file and applies the flags the user set.
func effectiveRunConfig(cmd *cobra.Command, f runFlags) (*config.Config, []string, error) {
	cfg, notes, err := loadConfig(f.config, cmd.Flags().Changed("config"))
	if err != nil {
		return nil, nil, err
	}
	applyRunFlags(cmd, f, cfg)
	if err := cfg.Validate(); err != nil {
		return nil, nil, usageError(flagNamed(err))
	}
	// Secret files are read before the data plane is touched, so a broken
	// credential fails the start with exit code 2 instead of surfacing at
	// the first incident.
	if err := cfg.CheckSecrets(); err != nil {
		return nil, nil, usageError(err)
	}
	return cfg, notes, nil
}

func applyRunFlags(cmd *cobra.Command, f runFlags, cfg *config.Config) {
	ch := cmd.Flags().Changed
	if ch("iface") {
		cfg.Interfaces = slices.Clone(f.ifaces)
	}
	if ch("mode") {
		cfg.Mode = f.mode
	}
	if ch("socket") {
		cfg.Socket = f.socket
	}
	if ch("state-dir") {
		cfg.StateDir = f.stateDir
	}
	if ch("bpffs") {
		cfg.BPFFS = f.bpffs
	}
	if ch("metrics-addr") {
		cfg.MetricsAddr = f.metricsAddr
	}
	if ch("log-level") {
		cfg.Log.Level = f.logLevel
	}
	if ch("log-format") {
		cfg.Log.Format = f.logFormat
	}
	if ch("detach-on-exit") {
		cfg.DetachOnExit = f.detachOnExit
	}
}

// flagNamed adds the flag that sets a config key to its error message.
func flagNamed(err error) error {
	var ce *config.Error
	if !errors.As(err, &ce) {
		return err
	}
	flags := map[string]string{"mode": "--mode", "socket": "--socket", "state_dir": "--state-dir", "bpffs": "--bpffs",
		"metrics_addr": "--metrics-addr", "log.level": "--log-level", "log.format": "--log-format"}
	if fl, ok := flags[ce.Key]; ok {
		return fmt.Errorf("%w (flag %s)", err, fl)
	}
	if len(ce.Key) > 10 && ce.Key[:10] == "interfaces" {
		return fmt.Errorf("%w (flag --iface)", err)
	}
	return err
}

// defaultRouteInterfaces names the interfaces of the default routes, the
// interfaces protected when the config names none.
func defaultRouteInterfaces() ([]string, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []string
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if ifc, err := net.InterfaceByIndex(r.LinkIndex); err == nil && !slices.Contains(out, ifc.Name) {
			out = append(out, ifc.Name)
		}
	}
	return out, nil
}

// runDaemon runs until SIGINT or SIGTERM. reload builds the configuration
// for SIGHUP: the file again, with the command-line flags re-applied.
func runDaemon(ctx context.Context, cfg *config.Config, cfgPath string, notes []string, reload func(*config.Config) (*config.Config, error)) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var level slog.LevelVar
	logLevel(&level, cfg.Log.Level)
	log := newLogger(os.Stderr, &level, cfg.Log.Format)
	slog.SetDefault(log)
	for _, n := range notes {
		log.Warn(n)
	}
	if len(cfg.Interfaces) == 0 {
		ifs, err := defaultRouteInterfaces()
		if err != nil || len(ifs) == 0 {
			return usageError(fmt.Errorf("config key interfaces is empty and no default route names an interface (%v): set interfaces or --iface", err))
		}
		log.Info("no interfaces configured: protecting the default-route interfaces", "interfaces", ifs)
		cfg.Interfaces = ifs
	}
	if err := daemon.CheckInterfaces(cfg.Interfaces); err != nil {
		return usageError(err)
	}

	// The state lock and the socket first: a second daemon must fail
	// before touching the data plane of the first.
	store := &daemon.Store{Dir: cfg.StateDir}
	lock, err := store.Lock()
	if err != nil {
		return err
	}
	defer lock.Close()
	ln, gid, err := api.Listen(cfg.Socket, cfg.SocketGroup)
	if err != nil {
		return err
	}
	defer ln.Close()
	if gid < 0 && cfg.SocketGroup != "" {
		log.Warn("control socket group not set: only root may use the socket", "socket", cfg.Socket, "socket_group", cfg.SocketGroup)
	}
	// The metrics port too: a port in use fails the start before the data
	// plane is loaded, not after.
	var mln net.Listener
	if cfg.MetricsAddr != "" {
		if mln, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return fmt.Errorf("config key metrics_addr %s: %w", cfg.MetricsAddr, err)
		}
		defer mln.Close()
	}

	plane, err := daemon.OpenBPF(cfg, log)
	if err != nil {
		var ie *daemon.InterfaceError
		if errors.As(err, &ie) {
			return usageError(err)
		}
		return err
	}
	detach := cfg.DetachOnExit
	defer func() {
		if err := plane.Close(detach); err != nil {
			log.Error("data plane not closed cleanly", "err", err)
		} else if detach {
			log.Info("xdp detached (detach_on_exit)")
		}
	}()

	host, _ := os.Hostname()
	metrics := daemon.NewMetrics(version)
	var modeMu sync.Mutex
	mode := cfg.Mode
	alerts := &alertHolder{log: log, stateDir: cfg.StateDir, host: host, ifaces: cfg.Interfaces,
		mode: func() string { modeMu.Lock(); defer modeMu.Unlock(); return mode }}
	if err := alerts.start(cfg.Alerts); err != nil {
		return err
	}
	defer alerts.close()
	metrics.SetAlertStats(alerts.stats)

	prot, err := protectionDeps(cfg, log)
	if err != nil {
		return usageError(err)
	}
	d, err := daemon.New(daemon.Deps{
		Config: cfg, Plane: plane, NewEngine: daemon.NewDetector, Alerts: alerts, Protection: prot,
		Kernel:    kernelCounters(),
		Protected: daemon.ProtectedPeers,
		Store:     store, Log: log, Metrics: metrics, Version: version, Host: host,
	})
	if err != nil {
		return err
	}
	if err := d.Start(); err != nil {
		return err
	}
	defer d.Shutdown()

	srv := &api.Server{Backend: d, GID: gid, Log: log, DefaultTTL: cfg.ManualBanTTL,
		DefaultTTLFunc: func() time.Duration { return d.Config().ManualBanTTL }}
	go func() {
		if err := srv.Serve(ln); err != nil {
			log.Error("api server stopped", "err", err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	if mln != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler())
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/" {
				http.NotFound(w, r)
				return
			}
			fmt.Fprintf(w, "<html><head><title>synguard</title></head><body><h1>synguard %s</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n", version)
		})
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = msrv.Serve(mln) }()
		defer msrv.Close()
		log.Info("metrics served", "addr", mln.Addr().String())
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	loopDone := make(chan error, 1)
	go func() { loopDone <- d.Run(runCtx) }()

	log.Info("synguard ready", "interfaces", cfg.Interfaces, "mode", cfg.Mode, "socket", cfg.Socket, "pid", os.Getpid())
	notify(log, "READY=1\nSTATUS="+statusLine(d))

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	statusTick := time.NewTicker(10 * time.Second)
	defer statusTick.Stop()
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				old := d.Config()
				newCfg, err := reload(old)
				// Sinks with credential files restart too: a reload is how a
				// rotated secret or URL file takes effect.
				sinksChanged := err == nil && (!alertsEqual(newCfg.Alerts, old.Alerts) || readsFiles(newCfg.Alerts))
				if sinksChanged {
					err = alerts.restart(newCfg.Alerts, old.Alerts)
				}
				if err == nil {
					if err = d.Reload(newCfg); err != nil && sinksChanged {
						_ = alerts.restart(old.Alerts, newCfg.Alerts)
					}
				}
				if err != nil {
					log.Error("reload refused: keeping the running configuration", "config", cfgPath, "err", err)
					notify(log, "STATUS=reload refused: "+err.Error())
					continue
				}
				modeMu.Lock()
				mode = newCfg.Mode
				modeMu.Unlock()
				logLevel(&level, newCfg.Log.Level) // log.format needs a restart
				notify(log, "STATUS="+statusLine(d))
				continue
			}
			log.Info("stopping", "signal", sig.String())
			notify(log, "STOPPING=1")
			stop()
			<-loopDone
			return nil
		case err := <-loopDone:
			return err
		case <-statusTick.C:
			notify(log, "STATUS="+statusLine(d))
		}
	}
}

func alertsEqual(a, b []alert.SinkConfig) bool { return reflect.DeepEqual(a, b) }

// readsFiles reports whether a sink reads a URL or secret file, whose
// content may have changed without the configuration changing.
func readsFiles(sinks []alert.SinkConfig) bool {
	for _, s := range sinks {
		if s.URLFile != "" || s.SecretFile != "" || s.RoutingKeyFile != "" {
			return true
		}
	}
	return false
}

func statusLine(d *daemon.Daemon) string {
	st, err := d.Status(context.Background())
	if err != nil {
		return "status unavailable"
	}
	return fmt.Sprintf("%s mode on %d interface(s); %d bans, %d open incidents", st.Mode, len(st.Interfaces), st.Bans, len(st.Incidents))
}

func notify(log *slog.Logger, state string) {
	if _, err := daemon.Notify(state); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
}

// alertHolder owns the alert dispatcher so that a reload can replace it.
type alertHolder struct {
	mu       sync.Mutex
	d        *alert.Dispatcher
	log      *slog.Logger
	stateDir string
	host     string
	ifaces   []string
	mode     func() string
}

func (h *alertHolder) start(sinks []alert.SinkConfig) error {
	if len(sinks) == 0 {
		return nil // incidents are logged and listed only
	}
	d, err := alert.NewDispatcher(sinks, alert.Options{StateDir: h.stateDir, Logger: h.log})
	if err != nil {
		return fmt.Errorf("config key alerts: %w", err)
	}
	h.mu.Lock()
	h.d = d
	h.mu.Unlock()
	return nil
}

// restart swaps in a dispatcher for new sinks; the old one is closed first
// (it spools what it holds) and brought back if the new one fails.
func (h *alertHolder) restart(sinks, old []alert.SinkConfig) error {
	h.close()
	if err := h.start(sinks); err != nil {
		if rerr := h.start(old); rerr != nil {
			h.log.Error("alert sinks down after a failed reload", "err", rerr)
		}
		return err
	}
	return nil
}

func (h *alertHolder) close() {
	h.mu.Lock()
	d := h.d
	h.d = nil
	h.mu.Unlock()
	if d != nil {
		d.Close()
	}
}

// Send implements daemon.Alerter.
func (h *alertHolder) Send(in detector.Incident) {
	h.mu.Lock()
	d := h.d
	h.mu.Unlock()
	if d == nil {
		return
	}
	mode := alert.ModeObserve
	if h.mode != nil {
		mode = h.mode()
	}
	d.Send(alert.Event{Incident: in, Host: h.host, Interfaces: h.ifaces, Mode: mode, Time: time.Now()})
}

func (h *alertHolder) stats() (delivered, failed uint64) {
	h.mu.Lock()
	d := h.d
	h.mu.Unlock()
	if d == nil {
		return 0, 0
	}
	for _, s := range d.Stats() {
		delivered += s.Delivered
		failed += s.Failed
	}
	return delivered, failed
}
