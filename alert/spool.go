package alert

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// spoolEntry is one line of a spool segment: an event and the sequence
// number it was persisted under. Incident.Source and .Service are not in the
// incident's JSON, so they are carried alongside.
type spoolEntry struct {
	Seq     uint64         `json:"seq"`
	Event   Event          `json:"event"`
	Source  netip.Addr     `json:"source,omitzero"`
	Service netip.AddrPort `json:"service,omitzero"`
}

func (e spoolEntry) event() Event {
	ev := e.Event
	ev.Incident.Source, ev.Incident.Service = e.Source, e.Service
	return ev
}

// segment is one spool file, named by the highest sequence number in it.
type segment struct {
	seq  uint64
	size int64
}

// spool is one sink's durable queue of undelivered events: a directory of
// JSON-lines segment files, each written to a temporary name, fsync'd,
// renamed into place and the directory fsync'd, so a crash leaves either
// the whole segment or none of it.
type spool struct {
	dir   string
	segs  []segment // ascending seq
	bytes int64
}

const segSuffix = ".jsonl"

func segName(seq uint64) string { return fmt.Sprintf("%020d%s", seq, segSuffix) }

// openSpool creates dir if needed and returns the entries of every intact
// segment in order. Unreadable segments are renamed *.corrupt and reported
// in bad, never silently deleted.
func openSpool(dir string) (s *spool, entries []spoolEntry, bad []string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, fmt.Errorf("create spool %s: %w", dir, err)
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read spool %s: %w", dir, err)
	}
	s = &spool{dir: dir}
	for _, de := range names {
		name := de.Name()
		if strings.HasPrefix(name, ".tmp-") {
			os.Remove(filepath.Join(dir, name)) // an interrupted write
			continue
		}
		seqStr, ok := strings.CutSuffix(name, segSuffix)
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(seqStr, 10, 64)
		if err != nil {
			continue
		}
		path := filepath.Join(dir, name)
		data, err := os.ReadFile(path)
		if err == nil {
			var es []spoolEntry
			es, err = decodeSegment(data)
			if err == nil {
				entries = append(entries, es...)
				s.segs = append(s.segs, segment{seq: seq, size: int64(len(data))})
				s.bytes += int64(len(data))
				continue
			}
		}
		bad = append(bad, fmt.Sprintf("%s: %v", path, err))
		os.Rename(path, path+".corrupt")
	}
	slices.SortFunc(s.segs, func(a, b segment) int { return cmp.Compare(a.seq, b.seq) })
	slices.SortStableFunc(entries, func(a, b spoolEntry) int { return cmp.Compare(a.Seq, b.Seq) })
	return s, entries, bad, nil
}

func decodeSegment(data []byte) ([]spoolEntry, error) {
	var out []spoolEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var e spoolEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("decode entry: %w", err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// encode renders entries as JSON lines.
func encodeEntries(entries []spoolEntry) []byte {
	var b bytes.Buffer
	for _, e := range entries {
		line, _ := json.Marshal(e)
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// write durably stores entries as segment seq.
func (s *spool) write(seq uint64, data []byte) error {
	tmp, err := os.CreateTemp(s.dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("spool %s: %w", s.dir, err)
	}
	_, werr := tmp.Write(data)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := firstErr(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("spool write %s: %w", tmp.Name(), err)
	}
	final := filepath.Join(s.dir, segName(seq))
	if err := os.Rename(tmp.Name(), final); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("spool %s: %w", final, err)
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	s.segs = append(s.segs, segment{seq: seq, size: int64(len(data))})
	s.bytes += int64(len(data))
	return nil
}

// removeThrough deletes the segments whose seq is <= seq.
func (s *spool) removeThrough(seq uint64) error {
	var errs []error
	keep := s.segs[:0]
	for _, g := range s.segs {
		if g.seq > seq {
			keep = append(keep, g)
			continue
		}
		if err := os.Remove(filepath.Join(s.dir, segName(g.seq))); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
			keep = append(keep, g)
			continue
		}
		s.bytes -= g.size
	}
	s.segs = keep
	if err := firstErr(errs...); err != nil {
		return fmt.Errorf("spool remove: %w", err)
	}
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("spool sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("spool sync %s: %w", dir, err)
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
