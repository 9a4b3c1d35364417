package load

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
)

// cmdProxy is a loopback TCP proxy in front of Redis that counts the commands
// its clients send (top-level RESP arrays, or inline lines). Commands a Lua
// script runs inside Redis never cross it, unlike INFO commandstats, which
// counts them too: the count is what keyauthz sends, one per round trip unless
// it pipelines.
type cmdProxy struct {
	l        net.Listener
	upstream string
	cmds     atomic.Uint64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func startCmdProxy(upstream string) (*cmdProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &cmdProxy{l: l, upstream: upstream}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listen address.
func (p *cmdProxy) Addr() string { return p.l.Addr().String() }

// Commands returns the commands forwarded so far.
func (p *cmdProxy) Commands() uint64 { return p.cmds.Load() }

// Close stops accepting and closes every proxied connection.
func (p *cmdProxy) Close() error {
	err := p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *cmdProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(c, u)
			_ = c.Close()
		}()
		go func() {
			defer p.wg.Done()
			var rc respCounter
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					p.cmds.Add(uint64(rc.feed(buf[:n])))
					if _, werr := u.Write(buf[:n]); werr != nil {
						err = errors.Join(err, werr)
					}
				}
				if err != nil {
					_ = u.Close()
					return
				}
			}
		}()
	}
}

// respCounter counts complete client commands in a RESP byte stream fed in
// arbitrary pieces: arrays of bulk strings ("*N\r\n" then N × "$L\r\n<L bytes>\r\n")
// or inline commands (one line).
type respCounter struct {
	line  []byte // the partial header line being read
	elems int    // bulk strings still to read in the current array
	skip  int    // payload bytes (+CRLF) still to skip
}

func (r *respCounter) feed(b []byte) int {
	n := 0
	for len(b) > 0 {
		if r.skip > 0 {
			k := min(r.skip, len(b))
			r.skip -= k
			b = b[k:]
			if r.skip == 0 && r.elems == 0 {
				n++
			}
			continue
		}
		i := 0
		for i < len(b) && b[i] != '\n' {
			i++
		}
		if i == len(b) {
			r.line = append(r.line, b...)
			return n
		}
		line := append(r.line, b[:i]...)
		r.line = r.line[:0]
		b = b[i+1:]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		switch {
		case len(line) == 0:
		case line[0] == '*' && r.elems == 0:
			k, err := strconv.Atoi(string(line[1:]))
			if err != nil || k <= 0 {
				continue
			}
			r.elems = k
		case line[0] == '$' && r.elems > 0:
			k, err := strconv.Atoi(string(line[1:]))
			if err != nil || k < 0 {
				continue
			}
			r.elems--
			r.skip = k + 2
		default:
			if r.elems == 0 {
				n++ // inline command
			}
		}
	}
	return n
}
