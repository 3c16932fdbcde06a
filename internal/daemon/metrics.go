package daemon

import (
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/synguard/synguard/detector"
	"github.com/synguard/synguard/internal/api"
)

// Metrics are the daemon's Prometheus metrics, on a registry of their own
// (no global state). No metric has a per-IP label: top-N lists belong to
// `synguard top`, not to a time-series database.
type Metrics struct {
	reg *prometheus.Registry

	pollSeconds   prometheus.Histogram
	detectSeconds prometheus.Histogram
	pollErrors    prometheus.Counter
	banErrors     prometheus.Counter
	fullScans     prometheus.Counter
	suspects      prometheus.Counter
	bansApplied   *prometheus.CounterVec
	bansLifted    prometheus.Counter
	incidents     *prometheus.CounterVec

	mu        sync.Mutex
	counters  api.Counters
	bansBy    map[string]int
	allows    int
	openBy    map[string]int
	watched   int
	lastPoll  time.Time
	alertFunc func() (delivered, failed uint64)
}

// NewMetrics registers every metric on a fresh registry.
func NewMetrics(version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		pollSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "synguard_poll_duration_seconds", Help: "Time to read the data plane and run the detector once per poll.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		detectSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "synguard_detection_duration_seconds", Help: "Time the detector takes per snapshot or early-warning event.",
			Buckets: []float64{.00001, .00005, .0001, .0005, .001, .005, .01, .05, .1},
		}),
		pollErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "synguard_poll_errors_total", Help: "Polls abandoned because a data-plane read failed."}),
		banErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "synguard_ban_errors_total",
			Help: "Detector bans the kernel blocklist refused (full, or a kernel error): a flood goes on unblocked."}),
		fullScans: prometheus.NewCounter(prometheus.CounterOpts{Name: "synguard_full_scans_total", Help: "Reads of every per-source entry."}),
		suspects:  prometheus.NewCounter(prometheus.CounterOpts{Name: "synguard_suspect_events_total", Help: "Early-warning events from the data plane."}),
		bansApplied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "synguard_bans_applied_total", Help: "Bans put on the kernel blocklist, by origin (detector, manual)."},
			[]string{"origin"}),
		bansLifted: prometheus.NewCounter(prometheus.CounterOpts{Name: "synguard_bans_lifted_total", Help: "Detector bans lifted before their kernel expiry."}),
		incidents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "synguard_incidents_opened_total", Help: "Incidents opened, by kind (source, service, overload)."},
			[]string{"kind"}),
		bansBy: map[string]int{},
		openBy: map[string]int{},
	}
	for _, o := range []string{api.OriginDetector, api.OriginManual} {
		m.bansApplied.WithLabelValues(o)
	}
	for _, k := range detector.Kinds {
		m.incidents.WithLabelValues(string(k))
	}
	m.reg.MustRegister(m.pollSeconds, m.detectSeconds, m.pollErrors, m.banErrors, m.fullScans, m.suspects, m.bansApplied, m.bansLifted, m.incidents,
		stateCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "synguard_build_info", Help: "Always 1; the version label says which synguard runs.",
			ConstLabels: prometheus.Labels{"version": version}}, func() float64 { return 1 }),
	)
	return m
}

// SetAlertStats connects the alert pipeline's delivery counters.
func (m *Metrics) SetAlertStats(f func() (delivered, failed uint64)) {
	m.mu.Lock()
	m.alertFunc = f
	m.mu.Unlock()
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry exposes the registry for tests and extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) setState(c api.Counters, bans map[netip.Prefix]BanMeta, allows int, open map[string]detector.Incident, watched int, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counters = c
	m.bansBy = map[string]int{api.OriginDetector: 0, api.OriginManual: 0, api.OriginUnknown: 0}
	for _, b := range bans {
		m.bansBy[b.Origin]++
	}
	m.allows = allows
	m.openBy = map[string]int{}
	for _, k := range detector.Kinds {
		m.openBy[string(k)] = 0
	}
	for _, in := range open {
		m.openBy[string(in.Kind)]++
	}
	m.watched = watched
	m.lastPoll = now
}

var (
	descFrames      = prometheus.NewDesc("synguard_datapath_frames_total", "Frames seen by XDP, by classification (sum over kinds = all frames).", []string{"kind"}, nil)
	descDropped     = prometheus.NewDesc("synguard_datapath_dropped_frames_total", "Frames dropped because their source is banned (enforce mode).", nil, nil)
	descWouldDrop   = prometheus.NewDesc("synguard_datapath_would_drop_frames_total", "Frames from banned sources passed because the mode is observe.", nil, nil)
	descAllowlisted = prometheus.NewDesc("synguard_datapath_allowlisted_frames_total", "Frames passed because their source is allowlisted.", nil, nil)
	descBans        = prometheus.NewDesc("synguard_bans_active", "Entries on the kernel blocklist, by origin.", []string{"origin"}, nil)
	descAllows      = prometheus.NewDesc("synguard_allows_active", "Entries on the kernel allowlist.", nil, nil)
	descOpen        = prometheus.NewDesc("synguard_incidents_open", "Open incidents, by kind.", []string{"kind"}, nil)
	descWatched     = prometheus.NewDesc("synguard_watched_sources", "Sources read individually every poll.", nil, nil)
	descLastPoll    = prometheus.NewDesc("synguard_last_poll_timestamp_seconds", "When the data plane was last read (Unix time).", nil, nil)
	descDelivered   = prometheus.NewDesc("synguard_alert_deliveries_total", "Alert messages delivered to sinks.", nil, nil)
	descFailed      = prometheus.NewDesc("synguard_alert_failures_total", "Alert delivery attempts that failed.", nil, nil)
)

// stateCollector exports the last poll's view at scrape time, so a scrape
// never touches the kernel.
type stateCollector struct{ m *Metrics }

func (s stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFrames, descDropped, descWouldDrop, descAllowlisted, descBans, descAllows, descOpen, descWatched, descLastPoll, descDelivered, descFailed} {
		ch <- d
	}
}

func (s stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := s.m
	m.mu.Lock()
	c, bans, allows, open, watched, last, af := m.counters, m.bansBy, m.allows, m.openBy, m.watched, m.lastPoll, m.alertFunc
	m.mu.Unlock()
	for kind, v := range map[string]uint64{
		"syn": c.SYN, "synack": c.SYNACK, "ack": c.ACK, "rst": c.RST, "tcp_other": c.TCPOther,
		"non_ip": c.NonIP, "non_tcp": c.NonTCP, "fragment": c.Fragments, "malformed": c.NotParsed,
	} {
		ch <- prometheus.MustNewConstMetric(descFrames, prometheus.CounterValue, float64(v), kind)
	}
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(c.Dropped))
	ch <- prometheus.MustNewConstMetric(descWouldDrop, prometheus.CounterValue, float64(c.WouldDrop))
	ch <- prometheus.MustNewConstMetric(descAllowlisted, prometheus.CounterValue, float64(c.Allowlisted))
	for _, o := range []string{api.OriginDetector, api.OriginManual, api.OriginUnknown} {
		ch <- prometheus.MustNewConstMetric(descBans, prometheus.GaugeValue, float64(bans[o]), o)
	}
	ch <- prometheus.MustNewConstMetric(descAllows, prometheus.GaugeValue, float64(allows))
	for _, k := range detector.Kinds {
		ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(open[string(k)]), string(k))
	}
	ch <- prometheus.MustNewConstMetric(descWatched, prometheus.GaugeValue, float64(watched))
	var ts float64
	if !last.IsZero() {
		ts = float64(last.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(descLastPoll, prometheus.GaugeValue, ts)
	var delivered, failed uint64
	if af != nil {
		delivered, failed = af()
	}
	ch <- prometheus.MustNewConstMetric(descDelivered, prometheus.CounterValue, float64(delivered))
	ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(failed))
}
