package alert

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// slackMaxListed bounds incidents shown per Slack message (Slack allows 50
// blocks; on-call reads the first few).
const slackMaxListed = 10

// slackMessage is an incoming-webhook body: text is the notification and
// fallback, blocks the readable layout.
type slackMessage struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks"`
}

type slackBlock struct {
	Type     string      `json:"type"`
	Text     *slackText  `json:"text,omitempty"`
	Elements []slackText `json:"elements,omitempty"`
}

type slackText struct {
	Type string `json:"type"` // plain_text or mrkdwn
	Text string `json:"text"`
}

type slackFormat struct{ url string }

// slackEscape escapes the three characters Slack's mrkdwn treats as markup.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

func (f *slackFormat) build(b batch) ([]request, func()) {
	head := digestHeadline(b.events)
	m := slackMessage{Text: head}
	m.Blocks = append(m.Blocks, slackBlock{Type: "header", Text: &slackText{Type: "plain_text", Text: truncate(headerOf(b.events), 150)}})
	for i, e := range b.events {
		if i == slackMaxListed {
			break
		}
		v := describe(e)
		var t strings.Builder
		fmt.Fprintf(&t, "*%s*\n", slackEscape(v.Headline))
		for _, l := range [][2]string{{"Target", v.Target}, {"From", v.From}, {"Rate", v.Rate}, {"Kernel", v.Kernel}, {"Action", v.Action}} {
			fmt.Fprintf(&t, "*%s:* %s\n", l[0], slackEscape(l[1]))
		}
		fmt.Fprintf(&t, "*Look closer:* `%s`", slackEscape(v.Command))
		m.Blocks = append(m.Blocks, slackBlock{Type: "section", Text: &slackText{Type: "mrkdwn", Text: truncate(t.String(), 3000)}})
	}
	if n := len(b.events) - slackMaxListed; n > 0 {
		m.Blocks = append(m.Blocks, slackBlock{Type: "context", Elements: []slackText{{Type: "mrkdwn",
			Text: fmt.Sprintf("…and %s more incidents in this message (`synguard list incidents` shows them all)", group(uint64(n)))}}})
	}
	body, _ := json.Marshal(m)
	return []request{{URL: f.url, Body: body}}, nil
}

// headerOf is the short header line: the single headline, or the count.
func headerOf(evs []Event) string {
	if len(evs) == 1 {
		return describe(evs[0]).Headline
	}
	return fmt.Sprintf("%s SYN-flood incidents on %s", group(uint64(len(evs))), hostOf(evs))
}

func (f *slackFormat) resend(time.Time) []request { return nil }
