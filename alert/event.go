package alert

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/synguard/synguard/detector"
)

// Modes the daemon runs in, as carried by Event.Mode.
const (
	ModeObserve = "observe"
	ModeEnforce = "enforce"
)

// Event is one incident stage change plus what the daemon knows around it,
// so that a message can say where the flood is and what synguard did.
type Event struct {
	Incident detector.Incident `json:"incident"`
	// Host is the machine's name as on-call knows it.
	Host string `json:"host"`
	// Interfaces are those synguard watches (the XDP attach points).
	Interfaces []string `json:"interfaces,omitempty"`
	// Mode is ModeObserve or ModeEnforce; in observe mode nothing is dropped.
	Mode string `json:"mode"`
	// Time is when the daemon emitted the event.
	Time time.Time `json:"time"`
	// Command is what on-call runs to look closer; empty means
	// DefaultCommand(incident ID).
	Command string `json:"command,omitempty"`
	// Test marks a message sent by `synguard alert test`.
	Test bool `json:"test,omitempty"`
}

// DefaultCommand is the command a message suggests for looking closer when
// the daemon does not set Event.Command: `synguard explain ADDR` for a
// flooding source (its figures and ban), `synguard top` for a service
// flood (the busiest sources right now).
func DefaultCommand(in detector.Incident) string {
	if in.Kind == detector.KindService || in.Kind == detector.KindOverload {
		return "synguard top"
	}
	if in.Source.IsValid() {
		return "synguard explain " + in.Source.Unmap().String()
	}
	if in.Addr != "" {
		return "synguard explain " + in.Addr
	}
	return "synguard list incidents"
}

func (e Event) command() string {
	if e.Command != "" {
		return e.Command
	}
	return DefaultCommand(e.Incident)
}

// view is an event in words: one field per question on-call asks.
type view struct {
	Headline string // "[CRITICAL] SYN flood opened on web-1: 192.0.2.10:443 …"
	Target   string // what is being hit
	From     string // by whom
	Rate     string // how hard
	Kernel   string // the kernel's view
	Action   string // what synguard did
	Command  string // how to look closer
}

func (v view) lines() []string {
	return []string{
		"Target: " + v.Target,
		"From: " + v.From,
		"Rate: " + v.Rate,
		"Kernel: " + v.Kernel,
		"Action: " + v.Action,
		"Look closer: " + v.Command,
	}
}

// Text is the headline and the detail lines, for plain-text sinks.
func (v view) Text() string { return v.Headline + "\n" + strings.Join(v.lines(), "\n") }

func describe(e Event) view {
	in := e.Incident
	where := e.Host
	if where == "" {
		where = "unknown host"
	}
	if len(e.Interfaces) > 0 {
		where += " (" + strings.Join(e.Interfaces, ", ") + ")"
	}
	target := where
	if in.Kind == detector.KindService || in.Service.IsValid() {
		svc := in.Addr
		if in.Service.IsValid() {
			svc = in.Service.String()
		}
		target = "service " + svc + " on " + where
	}
	var from string
	switch {
	case in.Kind == detector.KindOverload:
		from = "verdict " + in.VerdictText()
	case in.Kind == detector.KindService && in.Verdict != "":
		// The detector's verdict, with the figure behind it (live, a
		// spoofed flood's sources are mostly never read one by one).
		from = "verdict " + in.VerdictText() + topText(in)
	case in.Kind == detector.KindService && in.DistinctSources > 1:
		from = fmt.Sprintf("%s distinct sources, likely spoofed", group(uint64(in.DistinctSources))) + topText(in)
	case in.Kind == detector.KindService && len(in.TopSources) == 1:
		from = "source " + in.TopSources[0].Addr.String()
	case in.Kind == detector.KindService:
		from = "unknown sources"
	default:
		src := in.Addr
		if in.Source.IsValid() {
			src = in.Source.String()
		}
		from = "source " + src
	}
	rate := fmt.Sprintf("%s SYN/s (peak %s), %s half-open, %s SYN vs %s ACK so far",
		group(uint64(in.SYNPerSecond+0.5)), group(uint64(in.PeakSYNPerSecond+0.5)),
		percent(in.HalfOpenShare), group(in.SYN), group(in.ACK))
	if in.Dropped > 0 {
		// Banned: its SYN figures froze at the ban; the drops are live.
		rate += fmt.Sprintf("; %s dropped under its bans (%s/s now)",
			group(in.Dropped), group(uint64(in.DroppedPerSecond+0.5)))
	}
	headlineBy := from
	if i := strings.Index(headlineBy, " (top:"); i > 0 {
		headlineBy = headlineBy[:i]
	}
	stage := string(in.Stage)
	if e.Test {
		stage = "TEST message"
	}
	what := where
	if strings.HasPrefix(target, "service ") {
		what = where + ": " + strings.Split(target, " on ")[0]
	}
	event := "SYN flood"
	if in.Kind == detector.KindOverload {
		event, headlineBy = "overload (capacity, not an attack)", fmt.Sprintf("%s sources, %s of handshakes completing", group(uint64(in.DistinctSources)), percent(in.CompletionShare))
	}
	headline := fmt.Sprintf("[%s] %s %s on %s, %s SYN/s from %s",
		strings.ToUpper(string(in.Severity)), event, stage, what, group(uint64(in.SYNPerSecond+0.5)), headlineBy)
	if in.Stage == detector.StageResolved && !e.Test {
		dur := ""
		if in.ResolvedAt != nil && !in.OpenedAt.IsZero() {
			dur = " after " + in.ResolvedAt.Sub(in.OpenedAt).Round(time.Second).String()
		}
		headline = fmt.Sprintf("[RESOLVED] %s on %s ended%s: peak %s SYN/s from %s",
			event, what, dur, group(uint64(in.PeakSYNPerSecond+0.5)), headlineBy)
	}
	return view{
		Headline: headline,
		Target:   target,
		From:     from,
		Rate:     rate,
		Kernel:   kernelView(in.Kernel),
		Action:   actionView(e),
		Command:  e.command(),
	}
}

func kernelView(k detector.KernelImpact) string {
	dropped := max(k.ListenDrops, k.ListenOverflows) // ListenDrops includes overflows
	s := fmt.Sprintf("%s handshakes dropped (listen queue overflows %s, SYN queue full %s), syncookies sent %s, failed %s",
		group(dropped), group(k.ListenOverflows), group(k.ReqQFullDrop), group(k.SyncookiesSent), group(k.SyncookiesFail))
	if k.Summary != "" {
		s = k.Summary + " (" + s + ")"
	}
	return s
}

func banAction(e Event) string {
	in := e.Incident
	if in.Kind == detector.KindOverload {
		return "capacity, not an attack: nothing banned; what helps: a larger listen backlog (net.core.somaxconn, net.ipv4.tcp_max_syn_backlog, the server's listen()), more workers"
	}
	if e.Mode == ModeObserve {
		return "observe mode only: nothing blocked"
	}
	if len(in.Bans) == 0 {
		if e.Mode == ModeEnforce {
			return "enforce mode, no ban issued for this incident"
		}
		return "no ban issued"
	}
	var bans []string
	for _, b := range in.Bans[:min(3, len(in.Bans))] {
		s := fmt.Sprintf("banned %s until %s", prefixText(b.Prefix), b.Until.UTC().Format("2006-01-02 15:04:05 UTC"))
		if b.Offence > 1 {
			s += fmt.Sprintf(" (offence %d)", b.Offence)
		}
		bans = append(bans, s)
	}
	if n := len(in.Bans) - 3; n > 0 {
		bans = append(bans, fmt.Sprintf("and %d more bans", n))
	}
	return strings.Join(bans, "; ")
}

// topText is " (top: A n SYN/s, …)" for a service incident's three busiest
// sources, or "".
func topText(in detector.Incident) string {
	if len(in.TopSources) == 0 {
		return ""
	}
	var top []string
	for _, s := range in.TopSources[:min(3, len(in.TopSources))] {
		top = append(top, fmt.Sprintf("%s %s SYN/s", s.Addr, group(uint64(s.SYNPPS+0.5))))
	}
	return " (top: " + strings.Join(top, ", ") + ")"
}

func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// group formats n with thousands separators: 12400 -> "12,400".
func group(n uint64) string {
	s := strconv.FormatUint(n, 10)
	if len(s) <= 3 {
		return s
	}
	var b strings.Builder
	lead := len(s) % 3
	if lead > 0 {
		b.WriteString(s[:lead])
	}
	for i := lead; i < len(s); i += 3 {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}

// percent renders a 0..1 share as a whole percentage.
func percent(share float64) string {
	return strconv.FormatFloat(share*100, 'f', 0, 64) + "%"
}
