package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/frame"
	"github.com/synguard/synguard/internal/testbed"
)

// sender writes spoofed-source SYN frames on a namespace's interface with
// an AF_PACKET socket at a paced rate: every frame gets a fresh random
// IPv4 source, like a random-source flood tool's, with valid checksums so
// the server's stack treats it as a real SYN.
type sender struct {
	fd   int
	tmpl []byte
	rng  uint64
	skip netip.Prefix // never use the bed's own subnet as a source
}

// IPv4 frame offsets (Ethernet, no VLAN, 20-byte IP header).
const (
	offIPCsum  = 14 + 10
	offIPSrc   = 14 + 12
	offTCPCsum = 14 + 20 + 16
)

func newSender(from *testbed.NS, to *testbed.NS, port uint16, skip netip.Prefix) (*sender, error) {
	tmpl := frame.TCP{
		Src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, 1}), 40000),
		Dst:     netip.AddrPortFrom(to.Addr4, port),
		Flags:   frame.FlagSYN,
		Options: true,
		SrcMAC:  from.MAC,
		DstMAC:  to.MAC,
	}.Build()
	s := &sender{tmpl: tmpl, rng: uint64(time.Now().UnixNano()) | 1, skip: skip}
	err := from.Do(func() (err error) {
		s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0) // send only
		if err != nil {
			return err
		}
		return unix.Bind(s.fd, &unix.SockaddrLinklayer{Ifindex: from.Index})
	})
	if err != nil {
		if s.fd > 0 {
			unix.Close(s.fd)
		}
		return nil, fmt.Errorf("af_packet socket on %s: %w", from.Iface, err)
	}
	return s, nil
}

func (s *sender) Close() { unix.Close(s.fd) }

// next is xorshift64*: fast, and plenty random for source addresses.
func (s *sender) next() uint64 {
	s.rng ^= s.rng >> 12
	s.rng ^= s.rng << 25
	s.rng ^= s.rng >> 27
	return s.rng * 2685821657736338717
}

// randomSource picks a unicast address outside 0/8, 127/8, 224/3 and the
// bed's subnet.
func (s *sender) randomSource() [4]byte {
	for {
		v := uint32(s.next() >> 32)
		a := [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
		if a[0] == 0 || a[0] == 127 || a[0] >= 224 || s.skip.Contains(netip.AddrFrom4(a)) {
			continue
		}
		return a
	}
}

// setSource rewrites the source address in f and updates both checksums
// incrementally (RFC 1624: HC' = ~(~HC + ~m + m')).
func setSource(f []byte, src [4]byte) {
	old := [2]uint16{binary.BigEndian.Uint16(f[offIPSrc:]), binary.BigEndian.Uint16(f[offIPSrc+2:])}
	neu := [2]uint16{uint16(src[0])<<8 | uint16(src[1]), uint16(src[2])<<8 | uint16(src[3])}
	copy(f[offIPSrc:], src[:])
	for _, off := range []int{offIPCsum, offTCPCsum} {
		sum := uint32(^binary.BigEndian.Uint16(f[off:]))
		for i := range old {
			sum += uint32(^old[i]) + uint32(neu[i])
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		binary.BigEndian.PutUint16(f[off:], ^uint16(sum))
	}
}

// flood sends count frames at rate frames/s (0: as fast as possible), or
// until ctx ends, and returns how many it sent and how long that took.
func (s *sender) flood(ctx context.Context, count int, rate float64) (int, time.Duration, error) {
	runtime.LockOSThread() // keeps the pacing loop on one thread
	defer runtime.UnlockOSThread()
	f := append([]byte(nil), s.tmpl...)
	start := time.Now()
	const batch = 64
	sent := 0
	for sent < count {
		if ctx.Err() != nil {
			break
		}
		if rate > 0 {
			due := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		for i := 0; i < batch && sent < count; {
			setSource(f, s.randomSource())
			if _, err := unix.Write(s.fd, f); err != nil {
				if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
					runtime.Gosched()
					continue
				}
				return sent, time.Since(start), fmt.Errorf("send frame %d: %w", sent, err)
			}
			sent++
			i++
		}
	}
	return sent, time.Since(start), nil
}
