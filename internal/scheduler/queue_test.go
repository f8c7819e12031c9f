package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestJobQueueRunsDueJobsOldestFirst(t *testing.T) {
	t.Parallel()
	var q jobQueue
	add := func(name string, at time.Duration) *job {
		j := &job{instance: name}
		q.push(j, t0.Add(at))
		return j
	}
	take := func(now time.Duration) string {
		j, _ := q.next(t0.Add(now))
		if j == nil {
			return ""
		}
		return j.instance
	}
	add("a", 0)
	add("late", 3*time.Second)
	add("b", 0)
	add("c", 0)

	// Nothing is due before its ready time; the wait is until the first waiting job.
	_, wait := q.next(t0.Add(-time.Second))
	require.Equal(t, time.Second, wait)

	// Due jobs run in the order they were first queued.
	require.Equal(t, "a", take(0))

	// A retry keeps its place: once its backoff ends it goes before jobs queued after it...
	b, _ := q.next(t0)
	require.Equal(t, "b", b.instance)
	q.push(b, t0.Add(time.Second))
	require.Equal(t, "c", take(500*time.Millisecond), "b is not due yet")
	d := add("d", time.Second)
	require.Equal(t, "b", take(time.Second), "b was queued before d")
	require.Equal(t, "d", take(time.Second))

	// ...and a job queued again at once goes straight back to its place.
	q.push(d, t0.Add(time.Second))
	require.Equal(t, "d", take(2*time.Second))

	j, wait := q.next(t0.Add(2 * time.Second))
	require.Nil(t, j)
	require.Equal(t, time.Second, wait, "only late is left, due at 3 s")
	require.Equal(t, "late", take(3*time.Second))
	j, wait = q.next(t0.Add(3 * time.Second))
	require.Nil(t, j)
	require.Zero(t, wait, "an empty queue has nothing to wait for")

	// drain returns the due jobs by rank, then the waiting ones by ready time.
	add("w2", 2*time.Second)
	add("w1", time.Second)
	add("x", 0)
	add("y", 0)
	add("z", 0)
	require.Equal(t, "x", take(0), "x, y and z are due now")
	drained := q.drain()
	var names []string
	for _, j := range drained {
		names = append(names, j.instance)
	}
	require.Equal(t, []string{"y", "z", "w1", "w2"}, names)
	require.Zero(t, q.len())
}

func BenchmarkQueue(b *testing.B) {
	var q jobQueue
	jobs := make([]*job, 1024)
	for i := range jobs {
		jobs[i] = &job{}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// A queue of ~1000 jobs with mixed ready times: push one, pop one.
		j := jobs[i%len(jobs)]
		if q.len() < len(jobs)-1 {
			q.push(j, t0.Add(time.Duration(i%97)*time.Millisecond))
			i++
			continue
		}
		next, _ := q.next(t0.Add(time.Duration(i%97) * time.Millisecond))
		if next != nil {
			q.push(next, t0.Add(time.Duration(i%97+50)*time.Millisecond))
		}
		i++
	}
}
