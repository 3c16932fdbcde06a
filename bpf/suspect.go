package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// suspectEventSize is sizeof(struct suspect_event) in synguard.c:
// addr[16], syns u32, pad u32, time u64 (kernel ns).
const suspectEventSize = 32

// SuspectReader reads suspect events (early warnings) from the kernel's
// ring buffer. One reader per Datapath: events are consumed, not copied.
type SuspectReader struct {
	r *ringbuf.Reader
}

// Suspects opens the suspect event stream.
func (d *Datapath) Suspects() (*SuspectReader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("open suspect events: datapath is closed")
	}
	if d.objs.Suspects == nil {
		return nil, errors.New("open suspect events: only the process that loaded the program (Load) receives them")
	}
	r, err := ringbuf.NewReader(d.objs.Suspects)
	if err != nil {
		return nil, fmt.Errorf("open suspect events: %w", err)
	}
	return &SuspectReader{r: r}, nil
}

// ErrClosed is returned by Read after Close.
var ErrClosed = ringbuf.ErrClosed

// Read blocks until the next event, the deadline set with SetDeadline
// (os.ErrDeadlineExceeded), or Close (ErrClosed).
func (s *SuspectReader) Read() (Suspect, error) {
	rec, err := s.r.Read()
	if err != nil {
		return Suspect{}, fmt.Errorf("read suspect event: %w", err)
	}
	return decodeSuspect(rec.RawSample)
}

func decodeSuspect(b []byte) (Suspect, error) {
	if len(b) < suspectEventSize {
		return Suspect{}, fmt.Errorf("read suspect event: %d bytes, want %d", len(b), suspectEventSize)
	}
	return Suspect{
		Addr: addrOf([16]byte(b[:16])),
		SYNs: binary.NativeEndian.Uint32(b[16:20]),
		Time: kernelToWall(binary.NativeEndian.Uint64(b[24:32])),
	}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t (zero: no
// deadline), so a caller can poll or shut down cleanly.
func (s *SuspectReader) SetDeadline(t time.Time) { s.r.SetDeadline(t) }

// Close unblocks a pending Read and releases the reader.
func (s *SuspectReader) Close() error { return s.r.Close() }
