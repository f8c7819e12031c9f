package scheduler

import (
	"container/heap"
	"time"
)

// jobQueue holds the jobs waiting for a worker. A job is due once its ready time has come; among
// due jobs the one first queued earliest runs first, so a retry keeps its place: it goes out as soon
// as its backoff ends rather than behind every slot queued after it. A fire of thousands of slots
// with a share of transient errors then settles its retries while its first calls still fill
// the pace, instead of leaving a chain of backoffs with nothing else to send at the end. A job
// waiting for a retry sits here with a later ready time instead of holding a worker.
type jobQueue struct {
	waiting readyHeap // not yet due, earliest ready time first
	due     rankHeap  // due, lowest rank (first queued) first
	seq     uint64
}

// push queues j to be run at ready. A job queued for the first time takes the next rank; a
// job queued again keeps its own.
func (q *jobQueue) push(j *job, ready time.Time) {
	if j.rank == 0 {
		q.seq++
		j.rank = q.seq
	}
	j.ready = ready
	heap.Push(&q.waiting, j)
}

// next removes and returns the job to run at now. With none due it returns nil and how long until
// the first waiting job is (0 when the queue is empty).
func (q *jobQueue) next(now time.Time) (*job, time.Duration) {
	for len(q.waiting.items) > 0 && !q.waiting.items[0].ready.After(now) {
		heap.Push(&q.due, heap.Pop(&q.waiting))
	}
	if len(q.due.items) > 0 {
		return heap.Pop(&q.due).(*job), 0
	}
	if len(q.waiting.items) > 0 {
		return nil, q.waiting.items[0].ready.Sub(now)
	}
	return nil, 0
}

// drain removes and returns every job: the due ones in rank order, then the waiting ones by
// ready time.
func (q *jobQueue) drain() []*job {
	out := make([]*job, 0, q.len())
	for len(q.due.items) > 0 {
		out = append(out, heap.Pop(&q.due).(*job))
	}
	for len(q.waiting.items) > 0 {
		out = append(out, heap.Pop(&q.waiting).(*job))
	}
	return out
}

func (q *jobQueue) len() int { return len(q.waiting.items) + len(q.due.items) }

// jobHeap is the storage of a container/heap of jobs; readyHeap and rankHeap give its order.
type jobHeap struct{ items []*job }

func (h *jobHeap) Len() int { return len(h.items) }

func (h *jobHeap) Swap(a, b int) { h.items[a], h.items[b] = h.items[b], h.items[a] }

func (h *jobHeap) Push(x any) { h.items = append(h.items, x.(*job)) }

func (h *jobHeap) Pop() any {
	n := len(h.items)
	j := h.items[n-1]
	h.items[n-1] = nil
	h.items = h.items[:n-1]
	return j
}

// readyHeap orders jobs by ready time, then rank.
type readyHeap struct{ jobHeap }

func (h *readyHeap) Less(a, b int) bool {
	ja, jb := h.items[a], h.items[b]
	if !ja.ready.Equal(jb.ready) {
		return ja.ready.Before(jb.ready)
	}
	return ja.rank < jb.rank
}

// rankHeap orders jobs by rank.
type rankHeap struct{ jobHeap }

func (h *rankHeap) Less(a, b int) bool { return h.items[a].rank < h.items[b].rank }
