package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
)

// Attach attaches the program to iface and returns the mode actually used:
// native (driver) or generic; auto tries native first and falls back to
// generic. With a PinDir the link is pinned, so the program stays attached
// after the process exits. Attaching again to the same interface is a no-op
// returning the current mode; a different interface or an explicitly
// different mode needs Detach first.
//
// The interface is resolved in the calling thread's network namespace.
func (d *Datapath) Attach(iface string, m AttachMode) (AttachMode, error) {
	mode, err := ParseAttachMode(string(m))
	if err != nil {
		return "", fmt.Errorf("attach xdp to %s: %w", iface, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return "", fmt.Errorf("attach xdp to %s: datapath is closed", iface)
	}
	if d.objs.SynguardXdp == nil {
		return "", fmt.Errorf("attach xdp to %s: this datapath came from Open and has no program: use Load", iface)
	}
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return "", fmt.Errorf("attach xdp to %s: %w", iface, err)
	}
	if d.lnk != nil {
		if d.iface == iface && (mode == AttachAuto || mode == d.mode) {
			return d.mode, nil
		}
		return "", fmt.Errorf("attach xdp to %s (%s mode): already attached to %s in %s mode; detach first",
			iface, mode, d.iface, d.mode)
	}

	var (
		l    link.Link
		used AttachMode
	)
	switch mode {
	case AttachNative, AttachGeneric:
		l, err = d.attachXDP(ifc.Index, mode)
		used = mode
		if err != nil {
			return "", fmt.Errorf("attach xdp to %s in %s mode: %w", iface, mode, err)
		}
	default:
		used = AttachNative
		l, err = d.attachXDP(ifc.Index, AttachNative)
		if err != nil {
			var gerr error
			used = AttachGeneric
			l, gerr = d.attachXDP(ifc.Index, AttachGeneric)
			if gerr != nil {
				return "", fmt.Errorf("attach xdp to %s: native: %v; generic: %w", iface, err, gerr)
			}
		}
	}

	if d.opts.PinDir != "" {
		path := filepath.Join(d.opts.PinDir, linkPinName)
		if err := l.Pin(path); err != nil {
			l.Close()
			return "", fmt.Errorf("attach xdp to %s: pin link %s: %w", iface, path, err)
		}
	}
	code := attachedNative
	if used == AttachGeneric {
		code = attachedGeneric
	}
	if err := d.objs.Config.Put(configAttachMode, code); err != nil {
		return "", fmt.Errorf("attach xdp to %s: record mode: %w", iface, err)
	}
	d.lnk, d.iface, d.mode = l, iface, used
	return used, nil
}

func (d *Datapath) attachXDP(ifindex int, m AttachMode) (link.Link, error) {
	flags := link.XDPDriverMode
	if m == AttachGeneric {
		flags = link.XDPGenericMode
	}
	return link.AttachXDP(link.XDPOptions{Program: d.objs.SynguardXdp, Interface: ifindex, Flags: flags})
}

// Attached reports the interface and mode the program is attached to,
// including an attachment re-opened from PinDir by Load.
func (d *Datapath) Attached() (iface string, m AttachMode, ok bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.lnk == nil {
		return "", "", false
	}
	return d.iface, d.mode, true
}

// Detach removes the XDP link and its pin. Detaching when not attached is
// not an error.
func (d *Datapath) Detach() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lnk == nil {
		return nil
	}
	if err := detachLink(d.lnk, d.opts.PinDir); err != nil {
		return fmt.Errorf("detach xdp from %s: %w", d.iface, err)
	}
	d.lnk, d.iface, d.mode = nil, "", ""
	if !d.closed {
		_ = d.objs.Config.Put(configAttachMode, uint64(0))
	}
	return nil
}

// detachLink detaches l even when other processes hold its fd, then drops
// its pin under pinDir and closes it.
func detachLink(l link.Link, pinDir string) error {
	err := l.Detach()
	if errors.Is(err, link.ErrNotSupported) {
		err = nil // old kernel: dropping the pin and fd detaches
	}
	if pinDir != "" {
		if rerr := os.Remove(filepath.Join(pinDir, linkPinName)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return errors.Join(err, l.Close())
}

// reopenLink picks up a link pinned by a previous process and swaps the
// freshly loaded program into it. A link whose interface has gone is
// unpinned.
func (d *Datapath) reopenLink() error {
	path := filepath.Join(d.opts.PinDir, linkPinName)
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", path, err)
	}
	info, err := l.Info()
	if err != nil {
		l.Close()
		return fmt.Errorf("pinned link %s: %w", path, err)
	}
	xdp := info.XDP()
	if xdp == nil {
		l.Close()
		return fmt.Errorf("pinned link %s is a %v link, not xdp: remove it", path, info.Type)
	}
	if xdp.Ifindex == 0 {
		l.Close()
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("drop pinned link %s of a removed interface: %w", path, err)
		}
		d.migrations = append(d.migrations, "link: interface of the pinned link is gone: pin removed")
		return nil
	}
	if err := l.Update(d.objs.SynguardXdp); err != nil {
		l.Close()
		return fmt.Errorf("swap new program into pinned link %s: %w", path, err)
	}
	// The interface name is "ifindex N" when the link lives in another
	// network namespace than this thread.
	return d.adoptLink(l)
}

// Remove detaches the program pinned under pinDir and removes every synguard
// pin there, then the directory itself: the kernel forgets all bans, the
// allowlist and counters. Removing a directory that does not exist is not an
// error.
func Remove(pinDir string) error {
	if pinDir == "" {
		return errors.New("remove pins: empty pin dir")
	}
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := checkBPFFS(pinDir); err != nil {
		return fmt.Errorf("remove pins in %s: %w", pinDir, err)
	}
	var errs []error
	lp := filepath.Join(pinDir, linkPinName)
	if l, err := link.LoadPinnedLink(lp, nil); err == nil {
		if err := detachLink(l, pinDir); err != nil {
			errs = append(errs, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, name := range pinnedMaps {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove pins in %s: %w", pinDir, err)
	}
	return nil
}
