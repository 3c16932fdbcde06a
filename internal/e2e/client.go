package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/synguard/synguard/internal/testbed"
)

// Request is one legitimate HTTP request and how it went.
type Request struct {
	Start time.Time
	Took  time.Duration
	Err   error // nil: 200 with the whole body read
}

// Client is a legitimate user: it makes one HTTP GET every interval from
// its namespace, each over a new connection (a new handshake, so a ban or a
// full SYN queue would show), until Stop.
type Client struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	reqs   []Request
}

// StartClient starts the request loop. timeout bounds each request; a
// request that needs a SYN retransmission (1 s) still succeeds within 3 s.
func StartClient(ns *testbed.NS, url string, every, timeout time.Duration) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{cancel: cancel, done: make(chan struct{})}
	hc := ns.HTTPClient(timeout)
	go func() {
		defer close(c.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			// Requests overlap when one is slow, like independent users.
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := Request{Start: time.Now()}
				r.Err = get(hc, url)
				r.Took = time.Since(r.Start)
				c.mu.Lock()
				c.reqs = append(c.reqs, r)
				c.mu.Unlock()
			}()
		}
	}()
	return c
}

func get(hc *http.Client, url string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// Stop ends the loop, waits for requests in flight, and returns them all.
func (c *Client) Stop() []Request {
	c.cancel()
	<-c.done
	return c.Requests()
}

// Requests returns the finished requests so far.
func (c *Client) Requests() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Request(nil), c.reqs...)
}

// Tally counts the requests started in [from, to] and how many succeeded,
// and returns the first few errors.
func Tally(reqs []Request, from, to time.Time) (n, ok int, errs []error) {
	for _, r := range reqs {
		if r.Start.Before(from) || r.Start.After(to) {
			continue
		}
		n++
		if r.Err == nil {
			ok++
		} else if len(errs) < 5 {
			errs = append(errs, r.Err)
		}
	}
	return n, ok, errs
}
