package scheduler

import (
	"container/heap"
	"time"
)

// jobQueue holds the jobs waiting for a worker, earliest ready time first and, among equal ready
// times, in the order they were queued. A job waiting for a retry sits here with a later ready
// time instead of holding a worker.
type jobQueue struct {
	items []*job
	seq   uint64
}

// push queues j to be run at ready.
func (q *jobQueue) push(j *job, ready time.Time) {
	q.seq++
	j.ready, j.seq = ready, q.seq
	heap.Push((*jobHeap)(q), j)
}

// peek returns the job to run next, or nil.
func (q *jobQueue) peek() *job {
	if len(q.items) == 0 {
		return nil
	}
	return q.items[0]
}

// pop removes and returns the job to run next; the queue must not be empty.
func (q *jobQueue) pop() *job {
	return heap.Pop((*jobHeap)(q)).(*job)
}

// drain removes and returns every job in queue order.
func (q *jobQueue) drain() []*job {
	out := make([]*job, 0, len(q.items))
	for len(q.items) > 0 {
		out = append(out, q.pop())
	}
	return out
}

func (q *jobQueue) len() int { return len(q.items) }

// jobHeap is the container/heap view of a jobQueue.
type jobHeap jobQueue

func (h *jobHeap) Len() int { return len(h.items) }

func (h *jobHeap) Less(a, b int) bool {
	ja, jb := h.items[a], h.items[b]
	if !ja.ready.Equal(jb.ready) {
		return ja.ready.Before(jb.ready)
	}
	return ja.seq < jb.seq
}

func (h *jobHeap) Swap(a, b int) { h.items[a], h.items[b] = h.items[b], h.items[a] }

func (h *jobHeap) Push(x any) { h.items = append(h.items, x.(*job)) }

func (h *jobHeap) Pop() any {
	n := len(h.items)
	j := h.items[n-1]
	h.items[n-1] = nil
	h.items = h.items[:n-1]
	return j
}
