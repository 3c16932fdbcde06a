// Package kstat reads the server TCP stack's own evidence of a SYN flood:
// the counters of /proc/net/netstat and /proc/net/snmp (listen queue
// overflows and drops, SYN cookies) and, through sock_diag, the accept
// queue of every listening socket. The detector puts these figures into
// its incidents, so that an alert says what the kernel itself dropped.
package kstat

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/synguard/synguard/detector"
)

// Reader reads the counters of one network namespace.
type Reader struct {
	// Proc is the directory holding net/netstat and net/snmp: "/proc" for
	// the namespace of the process's init thread, "/proc/thread-self" for
	// the calling thread's (tests and daemons that setns), or a fixture
	// directory.
	Proc string
}

// Host reads the counters of the process's network namespace.
func Host() Reader { return Reader{Proc: "/proc"} }

// ThreadSelf reads the counters of the calling thread's network namespace;
// the caller must keep the goroutine locked to that thread.
func ThreadSelf() Reader { return Reader{Proc: "/proc/thread-self"} }

// Counters reads the TCP counters (without listeners).
func (r Reader) Counters() (detector.KernelCounters, error) {
	var k detector.KernelCounters
	ext, err := r.table("net/netstat")
	if err != nil {
		return k, err
	}
	snmp, err := r.table("net/snmp")
	if err != nil {
		return k, err
	}
	tcpExt, tcp := ext["TcpExt"], snmp["Tcp"]
	if tcpExt == nil {
		return k, fmt.Errorf("read %s: no TcpExt section", filepath.Join(r.Proc, "net/netstat"))
	}
	// Fields missing on an older kernel stay zero: the evidence is then
	// incomplete, not wrong.
	k.ListenOverflows = tcpExt["ListenOverflows"]
	k.ListenDrops = tcpExt["ListenDrops"]
	k.ReqQFullDrop = tcpExt["TCPReqQFullDrop"]
	k.SyncookiesSent = tcpExt["SyncookiesSent"]
	k.SyncookiesRecv = tcpExt["SyncookiesRecv"]
	k.SyncookiesFailed = tcpExt["SyncookiesFailed"]
	k.PassiveOpens = tcp["PassiveOpens"]
	return k, nil
}

// Read returns the TCP counters and the listeners' accept queues. The
// listeners come from sock_diag in the calling thread's namespace.
func (r Reader) Read() (detector.KernelCounters, error) {
	k, err := r.Counters()
	if err != nil {
		return k, err
	}
	k.Listeners, err = Listeners()
	return k, err
}

func (r Reader) table(name string) (map[string]map[string]uint64, error) {
	path := filepath.Join(r.Proc, name)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read kernel counters: %w", err)
	}
	defer f.Close()
	t, err := ParseTable(f)
	if err != nil {
		return nil, fmt.Errorf("read kernel counters %s: %w", path, err)
	}
	return t, nil
}

// ParseTable parses the /proc/net/netstat and /proc/net/snmp format: pairs
// of lines "Section: name name ..." and "Section: value value ...".
// Negative values (Tcp: MaxConn is -1) are skipped.
func ParseTable(rd io.Reader) (map[string]map[string]uint64, error) {
	t := make(map[string]map[string]uint64)
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		names := strings.Fields(sc.Text())
		if len(names) == 0 {
			continue
		}
		if !sc.Scan() {
			return nil, fmt.Errorf("line %d: section %s has names but no values", line, names[0])
		}
		line++
		values := strings.Fields(sc.Text())
		if len(values) == 0 || values[0] != names[0] || len(values) != len(names) {
			return nil, fmt.Errorf("line %d: section %s: %d values for %d names", line, names[0], len(values)-1, len(names)-1)
		}
		sec := strings.TrimSuffix(names[0], ":")
		m := t[sec]
		if m == nil {
			m = make(map[string]uint64, len(names))
			t[sec] = m
		}
		for i := 1; i < len(names); i++ {
			if strings.HasPrefix(values[i], "-") {
				continue
			}
			v, err := strconv.ParseUint(values[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %s %s: %w", line, sec, names[i], err)
			}
			m[names[i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t) == 0 {
		return nil, errors.New("no sections")
	}
	return t, nil
}
