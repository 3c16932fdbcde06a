package alert

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/synguard/synguard/detector"
)

// batch is what one message covers: the latest event of each incident that
// changed since the last message, most important first.
type batch struct {
	events []Event
	now    time.Time
}

// format turns batches into a sink's wire format.
type format interface {
	// build returns the requests for a batch and a commit function to call
	// once all of them were delivered (sinks with state update it there).
	build(b batch) (reqs []request, commit func())
	// resend returns requests that refresh still-firing alerts, or nil.
	resend(now time.Time) []request
}

// sortEvents puts open incidents before resolved ones, then by severity,
// then by SYN rate, so a truncated list keeps what matters.
func sortEvents(evs []Event) {
	slices.SortFunc(evs, func(a, b Event) int {
		ar, br := a.Incident.Stage == detector.StageResolved, b.Incident.Stage == detector.StageResolved
		if ar != br {
			if ar {
				return 1
			}
			return -1
		}
		if c := cmp.Compare(severityRank(b.Incident.Severity), severityRank(a.Incident.Severity)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Incident.SYNPerSecond, a.Incident.SYNPerSecond); c != 0 {
			return c
		}
		return cmp.Compare(a.Incident.ID, b.Incident.ID)
	})
}

// stageCounts counts a batch's events per stage.
func stageCounts(evs []Event) map[string]int {
	c := map[string]int{}
	for _, e := range evs {
		c[string(e.Incident.Stage)]++
	}
	return c
}

// digestHeadline summarises a batch of several incidents in one line.
func digestHeadline(evs []Event) string {
	if len(evs) == 1 {
		return describe(evs[0]).Headline
	}
	c := stageCounts(evs)
	var parts []string
	for _, st := range []detector.Stage{detector.StageOpened, detector.StageUpdated, detector.StageResolved} {
		if n := c[string(st)]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", group(uint64(n)), st))
		}
	}
	top := evs[0]
	sev := strings.ToUpper(string(top.Incident.Severity))
	if top.Incident.Stage == detector.StageResolved {
		sev = "RESOLVED"
	}
	return fmt.Sprintf("[%s] %s SYN-flood incidents on %s (%s); worst: %s",
		sev, group(uint64(len(evs))), hostOf(evs), strings.Join(parts, ", "), describe(top).Headline)
}

func hostOf(evs []Event) string {
	for _, e := range evs {
		if e.Host != "" {
			return e.Host
		}
	}
	return "unknown host"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// actionView is what synguard did: bans (banAction), then service
// protection when the daemon reports it.
func actionView(e Event) string {
	return banAction(e) + protectionText(e.Incident.Protection)
}

// protectionText describes a service incident's protection with its
// figures, e.g. "; service protection ON since 12:00:05 UTC (XDP SYN
// cookies + nftables SYNPROXY, budget 200 SYN/s): 12,345 cookies sent,
// 120 validated, ...".
func protectionText(p *detector.Protection) string {
	if p == nil {
		return ""
	}
	how := "XDP budget, kernel SYN cookies"
	if p.Cookies {
		how = "XDP SYN cookies + nftables SYNPROXY"
	}
	budget := "no budget limit"
	if p.Budget > 0 {
		budget = "budget " + group(uint64(p.Budget)) + " SYN/s"
	}
	figures := fmt.Sprintf("%s cookies sent, %s validated, %s verified SYNs passed, %s admitted, %s dropped, %s verified sources",
		group(p.CookiesSent), group(p.CookiesValidated), group(p.Verified), group(p.Admitted), group(p.Dropped), group(uint64(p.VerifiedSources)))
	at := func(t *time.Time) string { return t.UTC().Format("15:04:05 UTC") }
	switch p.State {
	case detector.ProtectionOn:
		since := ""
		if p.Since != nil {
			since = " since " + at(p.Since)
		}
		return fmt.Sprintf("; service protection ON%s (%s, %s): %s", since, how, budget, figures)
	case detector.ProtectionOff:
		if p.Since == nil {
			if p.Reason != "" {
				return "; service protection off: " + p.Reason
			}
			return "; service protection off"
		}
		span := at(p.Since)
		if p.Until != nil {
			span += " to " + at(p.Until)
		}
		return fmt.Sprintf("; service protection OFF again (was on %s, %s, %s): %s", span, how, budget, figures)
	case detector.ProtectionWouldProtect:
		return "; service protection would be ON in enforce mode"
	case detector.ProtectionFailed:
		return "; service protection FAILED: " + p.Reason
	case detector.ProtectionHeldOff:
		return "; service protection held off by an operator (" + p.Reason + ")"
	}
	return "; service protection " + p.State
}
