package worker

import (
	"bytes"
	"io"
	"sync"
)

// segment is what one stream (stdout or stderr) carried during one cell.
type segment struct {
	data  []byte // the first cap bytes
	total int64  // everything written, kept or not
}

// splitter reads a worker's output pipe and cuts it at end-of-cell markers.
// It keeps at most limit bytes of each segment and counts the rest, so a
// cell printing 100 MB costs 100 MB of reading, not of memory.
type splitter struct {
	r      io.Reader
	marker []byte

	mu    sync.Mutex
	limit int
	buf   []byte
	total int64
	tail  []byte // bytes that may be the start of a marker

	segs chan segment
	done chan struct{} // closed at EOF or read error
}

func newSplitter(r io.Reader, marker []byte) *splitter {
	s := &splitter{r: r, marker: marker, limit: 64 << 10, segs: make(chan segment, 8), done: make(chan struct{})}
	go s.loop()
	return s
}

// setLimit sets how many bytes of the current and following segments are kept.
func (s *splitter) setLimit(n int) {
	s.mu.Lock()
	s.limit = n
	s.mu.Unlock()
}

func (s *splitter) loop() {
	defer close(s.done)
	chunk := make([]byte, 32<<10)
	for {
		n, err := s.r.Read(chunk)
		if n > 0 {
			s.feed(chunk[:n])
		}
		if err != nil {
			return
		}
	}
}

func (s *splitter) feed(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data := p
	if len(s.tail) > 0 {
		data = append(s.tail, p...)
		s.tail = nil
	}
	for {
		i := bytes.Index(data, s.marker)
		if i < 0 {
			break
		}
		s.keep(data[:i])
		seg := segment{data: s.buf, total: s.total}
		s.buf, s.total = nil, 0
		// The channel is drained by the cell waiting for it; a full channel
		// means segments nobody asked for (a background job writing
		// markers), which are dropped rather than blocking the reader.
		select {
		case s.segs <- seg:
		default:
		}
		data = data[i+len(s.marker):]
	}
	// Hold back a suffix that may be the start of a marker split across reads.
	keepFrom := len(data)
	for j := max(0, len(data)-len(s.marker)+1); j < len(data); j++ {
		if bytes.HasPrefix(s.marker, data[j:]) {
			keepFrom = j
			break
		}
	}
	s.keep(data[:keepFrom])
	s.tail = append([]byte(nil), data[keepFrom:]...)
}

func (s *splitter) keep(p []byte) {
	s.total += int64(len(p))
	if room := s.limit - len(s.buf); room > 0 {
		if len(p) > room {
			p = p[:room]
		}
		s.buf = append(s.buf, p...)
	}
}

// partial returns what was read since the last marker (after a crash).
func (s *splitter) partial() segment {
	s.mu.Lock()
	defer s.mu.Unlock()
	seg := segment{data: append(s.buf, s.tail...), total: s.total + int64(len(s.tail))}
	s.buf, s.total, s.tail = nil, 0, nil
	return seg
}
