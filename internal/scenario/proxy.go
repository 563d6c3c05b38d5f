package scenario

import (
	"net"
	"strings"
	"sync"
)

// Proxy forwards TCP connections to a target and can hold their bytes:
// the nemesis's way to cut a process off (a blackhole: connections stay
// open, nothing gets through) and to release what it held later, after a
// failover — the design's own example of a stale write.
type Proxy struct {
	l      net.Listener
	target string

	mu          sync.Mutex
	cond        *sync.Cond
	held        bool
	conns       map[net.Conn]struct{}
	closed      bool
	wg          sync.WaitGroup
	heldBytes   int  // bytes read and not yet written on
	heldForward int  // of those, towards the target
	heldFwd     bool // HoldForward
}

// HeldForward returns how many of the bytes held go towards the target
// (a driver's requests to the storage, not the answers coming back).
func (p *Proxy) HeldForward() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.heldForward
}

// HeldBytes returns how many bytes the proxy has read and not yet
// written on (all it holds, while it holds).
func (p *Proxy) HeldBytes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.heldBytes
}

// NewProxy listens on a free loopback port and forwards to target
// (host:port, or unix:///path for a unix socket).
func NewProxy(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is where to connect (host:port).
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Hold stops forwarding: bytes read wait in the proxy (and, once its
// buffers are full, in the kernel's), and new connections are accepted
// but carry nothing.
func (p *Proxy) Hold() {
	p.mu.Lock()
	p.held = true
	p.mu.Unlock()
}

// HoldForward holds only what goes towards the target (a driver's
// requests to the storage), letting the answers back through.
func (p *Proxy) HoldForward() {
	p.mu.Lock()
	p.heldFwd = true
	p.mu.Unlock()
}

// holds says whether a direction is held. Called with p.mu held.
func (p *Proxy) holds(forward bool) bool { return p.held || forward && p.heldFwd }

// Release forwards what waited, and everything after.
func (p *Proxy) Release() {
	p.mu.Lock()
	p.held, p.heldFwd = false, false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Cut closes every connection (both sides see a reset or EOF); later
// connections are forwarded as before.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.held, p.heldFwd = false, false
	p.cond.Broadcast()
	p.mu.Unlock()
	p.l.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		network, addr := "tcp", p.target
		if path, ok := strings.CutPrefix(p.target, "unix://"); ok {
			network, addr = "unix", path
		}
		t, err := net.Dial(network, addr)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, t) {
			return
		}
		p.wg.Add(2)
		var left sync.WaitGroup // both directions: then both connections close
		left.Add(2)
		go func() { left.Wait(); p.untrack(c, t) }()
		go p.pipe(t, c, &left, true)
		go p.pipe(c, t, &left, false)
	}
}

// track records a connection pair, unless the proxy is closed.
func (p *Proxy) track(c ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, x := range c {
			x.Close()
		}
		return false
	}
	for _, x := range c {
		p.conns[x] = struct{}{}
	}
	return true
}

// untrack closes and forgets a connection pair.
func (p *Proxy) untrack(c ...net.Conn) {
	p.mu.Lock()
	for _, x := range c {
		delete(p.conns, x)
	}
	p.mu.Unlock()
	for _, x := range c {
		x.Close()
	}
}

// pipe copies from src to dst. It reads all the time, into a queue that
// a writer drains while the proxy does not hold: what the proxy holds is
// in its memory, as in a network, so a peer that closes (even with a
// reset, which drops what its kernel had not sent yet) has every byte it
// sent delivered on Release. When src ends, dst is closed for writing
// after the queue drained.
func (p *Proxy) pipe(dst, src net.Conn, left *sync.WaitGroup, forward bool) {
	defer p.wg.Done()
	defer left.Done()
	var (
		queue  [][]byte
		eof    bool
		broken bool // the writer's own
		wrote  = make(chan struct{})
	)
	go func() { // the writer
		defer close(wrote)
		for {
			p.mu.Lock()
			for !(!p.holds(forward) && len(queue) > 0) && !(eof && len(queue) == 0) {
				p.cond.Wait()
			}
			if len(queue) == 0 { // src ended and everything is written
				p.mu.Unlock()
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				return
			}
			b := queue[0]
			queue = queue[1:]
			p.heldBytes -= len(b)
			if forward {
				p.heldForward -= len(b)
			}
			p.mu.Unlock()
			if broken {
				continue // dst is gone: what comes for it is dropped
			}
			if _, err := dst.Write(b); err != nil {
				// Only this direction is lost: the other may still
				// deliver what it holds (a peer that closed).
				broken = true
			}
		}
	}()
	for {
		buf := make([]byte, 64<<10)
		n, err := src.Read(buf)
		p.mu.Lock()
		if n > 0 {
			queue = append(queue, buf[:n])
			p.heldBytes += n
			if forward {
				p.heldForward += n
			}
		}
		if err != nil {
			eof = true
		}
		p.cond.Broadcast()
		p.mu.Unlock()
		if err != nil {
			<-wrote
			return
		}
	}
}
