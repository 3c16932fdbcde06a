package replay

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/synguard/synguard/detector"
)

// timeFormat is RFC 3339 with nanoseconds, fixed width, UTC.
const timeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// jsonTime marshals as timeFormat.
type jsonTime time.Time

func (t jsonTime) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Time(t).UTC().Format(timeFormat))
}

// JSONIncident is one incident in `synguard replay --json`. The field
// names are a contract with scripts: do not rename them.
type JSONIncident struct {
	ID         string    `json:"id"`
	Kind       string    `json:"kind"`
	Verdict    string    `json:"verdict"`
	Addr       string    `json:"addr"`
	OpenedAt   jsonTime  `json:"opened_at"`
	ResolvedAt *jsonTime `json:"resolved_at"`
	SYN        uint64    `json:"syn"`
	ACK        uint64    `json:"ack"`
	Reason     string    `json:"reason"`
}

// JSONBan is one ban in `synguard replay --json`.
type JSONBan struct {
	Prefix string   `json:"prefix"`
	From   jsonTime `json:"from"`
	Until  jsonTime `json:"until"`
}

// JSONReport is the whole `synguard replay --json` output.
type JSONReport struct {
	Packets   int            `json:"packets"`
	Incidents []JSONIncident `json:"incidents"`
	Bans      []JSONBan      `json:"bans"`
}

// JSON converts the report to the --json schema.
func (r *Report) JSON() JSONReport {
	out := JSONReport{Packets: r.Packets, Incidents: []JSONIncident{}, Bans: []JSONBan{}}
	for _, inc := range r.Incidents {
		j := JSONIncident{ID: inc.ID, Kind: string(inc.Kind), Verdict: string(inc.Verdict), Addr: inc.Addr, OpenedAt: jsonTime(inc.OpenedAt),
			SYN: inc.SYN, ACK: inc.ACK, Reason: inc.Reason}
		if inc.ResolvedAt != nil {
			t := jsonTime(*inc.ResolvedAt)
			j.ResolvedAt = &t
		}
		out.Incidents = append(out.Incidents, j)
	}
	for _, b := range r.Bans {
		out.Bans = append(out.Bans, JSONBan{Prefix: b.Prefix.String(), From: jsonTime(b.From), Until: jsonTime(b.Until)})
	}
	return out
}

// WriteJSON writes the --json output: one object and a newline.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r.JSON())
}

// WriteText writes the report for people: a summary line, a table of
// incidents with capture-relative times, a table of bans, and the reasons.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	rel := func(t time.Time) string { return fmt.Sprintf("+%.3fs", t.Sub(r.Start).Seconds()) }
	fmt.Fprintf(&b, "%s: %d packets", r.File, r.Packets)
	if r.Packets > 0 {
		fmt.Fprintf(&b, " from %s over %.3fs", r.Start.UTC().Format(timeFormat), r.End.Sub(r.Start).Seconds())
	}
	fmt.Fprintf(&b, "; %d incidents, %d bans, %d early-warning events\n", len(r.Incidents), len(r.Bans), r.Suspects)
	if len(r.Incidents) > 0 {
		b.WriteString("\nINCIDENTS\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tVERDICT\tADDR\tOPENED\tRESOLVED\tSYN\tACK\tDROPPED\tPEAK SYN/S\tHALF-OPEN\tSOURCES")
		for _, inc := range r.Incidents {
			resolved := "open at end"
			if inc.ResolvedAt != nil {
				resolved = rel(*inc.ResolvedAt)
			}
			sources := "-"
			if inc.Kind == detector.KindService || inc.Kind == detector.KindOverload {
				sources = fmt.Sprint(inc.DistinctSources)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%.0f\t%.0f%%\t%s\n", inc.ID, inc.Kind, inc.Verdict, inc.Addr, rel(inc.OpenedAt), resolved,
				inc.SYN, inc.ACK, inc.Dropped, inc.PeakSYNPerSecond, inc.HalfOpenShare*100, sources)
		}
		tw.Flush()
	}
	if len(r.Bans) > 0 {
		b.WriteString("\nBANS\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PREFIX\tFROM\tUNTIL\tOFFENCE\tINCIDENT")
		for _, bn := range r.Bans {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", bn.Prefix, rel(bn.From), rel(bn.Until), bn.Offence, bn.IncidentID)
		}
		tw.Flush()
	}
	if len(r.Incidents) > 0 {
		b.WriteString("\nWHY\n")
		for _, inc := range r.Incidents {
			fmt.Fprintf(&b, "%s: %s\n  verdict: %s\n", inc.ID, inc.Reason, inc.VerdictText())
			if inc.Kind == detector.KindService && len(inc.TopSources) > 0 {
				var top []string
				for _, s := range inc.TopSources {
					top = append(top, fmt.Sprintf("%s (%d SYN)", s.Addr, s.SYN))
				}
				fmt.Fprintf(&b, "  top sources: %s\n", strings.Join(top, ", "))
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
