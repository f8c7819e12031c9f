package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestJobQueueOrdersByReadyTimeThenFIFO(t *testing.T) {
	t.Parallel()
	var q jobQueue
	jobs := map[string]*job{}
	add := func(name string, at time.Duration) {
		j := &job{instance: name}
		jobs[name] = j
		q.push(j, t0.Add(at))
	}
	add("late", 3*time.Second)
	add("first-a", 0)
	add("retry", time.Second)
	add("first-b", 0)
	add("first-c", 0)
	add("retry-2", time.Second)
	require.Equal(t, "first-a", q.peek().instance)

	var order []string
	for q.len() > 0 {
		order = append(order, q.pop().instance)
	}
	require.Equal(t, []string{"first-a", "first-b", "first-c", "retry", "retry-2", "late"}, order)

	// A job queued again goes behind the jobs already waiting for the same time.
	add("x", 0)
	add("y", 0)
	x := q.pop()
	q.push(x, t0)
	require.Equal(t, []string{"y", "x"}, []string{q.pop().instance, q.pop().instance})
	require.Nil(t, q.peek())

	add("b", 2*time.Second)
	add("a", time.Second)
	drained := q.drain()
	require.Equal(t, []string{"a", "b"}, []string{drained[0].instance, drained[1].instance})
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
		q.push(q.pop(), t0.Add(time.Duration(i%97)*time.Millisecond))
		i++
	}
}
