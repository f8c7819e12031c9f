package scheduler

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// limiterWait is the function whose clock reads grantClock records.
const limiterWait = "github.com/imager-dev/imager/internal/pace.(*Limiter).Wait"

// grantClock is the real clock, recording the send times a pace.Limiter on it grants. Limiter.Wait
// reads Now, reserves a send time at or after it, and starts a timer for the rest when the send
// time is later: the grant is that Now plus the timer's duration, or that Now when Wait starts no
// timer. The grants are exact times on the limiter's own clock, so a busy machine that wakes the
// waiter late changes when the call leaves, not the grant.
//
// Only reads made by Limiter.Wait itself count, paired per goroutine; give the scheduler's other
// limiters (DescribePace) a clock of their own, or their grants are mixed in.
type grantClock struct {
	clockwork.Clock

	mu     sync.Mutex
	open   map[uint64]time.Time // goroutine → the Now its Wait read; no timer started yet
	grants []time.Time
}

func newGrantClock() *grantClock {
	return &grantClock{Clock: clockwork.NewRealClock(), open: map[uint64]time.Time{}}
}

func (c *grantClock) Now() time.Time {
	now := c.Clock.Now()
	if calledBy(limiterWait) {
		g := goroutineID()
		c.mu.Lock()
		if prev, ok := c.open[g]; ok {
			c.grants = append(c.grants, prev) // that Wait started no timer: it granted its Now
		}
		c.open[g] = now
		c.mu.Unlock()
	}
	return now
}

func (c *grantClock) NewTimer(d time.Duration) clockwork.Timer {
	if calledBy(limiterWait) {
		g := goroutineID()
		c.mu.Lock()
		now, ok := c.open[g]
		if !ok {
			c.mu.Unlock()
			panic("grantClock: Limiter.Wait started a timer without reading Now first; the recording no longer matches pace.Limiter")
		}
		delete(c.open, g)
		c.grants = append(c.grants, now.Add(d))
		c.mu.Unlock()
	}
	return c.Clock.NewTimer(d)
}

// Grants returns every grant so far, in order. Call it once no Wait is running.
func (c *grantClock) Grants() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := slices.Clone(c.grants)
	for _, now := range c.open {
		out = append(out, now)
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// calledBy reports whether the caller of the function calling calledBy is fn.
func calledBy(fn string) bool {
	pcs := make([]uintptr, 4)
	n := runtime.Callers(3, pcs) // skip runtime.Callers, calledBy and the clock method
	if n == 0 {
		return false
	}
	f, _ := runtime.CallersFrames(pcs[:n]).Next()
	return f.Function == fn
}

// goroutineID is the current goroutine's id, from the header of its stack trace.
func goroutineID() uint64 {
	var buf [64]byte
	b := bytes.TrimPrefix(buf[:runtime.Stack(buf[:], false)], []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		panic(fmt.Sprintf("grantClock: no goroutine id in %q", buf))
	}
	return id
}
