// Command capprobe drives the real bpf package through what the daemon does
// to the kernel (load, attach, pin, set enforce mode, ban, read counters,
// re-open the pins after a restart, remove), so that the capability test in
// packaging/ can run it with exactly the unit's capabilities and no more.
//
// It lives under testdata so that `go build ./...` and `go vet ./...` skip
// it; the test builds it explicitly.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/synguard/synguard/bpf"
)

// result is printed as one JSON object on stdout for the test to check.
type result struct {
	Attached string   `json:"attached,omitempty"`
	Bans     []string `json:"bans"`
	Dropped  uint64   `json:"dropped"`
	SYN      uint64   `json:"syn"`
	Frames   uint64   `json:"frames"`
	Mode     string   `json:"mode"`
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		var le *bpf.LoadError
		if errors.As(err, &le) {
			fmt.Fprintf(os.Stderr, "capprobe: %+v\n", le.Err)
		}
		fmt.Fprintln(os.Stderr, "capprobe:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: capprobe attach|stats|remove [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	pin := fs.String("pin", "", "bpffs pin directory")
	iface := fs.String("iface", "", "interface to attach to (attach)")
	mode := fs.String("attach", "generic", "attach mode: auto, native or generic")
	block := fs.String("block", "", "prefix to ban in enforce mode (attach)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *pin == "" {
		return errors.New("-pin is required")
	}
	switch args[0] {
	case "remove":
		return bpf.Remove(*pin)
	case "attach", "stats":
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}

	// Small maps: the probe is about privileges, not capacity.
	d, err := bpf.Load(bpf.Options{PinDir: *pin, MaxSources: 4096, MaxServices: 1024, MaxBans: 1024, MaxAllows: 1024})
	if err != nil {
		return err
	}
	defer d.Close() // pins and the attachment stay, like a daemon restart
	var res result
	if args[0] == "attach" {
		used, err := d.Attach(*iface, bpf.AttachMode(*mode))
		if err != nil {
			return err
		}
		res.Attached = string(used)
		if err := d.SetMode(bpf.ModeEnforce); err != nil {
			return err
		}
		if *block != "" {
			p, err := netip.ParsePrefix(*block)
			if err != nil {
				return fmt.Errorf("-block %s: %w", *block, err)
			}
			if err := d.Block(p, 10*time.Minute); err != nil {
				return err
			}
		}
		// The daemon reads suspect events from a ring buffer: opening it
		// maps kernel memory, which must work with the same privileges.
		sr, err := d.Suspects()
		if err != nil {
			return err
		}
		if err := sr.Close(); err != nil {
			return err
		}
	}
	bans, err := d.Bans()
	if err != nil {
		return err
	}
	for _, b := range bans {
		res.Bans = append(res.Bans, b.Prefix.String())
	}
	c, err := d.Counters()
	if err != nil {
		return err
	}
	res.Dropped, res.SYN, res.Frames = c.Dropped, c.SYN, c.Frames
	m, err := d.Mode()
	if err != nil {
		return err
	}
	res.Mode = m.String()
	return json.NewEncoder(os.Stdout).Encode(res)
}
