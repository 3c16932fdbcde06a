package alert

import (
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/detector"
)

// A service incident's message says whether service protection is on and
// what it did, in every stage.
func TestMessageMentionsProtection(t *testing.T) {
	since := time.Date(2026, 11, 28, 12, 0, 5, 0, time.UTC)
	until := since.Add(3 * time.Minute)
	base := detector.Incident{ID: "svc-1", Kind: detector.KindService, Stage: detector.StageUpdated, Severity: detector.SeverityCritical,
		Addr: "192.0.2.10:443", SYNPerSecond: 90000, DistinctSources: 50000}
	for _, tc := range []struct {
		name string
		mode string
		p    *detector.Protection
		want []string
	}{
		{"on", ModeEnforce, &detector.Protection{State: detector.ProtectionOn, Cookies: true, Budget: 200, Since: &since,
			CookiesSent: 1234567, CookiesValidated: 89, Verified: 1000, Admitted: 3, Dropped: 4, VerifiedSources: 12},
			[]string{"service protection ON since 12:00:05 UTC", "XDP SYN cookies + nftables SYNPROXY", "budget 200 SYN/s",
				"1,234,567 cookies sent", "89 validated", "1,000 verified SYNs passed", "3 admitted", "4 dropped", "12 verified sources"}},
		{"off", ModeEnforce, &detector.Protection{State: detector.ProtectionOff, Since: &since, Until: &until, CookiesSent: 5},
			[]string{"service protection OFF again (was on 12:00:05 UTC to 12:03:05 UTC", "XDP budget, kernel SYN cookies", "no budget limit", "5 cookies sent"}},
		{"observe", ModeObserve, &detector.Protection{State: detector.ProtectionWouldProtect},
			[]string{"observe mode only: nothing blocked; service protection would be ON in enforce mode"}},
		{"failed", ModeEnforce, &detector.Protection{State: detector.ProtectionFailed, Reason: "nft: no such file"},
			[]string{"service protection FAILED: nft: no such file"}},
		{"none", ModeEnforce, nil, []string{"Action: enforce mode, no ban issued for this incident\n"}},
	} {
		in := base
		in.Protection = tc.p
		text := describe(Event{Incident: in, Host: "web-1", Mode: tc.mode}).Text()
		for _, w := range tc.want {
			if !strings.Contains(text, w) {
				t.Errorf("%s: message lacks %q:\n%s", tc.name, w, text)
			}
		}
	}
}
