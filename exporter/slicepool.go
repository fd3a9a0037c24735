package exporter

// slicePool keeps emptied slices for reuse, so that handing work between
// goroutines in slices allocates nothing once warm. One goroutine fills a
// slice and another empties it and puts it back. It holds a bounded number
// of them: a burst's extra slices are left to the garbage collector.
type slicePool[T any] struct {
	free chan []T
}

const (
	spareSlices   = 64
	spareCapacity = 256 // slices that grew bigger than this are not kept
)

func newSlicePool[T any]() slicePool[T] {
	return slicePool[T]{free: make(chan []T, spareSlices)}
}

// get returns an empty slice.
func (p slicePool[T]) get() []T {
	select {
	case s := <-p.free:
		return s
	default:
		return make([]T, 0, 16)
	}
}

// put takes back s, cleared so that it holds no references.
func (p slicePool[T]) put(s []T) {
	if cap(s) > spareCapacity {
		return
	}
	clear(s[:cap(s)])
	select {
	case p.free <- s[:0]:
	default:
	}
}
