package alert

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

func TestDescribe(t *testing.T) {
	res := event(sourceIncident("r", detector.StageResolved, detector.SeverityWarning), ModeEnforce)
	if got, want := describe(res).Headline, "[RESOLVED] SYN flood on web-1 (eth0) ended after 4m12s: peak 15,020 SYN/s from source 198.51.100.7"; got != want {
		t.Errorf("resolved headline\n got %q\nwant %q", got, want)
	}
	obs := event(sourceIncident("o", detector.StageOpened, detector.SeverityWarning), ModeObserve)
	if got := describe(obs).Action; got != "observe mode only: nothing blocked" {
		t.Errorf("observe action %q", got)
	}
	in := sourceIncident("m", detector.StageOpened, detector.SeverityWarning)
	for i := range 4 {
		in.Bans = append(in.Bans, detector.Ban{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Until: t0.Add(time.Duration(i) * time.Minute), Offence: 1})
	}
	got := describe(event(in, ModeEnforce)).Action
	if !strings.HasPrefix(got, "banned 198.51.100.7 until 2026-11-28 21:10:00 UTC (offence 2); banned 203.0.113.0/24 until 2026-11-28 21:00:00 UTC;") ||
		!strings.HasSuffix(got, "and 2 more bans") {
		t.Errorf("many bans: %q", got)
	}
	ev := event(serviceIncident("c", detector.StageOpened, detector.SeverityCritical), ModeEnforce)
	ev.Command = "synguard top --service 192.0.2.10:443"
	if got := describe(ev).Command; got != ev.Command {
		t.Errorf("command override %q", got)
	}
	for n, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", 12345678901: "12,345,678,901"} {
		if got := group(n); got != want {
			t.Errorf("group(%d) = %q", n, got)
		}
	}
}

// A banned source's SYN figures freeze at the ban; the rate line then also
// says how much its bans drop, so on-call can tell it is still flooding.
func TestRateOfABannedSource(t *testing.T) {
	in := sourceIncident("inc-3", detector.StageUpdated, detector.SeverityWarning)
	want := "12,400 SYN/s (peak 15,020), 97% half-open, 372,000 SYN vs 12 ACK so far"
	if got := describe(event(in, ModeEnforce)).Rate; got != want {
		t.Errorf("rate before drops = %q\nwant %q", got, want)
	}
	in.Dropped, in.DroppedPerSecond = 2_400_000, 47_999.6
	want += "; 2,400,000 dropped under its bans (48,000/s now)"
	if got := describe(event(in, ModeEnforce)).Rate; got != want {
		t.Errorf("rate while banned = %q\nwant %q", got, want)
	}
}

// An overload says plainly that it is a capacity problem, that nothing was
// banned, and what helps; its verdict and figures are in the text, in
// every mode.
func TestOverloadSaysCapacityNotAttack(t *testing.T) {
	in := serviceIncident("ovl", detector.StageOpened, detector.SeverityCritical)
	in.Kind, in.Verdict = detector.KindOverload, detector.VerdictOverload
	in.DistinctSources, in.NewSources, in.CompletionShare = 600, 580, 0.97
	in.Bans = nil
	for _, mode := range []string{ModeEnforce, ModeObserve} {
		v := describe(event(in, mode))
		text := v.Text()
		for _, want := range []string{"overload (capacity, not an attack) opened", "600 sources (580 new) complete 97% of their handshakes",
			"capacity, not an attack: nothing banned", "larger listen backlog", "more workers", "Look closer: synguard top"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s: alert text lacks %q:\n%s", mode, want, text)
			}
		}
		if strings.Contains(text, "SYN flood") {
			t.Errorf("%s: an overload is called a SYN flood:\n%s", mode, text)
		}
	}
}

// Live, a spoofed flood's sources are mostly never read one by one: its
// alert still states the verdict with the figure behind it.
func TestLiveSpoofedAlertStatesVerdict(t *testing.T) {
	in := serviceIncident("spf", detector.StageOpened, detector.SeverityCritical)
	in.Verdict, in.DistinctSources, in.TopSources, in.UntrackedSYNShare = detector.VerdictSpoofed, 0, nil, 0.99
	if from := describe(event(in, ModeEnforce)).From; !strings.Contains(from, "verdict spoofed: 99% of the flood's SYNs came from sources that each sent too few SYNs to be tracked") {
		t.Errorf("From: %q, want the verdict and its figure", from)
	}
}
