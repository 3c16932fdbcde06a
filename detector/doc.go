// Package detector turns counter snapshots into decisions: incidents (why a
// source or a service looks flooded, with figures and thresholds) and bans.
//
// It is pure Go and knows nothing of BPF. Every input carries an explicit
// timestamp and nothing reads the clock, so the same input gives the same
// incidents, whether it comes from the live data plane or from a capture
// replayed in capture time.
//
// # The snapshot contract
//
// Counters are cumulative, as the kernel keeps them. Per source, a counter
// that goes down means the LRU entry was evicted and re-created; the new
// value is then taken as the count since re-creation.
//
// A snapshot need not list every source. During a random-source flood the
// daemon cannot read a million entries every second, so it sends the
// sources that moved (suspects from the ring buffer, sources it already
// watches) plus a periodic full scan. A source missing from a snapshot means
// "no new data", never "reset": its next appearance is compared with its
// last one, and the rate is the SYNs in between over the time in between.
// A source that first appears in a snapshot is taken to be new since the
// previous snapshot, unless SourceCounters.FirstSeen says otherwise (pass
// it: the kernel entry knows). A snapshot that lists every source that
// moved (a full scan, or replay) should say so with Snapshot.Complete:
// then a source's absence means it sent nothing, its rate decays, and an
// early warning about a source the snapshot did not list is dated after
// it. The first snapshot after New or Restore is a baseline:
// it sets the counters and flags nothing, because cumulative counts of
// unknown age carry no rate.
//
// Consequences for the caller: a full scan should come more often than
// Config.BanGrace, otherwise a source that keeps sending below the suspect
// threshold looks quiet to its ban's renewal. (A source incident resolves
// only on evidence, a reading or a complete snapshot after its last flag,
// so sparse scans delay its resolution but do not close it early.) An early
// warning's run of SYNs is rated only when something bounds its age: the
// source's previous reading, a complete snapshot, or a first-seen time
// after the detector started. While a prefix is banned
// the data plane drops its packets before counting them; Snapshot.Bans
// passes the per-ban drop counters, which is how the detector knows a
// banned source keeps sending.
//
// # Detection
//
// A source is flagged when its smoothed SYN rate (EWMA, time constant
// Config.Window) is at least Config.SourceSYNRate and its smoothed half-open
// share, 1 - ACK/SYN, is at least Config.SourceHalfOpen. The ACK counter
// counts every packet with ACK set (not only handshake-completing ones), so
// legitimate clients, NAT gateways and downloads show far more ACKs than
// SYNs. Suspect events from the ring buffer flag a source within
// milliseconds when the detector has no fresh figures for it and the run of
// SYNs without an ACK, spread over the time since the source was last read
// (or since the last complete snapshot), reaches the per-source SYN rate; a
// source with fresh figures is judged on them, so a slow flood below the
// bar stays unflagged however long its run.
//
// A service (local address:port) is flagged when its SYN rate departs from
// a slowly learned baseline (one-sided CUSUM over standard deviations of the
// baseline) and the extra SYNs are mostly not matched by extra ACKs, even if
// no single source crosses the per-source bar. Until the baseline has
// learned from a fifth of Config.ServiceBaseline of normal traffic, the
// floors Config.ServiceSYNRate and Config.ServiceHalfOpen alone decide, so
// a service flooded from its first second is flagged at once; a flood is
// never learned as a baseline. Sources are attributed to a
// service incident by time, not by destination: the data plane's per-source
// entries do not record where a SYN went. For the same reason the SYNs of
// individually flagged sources are subtracted from every service's rate, so
// that a single-source flood opens one incident, not two.
//
// # Decisions
//
// Every incident has a verdict: single-source for a source incident;
// spoofed or distributed for a service flood (most of the read sources
// sent one SYN, or most of the flood's SYNs came from sources never read
// one by one); overload for a busy service whose clients complete their
// handshakes while the kernel drops handshakes, which is a capacity
// problem: nothing is banned or protected for it.
//
// In enforce mode a flagged source is banned unless it is protected (see
// Options.Protected). Ban length escalates per repeat offence, bans are
// renewed while the prefix keeps sending and lifted only after it has been
// quiet for Config.BanGrace. While a service incident is open, a source
// that sends half-open SYNs through it for Config.ServiceBanAfter, at
// Config.ServiceBanSYNRate on average, without completing a handshake is
// banned too (a slow botnet below the per-source bar). Many flagged or
// banned sources in one /24 or /64 become one prefix ban; the number of
// bans is capped. Memory is bounded by
// Config.MaxSources, Config.MaxServices, Config.MaxIncidents and
// Config.MaxBans.
package detector
