package load

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
)

func TestRespCounterAnySplit(t *testing.T) {
	stream := "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" +
		"*5\r\n$7\r\nEVALSHA\r\n$40\r\n0123456789012345678901234567890123456789\r\n$1\r\n1\r\n$12\r\nkeyauthz:{x}\r\n$0\r\n\r\n" +
		"PING\r\n" +
		"*1\r\n$4\r\n*3\r\n\r\n" // a payload that looks like a header must not count
	for size := 1; size <= len(stream); size++ {
		var r respCounter
		n := 0
		for i := 0; i < len(stream); i += size {
			n += r.feed([]byte(stream[i:min(i+size, len(stream))]))
		}
		if n != 4 {
			t.Fatalf("pieces of %d bytes: counted %d commands, want 4", size, n)
		}
	}
}

func TestCmdProxyForwardsAndCounts(t *testing.T) {
	// A fake Redis that answers +OK to every command line starting with '*'.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "*") {
				var n int
				fmt.Sscanf(line, "*%d", &n)
				for range 2 * n {
					if _, err := br.ReadString('\n'); err != nil {
						return
					}
				}
				fmt.Fprint(c, "+OK\r\n")
			}
		}
	}()
	p, err := startCmdProxy(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for range 3 {
		fmt.Fprint(c, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
		if got, err := br.ReadString('\n'); err != nil || got != "+OK\r\n" {
			t.Fatalf("reply %q, %v", got, err)
		}
	}
	if got := p.Commands(); got != 3 {
		t.Fatalf("counted %d commands, want 3", got)
	}
}
