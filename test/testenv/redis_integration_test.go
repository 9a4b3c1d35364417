//go:build integration

package testenv

import (
	"strings"
	"testing"
)

func TestStartRedisStopStartPause(t *testing.T) {
	p := StartRedis(t)
	if got, err := redisDo(p.Addr(), "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v", got, err)
	}
	if _, err := redisDo(p.Addr(), "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	addr := p.Addr()

	p.Stop()
	if _, err := redisDo(addr, "PING"); err == nil {
		t.Fatal("PING answered after Stop")
	}
	p.Stop() // idempotent

	p.Start()
	if p.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", p.Addr(), addr)
	}
	if got, err := redisDo(addr, "GET", "k"); err != nil || got != "" {
		t.Fatalf("GET after restart = %q, %v; want nil reply (no persistence)", got, err)
	}

	p.Pause()
	if _, err := redisDo(addr, "PING"); err == nil {
		t.Fatal("PING answered while paused")
	}
	p.Resume()
	if got, err := redisDo(addr, "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING after Resume = %q, %v", got, err)
	}
}

func TestStartRedisCluster(t *testing.T) {
	addrs := StartRedisCluster(t, 3)
	if len(addrs) != 3 {
		t.Fatalf("got %d addresses, want 3", len(addrs))
	}
	for _, a := range addrs {
		info, err := redisDo(a, "CLUSTER", "INFO")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"cluster_state:ok", "cluster_slots_assigned:16384", "cluster_known_nodes:3", "cluster_size:3"} {
			if !strings.Contains(info, want) {
				t.Errorf("node %s: cluster info lacks %q:\n%s", a, want, info)
			}
		}
	}
}
