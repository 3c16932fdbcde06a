package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/detector"
)

// StateFile is the file in the state dir that keeps what the kernel does
// not: ban reasons and origins, allowlist origins, which incident stages
// were alerted, and the detector's escalation history.
const StateFile = "state.json"

// stateVersion is bumped when State changes incompatibly.
const stateVersion = 1

// BanMeta is what the state dir knows about a blocklist entry. The kernel
// remains the truth for whether the ban exists and when it expires.
type BanMeta struct {
	Origin     string    `json:"origin"`
	Reason     string    `json:"reason"`
	From       time.Time `json:"from"`
	Until      time.Time `json:"until"`
	Offence    int       `json:"offence,omitempty"`
	IncidentID string    `json:"incident_id,omitempty"`
	// seq is Daemon.banSeq when the record was written (not saved): Poll
	// keeps records newer than its read of the kernel blocklist.
	seq uint64
}

// AllowMeta is what the state dir knows about an allowlist entry.
type AllowMeta struct {
	Origin string    `json:"origin"`
	Added  time.Time `json:"added"`
}

// State is the persisted part of the daemon.
type State struct {
	Version int                        `json:"version"`
	SavedAt time.Time                  `json:"saved_at"`
	Bans    map[netip.Prefix]BanMeta   `json:"bans"`
	Allows  map[netip.Prefix]AllowMeta `json:"allows"`
	// Alerted is the last stage alerted per incident ID, so that a restart
	// never alerts the same stage twice.
	Alerted map[string]detector.Stage `json:"alerted"`
	// Incidents are the open and recently resolved incidents.
	Incidents []detector.Incident `json:"incidents"`
	// Detector is the detector's own state (escalation history, open
	// incidents), opaque to the daemon.
	Detector *detector.State `json:"detector,omitempty"`
}

func newState() State {
	return State{
		Version: stateVersion,
		Bans:    map[netip.Prefix]BanMeta{},
		Allows:  map[netip.Prefix]AllowMeta{},
		Alerted: map[string]detector.Stage{},
	}
}

// Store reads and writes State in a directory, atomically: a crash or
// kill -9 mid-write leaves the previous file intact.
type Store struct {
	Dir string
}

// Path is the state file's path.
func (s *Store) Path() string { return filepath.Join(s.Dir, StateFile) }

// Load returns the saved state, or an empty one when there is none yet.
func (s *Store) Load() (State, error) {
	st := newState()
	data, err := os.ReadFile(s.Path())
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read state %s: %w", s.Path(), err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return newState(), fmt.Errorf("decode state %s: %w", s.Path(), err)
	}
	if st.Version != stateVersion {
		return newState(), fmt.Errorf("state %s: version %d, this synguard reads version %d", s.Path(), st.Version, stateVersion)
	}
	if st.Bans == nil {
		st.Bans = map[netip.Prefix]BanMeta{}
	}
	if st.Allows == nil {
		st.Allows = map[netip.Prefix]AllowMeta{}
	}
	if st.Alerted == nil {
		st.Alerted = map[string]detector.Stage{}
	}
	return st, nil
}

// Save writes st with temp file + fsync + rename + directory fsync.
func (s *Store) Save(st State) error {
	if err := os.MkdirAll(s.Dir, 0o750); err != nil {
		return fmt.Errorf("state dir %s: %w", s.Dir, err)
	}
	st.Version = stateVersion
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, ".state-*.tmp")
	if err != nil {
		return fmt.Errorf("state dir %s: %w", s.Dir, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), s.Path()); err != nil {
		return fmt.Errorf("rename state into %s: %w", s.Path(), err)
	}
	dir, err := os.Open(s.Dir)
	if err != nil {
		return fmt.Errorf("open state dir %s: %w", s.Dir, err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("fsync state dir %s: %w", s.Dir, err)
	}
	return nil
}

// LockFile is held (flock) by the running daemon in the state dir, so that
// a second daemon on the same state refuses to start and the CLI can tell
// a hung daemon (lock held, socket silent) from a stopped one.
const LockFile = "synguard.lock"

// lockWait is how long Lock retries a held lock: Locked (the CLI) holds a
// shared lock for an instant, which must not make a daemon start fail.
const lockWait = time.Second

// Lock takes the state dir's lock, retrying for lockWait; the lock lasts
// until the returned file is closed or the process dies (kill -9 included).
func (s *Store) Lock() (*os.File, error) {
	if err := os.MkdirAll(s.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", s.Dir, err)
	}
	path := filepath.Join(s.Dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	deadline := time.Now().Add(lockWait)
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	for errors.Is(err, unix.EWOULDBLOCK) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: another synguard daemon uses state dir %s", path, s.Dir)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// Locked reports whether a daemon holds the state dir's lock.
func (s *Store) Locked() bool {
	f, err := os.Open(filepath.Join(s.Dir, LockFile))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
