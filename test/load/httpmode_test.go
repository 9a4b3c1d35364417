package load

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestHTTP1Client runs the HTTP/1.1 transport against an HTTP server answering
// 200 with no body and 429 with one: every call is answered on a kept-alive
// connection and counted under its status.
func TestHTTP1Client(t *testing.T) {
	var conns atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Api-Key") == "limited" {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(429)
				_, _ = w.Write([]byte(`{"message":"Rate limit exceeded"}`))
				return
			}
			w.Header()["Content-Length"] = []string{"0"}
			w.WriteHeader(200)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	c, err := Dial(l.Addr().String(), 1, TransportHTTP1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := cycle{
		[]byte("GET /_keyauthz HTTP/1.1\r\nHost: k\r\nX-Api-Key: ok\r\n\r\n"),
		[]byte("GET /_keyauthz HTTP/1.1\r\nHost: k\r\nX-Api-Key: limited\r\n\r\n"),
	}
	o := c.Closed(context.Background(), bounded{src: src, n: 400}, 4, 10*time.Second, new(atomic.Uint64))
	if o.Errors != 0 || o.Done != 400 {
		t.Fatalf("done %d, errors %d (%v)", o.Done, o.Errors, o.FirstErr)
	}
	if o.Codes[0] != 200 || o.Codes[8] != 200 {
		t.Errorf("codes %v, want 200 OK and 200 ResourceExhausted", o.Codes)
	}
	if n := conns.Load(); n != 4 {
		t.Errorf("%d connections for 4 workers, want 4 (keep-alive)", n)
	}
}
