package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2conn is a minimal HTTP/2 gRPC client connection for unary calls with
// pre-marshalled requests: the request HEADERS block is encoded once, each
// request is one HEADERS and one DATA frame, and responses are decoded only as
// far as the status code. One writer goroutine owns the socket and writes every
// queued request before one flush; one reader goroutine reads. It costs a
// fraction of grpc-go's client per call, so one client core can keep a server
// core busy. It speaks enough HTTP/2 for a gRPC server: settings, connection
// flow control both ways, PING, RST_STREAM, GOAWAY.
type h2conn struct {
	nc   net.Conn
	fr   *http2.Framer // writes: writer goroutine only; reads: reader goroutine only
	bw   *bufio.Writer
	hdr1 []byte // HPACK block of the first request's headers: literals added to the dynamic table
	hdr  []byte // HPACK block of every later request: indexed references to those entries

	mu      sync.Mutex
	wake    sync.Cond // the writer waits on it for work or send window
	queue   []h2req   // requests not yet written
	ctrl    []func() error
	sendWin int64 // connection-level send window
	nextID  uint32
	calls   map[uint32]*h2call
	err     error // set once the connection failed

	done chan struct{} // closed when both goroutines have ended
}

type h2req struct {
	k   *h2call
	msg []byte
}

// h2call is one call in flight; a worker reuses its call for its next request.
type h2call struct {
	done chan struct{} // receives when the call ends (buffer 1)
	buf  []byte        // response DATA (gRPC-framed message)
	code int32         // CheckResponse status code
	err  error
}

const (
	h2RecvWindow = 1 << 30 // our connection and stream receive windows
	h2Replenish  = 1 << 20 // received bytes are returned to the server's send window in chunks of this
	h2MaxFrame   = 1 << 14 // the default SETTINGS_MAX_FRAME_SIZE
)

// headerBlocks encodes the request headers the way Envoy's gRPC client sends
// them, with HPACK's dynamic table: the first block adds the fields to the
// table, every later block is a few bytes of indexed references, so the server
// decodes what it would decode behind Envoy. The fields never change, so the
// later block is the same for every request.
func headerBlocks(authority string) (first, later []byte, err error) {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	encode := func() ([]byte, error) {
		b.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", authv3.Authorization_Check_FullMethodName}, {":authority", authority},
			{"content-type", "application/grpc"}, {"te", "trailers"}, {"grpc-timeout", "250m"}} {
			if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
				return nil, err
			}
		}
		return bytes.Clone(b.Bytes()), nil
	}
	if first, err = encode(); err != nil {
		return nil, nil, err
	}
	if later, err = encode(); err != nil {
		return nil, nil, err
	}
	again, err := encode()
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(later, again) {
		return nil, nil, errors.New("hpack: request header block is not stable")
	}
	return first, later, nil
}

func dialH2(addr string) (*h2conn, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &h2conn{nc: nc, bw: bufio.NewWriterSize(nc, 64<<10), nextID: 1, sendWin: 65535,
		calls: map[uint32]*h2call{}, done: make(chan struct{})}
	c.wake.L = &c.mu
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, 64<<10))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if c.hdr1, c.hdr, err = headerBlocks(addr); err != nil {
		nc.Close()
		return nil, err
	}
	_, err = c.bw.WriteString(http2.ClientPreface)
	err = errors.Join(err,
		c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2RecvWindow}, http2.Setting{ID: http2.SettingEnablePush, Val: 0}),
		c.fr.WriteWindowUpdate(0, h2RecvWindow-65535),
		c.bw.Flush())
	if err != nil {
		nc.Close()
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.readLoop() }()
	go func() { defer wg.Done(); c.writeLoop() }()
	go func() { wg.Wait(); close(c.done) }()
	return c, nil
}

// Close closes the connection; calls in flight fail.
func (c *h2conn) Close() error {
	err := c.nc.Close()
	c.fail(net.ErrClosed)
	<-c.done
	return err
}

// fail records the connection's first error and ends every call in flight.
func (c *h2conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	calls, queue := c.calls, c.queue
	c.calls, c.queue = map[uint32]*h2call{}, nil
	c.wake.Broadcast()
	c.mu.Unlock()
	for _, k := range calls {
		k.err = err
		k.done <- struct{}{}
	}
	for _, q := range queue {
		q.k.err = err
		q.k.done <- struct{}{}
	}
	_ = c.nc.Close()
}

// call queues one request (a marshalled CheckRequest) and waits for the
// answer. k is the caller's reusable call; it must not be reused after an
// error. msg must stay unchanged until call returns.
func (c *h2conn) call(ctx context.Context, k *h2call, msg []byte) (int32, error) {
	if len(msg)+5 > h2MaxFrame {
		return 0, fmt.Errorf("request of %d bytes exceeds one DATA frame", len(msg))
	}
	k.buf, k.code, k.err = k.buf[:0], 0, nil
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.queue = append(c.queue, h2req{k: k, msg: msg})
	if len(c.queue) == 1 {
		c.wake.Signal()
	}
	c.mu.Unlock()
	select {
	case <-k.done:
		return k.code, k.err
	case <-ctx.Done():
		c.fail(fmt.Errorf("call abandoned: %w", ctx.Err())) // the connection is unusable for this worker's k
		return 0, ctx.Err()
	}
}

// control queues a frame write from the reader (never blocks on the socket).
func (c *h2conn) control(f func() error) {
	c.mu.Lock()
	c.ctrl = append(c.ctrl, f)
	c.wake.Signal()
	c.mu.Unlock()
}

func (c *h2conn) writeLoop() {
	var batch []h2req
	var ids []uint32
	var ctrl []func() error
	first := true
	for {
		c.mu.Lock()
		for c.err == nil && len(c.ctrl) == 0 && (len(c.queue) == 0 || c.sendWin < int64(len(c.queue[0].msg)+5)) {
			c.wake.Wait()
		}
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		ctrl = append(ctrl[:0], c.ctrl...)
		c.ctrl = c.ctrl[:0]
		batch, ids = batch[:0], ids[:0]
		n := 0
		for n < len(c.queue) && c.sendWin >= int64(len(c.queue[n].msg)+5) {
			q := c.queue[n]
			c.sendWin -= int64(len(q.msg) + 5)
			c.calls[c.nextID] = q.k
			ids = append(ids, c.nextID)
			c.nextID += 2
			batch = append(batch, q)
			n++
		}
		c.queue = append(c.queue[:0], c.queue[n:]...)
		c.mu.Unlock()

		var err error
		for _, f := range ctrl {
			err = errors.Join(err, f())
		}
		for i, q := range batch {
			hdr := c.hdr
			if first {
				hdr, first = c.hdr1, false
			}
			err = errors.Join(err,
				c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: ids[i], BlockFragment: hdr, EndHeaders: true}),
				writeDataFrame(c.bw, ids[i], q.msg))
		}
		if err == nil {
			err = c.bw.Flush()
		}
		if err != nil {
			c.fail(fmt.Errorf("h2 write: %w", err))
			return
		}
	}
}

// writeDataFrame writes one END_STREAM DATA frame holding msg with its gRPC
// 5-byte prefix (uncompressed, length).
func writeDataFrame(w *bufio.Writer, id uint32, msg []byte) error {
	n := len(msg) + 5
	var h [14]byte
	h[0], h[1], h[2] = byte(n>>16), byte(n>>8), byte(n)
	h[3] = byte(http2.FrameData)
	h[4] = byte(http2.FlagDataEndStream)
	binary.BigEndian.PutUint32(h[5:], id&0x7fffffff)
	binary.BigEndian.PutUint32(h[10:], uint32(len(msg)))
	_, _ = w.Write(h[:])
	_, err := w.Write(msg)
	return err
}

func (c *h2conn) readLoop() {
	unacked := 0
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.fail(fmt.Errorf("h2 read: %w", err))
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			if v, ok := f.Value(http2.SettingHeaderTableSize); ok && v < 4096 {
				c.fail(fmt.Errorf("server's HPACK table of %d bytes is smaller than the 4096 the request headers assume", v))
				return
			}
			c.control(c.fr.WriteSettingsAck)
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				c.mu.Lock()
				c.sendWin += int64(f.Increment)
				c.wake.Signal()
				c.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				c.control(func() error { return c.fr.WritePing(true, data) })
			}
		case *http2.DataFrame:
			unacked += int(f.Length)
			if k := c.lookup(f.StreamID); k != nil {
				k.buf = append(k.buf, f.Data()...)
			}
			if unacked >= h2Replenish {
				n := uint32(unacked)
				unacked = 0
				c.control(func() error { return c.fr.WriteWindowUpdate(0, n) })
			}
		case *http2.MetaHeadersFrame:
			if !f.StreamEnded() {
				if s := f.PseudoValue("status"); s != "200" {
					c.finish(f.StreamID, fmt.Errorf("http status %s", s))
				}
				continue
			}
			st, msg := "", ""
			for _, h := range f.RegularFields() {
				switch h.Name {
				case "grpc-status":
					st = h.Value
				case "grpc-message":
					msg = h.Value
				}
			}
			if st != "0" {
				c.finish(f.StreamID, fmt.Errorf("grpc-status %s: %s", st, msg))
				continue
			}
			c.finish(f.StreamID, nil)
		case *http2.RSTStreamFrame:
			c.finish(f.StreamID, fmt.Errorf("stream reset: %v", f.ErrCode))
		case *http2.GoAwayFrame:
			c.fail(fmt.Errorf("goaway: %v %s", f.ErrCode, f.DebugData()))
			return
		}
	}
}

func (c *h2conn) lookup(id uint32) *h2call {
	c.mu.Lock()
	k := c.calls[id]
	c.mu.Unlock()
	return k
}

// finish ends call id with err, or with the status code of its response message.
func (c *h2conn) finish(id uint32, err error) {
	c.mu.Lock()
	k := c.calls[id]
	delete(c.calls, id)
	c.mu.Unlock()
	if k == nil {
		return
	}
	if err == nil {
		switch {
		case len(k.buf) < 5 || int(binary.BigEndian.Uint32(k.buf[1:5])) != len(k.buf)-5:
			err = errors.New("malformed gRPC response message of " + strconv.Itoa(len(k.buf)) + " bytes")
		case k.buf[0] != 0:
			err = errors.New("compressed gRPC response")
		default:
			k.code, err = statusCode(k.buf[5:])
		}
	}
	k.err = err
	k.done <- struct{}{}
}
