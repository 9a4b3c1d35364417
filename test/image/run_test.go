//go:build e2e

package image

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// container is the final image reproduced on the host: a root directory with
// the binary at its ENTRYPOINT path and the WORKDIR, owned as the Dockerfile
// leaves them.
type container struct {
	root    string
	workdir string // root + WORKDIR
	argv    []string
	cred    *syscall.Credential // the image's user
}

// reproduce lays out the image under a fresh root. ownedState false leaves the
// WORKDIR owned by root, as Docker's WORKDIR alone does.
func reproduce(t *testing.T, im image, ownedState bool) *container {
	t.Helper()
	root, err := os.MkdirTemp("", "kzimage-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &container{root: root, workdir: filepath.Join(root, im.Workdir)}
	bin := filepath.Join(root, im.BinaryDest)
	copyFile(t, testenv.KeyauthzBin(t), bin, 0o755)
	if err := os.MkdirAll(c.workdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("running as the image's user %d needs root (CI runs as root)", im.UID)
	}
	if ownedState {
		if err := os.Chown(c.workdir, im.UID, im.GID); err != nil {
			t.Fatal(err)
		}
	}
	c.cred = &syscall.Credential{Uid: uint32(im.UID), Gid: uint32(im.GID), Groups: []uint32{uint32(im.GID)}}
	c.argv = append(append([]string{bin}, im.Entrypoint[1:]...), im.Cmd...)
	return c
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// rewritePorts replaces each EXPOSEd port at the end of a CMD argument
// (":9001") with a free one, so parallel tests cannot collide; every EXPOSEd
// port must be found exactly once.
func rewritePorts(t *testing.T, argv []string, expose []int) (map[int]int, []string) {
	t.Helper()
	ports := map[int]int{}
	out := append([]string(nil), argv...)
	for _, p := range expose {
		free := testenv.FreePort(t)
		n := 0
		for i, a := range out {
			if s, ok := strings.CutSuffix(a, ":"+strconv.Itoa(p)); ok {
				out[i] = s + ":" + strconv.Itoa(free)
				n++
			}
		}
		if n != 1 {
			t.Fatalf("EXPOSE %d appears %d times in ENTRYPOINT+CMD %q, want once", p, n, argv)
		}
		ports[p] = free
	}
	return ports, out
}

// TestImageDefaultCommandServes runs the image's ENTRYPOINT+CMD as its USER in its
// WORKDIR and asserts it starts, answers health on both EXPOSEd ports from a
// non-loopback address, and keeps its state in the WORKDIR.
func TestImageDefaultCommandServes(t *testing.T) {
	_, im := readImage(t)
	c := reproduce(t, im, true)
	ports, argv := rewritePorts(t, c.argv, im.Expose)
	grpcPort, httpPort := ports[im.Expose[0]], ports[im.Expose[1]]
	p := testenv.StartProc(t, testenv.ProcOptions{Name: "keyauthz-image", Bin: argv[0], Args: argv[1:], Dir: c.workdir, Cred: c.cred})
	ready := "http://127.0.0.1:" + strconv.Itoa(httpPort) + "/readyz"
	if err := testenv.WaitReady(context.Background(), p, ready, 20*time.Second); err != nil {
		t.Fatalf("the image's default command (%q as uid %d in %s) did not become ready: %v", c.argv, im.UID, im.Workdir, err)
	}
	hosts := []string{"127.0.0.1"}
	if ip := nonLoopback(); ip != "" {
		hosts = append(hosts, ip) // what a kubelet probe or another pod would dial
	} else {
		t.Log("no non-loopback address on this machine: probing loopback only")
	}
	for _, h := range hosts {
		get(t, "http://"+net.JoinHostPort(h, strconv.Itoa(httpPort))+"/healthz")
		grpcServing(t, net.JoinHostPort(h, strconv.Itoa(grpcPort)))
	}
	for _, f := range []string{"keyauthz.db", "keyauthz.pepper"} {
		fi, err := os.Stat(filepath.Join(c.workdir, f))
		if err != nil {
			t.Errorf("%s in WORKDIR: %v", f, err)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != im.UID {
			t.Errorf("%s is owned by uid %d, want %d", f, st.Uid, im.UID)
		}
		if f == "keyauthz.pepper" && fi.Mode().Perm() != 0o600 {
			t.Errorf("keyauthz.pepper mode %#o, want 0600", fi.Mode().Perm())
		}
	}
	if err := p.Stop(10 * time.Second); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
}

// TestImageRootOwnedWorkdirFails shows the reproduction is faithful: with the
// WORKDIR left to root (the image before the fix), the same command fails
// with the error a user of that image saw.
func TestImageRootOwnedWorkdirFails(t *testing.T) {
	_, im := readImage(t)
	c := reproduce(t, im, false)
	_, argv := rewritePorts(t, c.argv, im.Expose)
	p := testenv.StartProc(t, testenv.ProcOptions{Name: "keyauthz-image", Bin: argv[0], Args: argv[1:], Dir: c.workdir, Cred: c.cred})
	code, ok := p.ExitCode(20 * time.Second)
	if !ok || code == 0 {
		t.Fatalf("keyauthz in a root-owned WORKDIR: exit %d (exited %v), want a failure", code, ok)
	}
	if out := p.Output(); !strings.Contains(out, "permission denied") {
		t.Errorf("output lacks \"permission denied\":\n%s", out)
	}
}

func get(t *testing.T, url string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
}

func grpcServing(t *testing.T, addr string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "envoy.service.auth.v3.Authorization"})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health at %s: %v %v, want SERVING", addr, r.GetStatus(), err)
	}
}

// nonLoopback returns an IPv4 address of this machine that is not loopback, or "".
func nonLoopback() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return ""
}
