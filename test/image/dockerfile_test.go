package image

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// distrolessUsers are the users of the distroless base images' /etc/passwd.
var distrolessUsers = map[string]int{"root": 0, "nonroot": 65532, "nobody": 65534}

// image is what the Dockerfile's final stage says the image runs.
type image struct {
	Base       string
	UID, GID   int
	Workdir    string
	Entrypoint []string
	Cmd        []string
	Expose     []int
	BinaryDest string // where the keyauthz binary is copied
	// StateOwned is true when a COPY --chown of the final stage makes Workdir
	// owned by UID:GID.
	StateOwned bool
}

// readImage reads the final stage of the repository's Dockerfile.
func readImage(t *testing.T) (*testenv.Dockerfile, image) {
	t.Helper()
	root := testenv.RepoRoot(t)
	d, err := testenv.ParseDockerfile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	f := d.Final()
	im := image{Base: f.From, Workdir: f.Last("WORKDIR")}
	user := f.Last("USER")
	if user == "" {
		t.Fatalf("the final stage has no USER: the image would run as root")
	}
	u, g, _ := strings.Cut(user, ":")
	if g == "" {
		g = u
	}
	im.UID, im.GID = lookup(t, u), lookup(t, g)
	if im.Entrypoint, err = f.Exec("ENTRYPOINT"); err != nil {
		t.Fatal(err)
	}
	if im.Cmd, err = f.Exec("CMD"); err != nil {
		t.Fatal(err)
	}
	for _, e := range f.All("EXPOSE") {
		for _, p := range strings.Fields(e.Args) {
			n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
			if err != nil {
				t.Fatalf("EXPOSE %s: %v", p, err)
			}
			im.Expose = append(im.Expose, n)
		}
	}
	for _, c := range f.All("COPY") {
		fields := strings.Fields(c.Args)
		var chown string
		var rest []string
		for _, x := range fields {
			if v, ok := strings.CutPrefix(x, "--chown="); ok {
				chown = v
			} else if !strings.HasPrefix(x, "--") {
				rest = append(rest, x)
			}
		}
		if len(rest) < 2 {
			continue
		}
		src, dst := rest[0], rest[len(rest)-1]
		if filepath.Base(src) == "keyauthz" {
			im.BinaryDest = dst
		}
		if dst == im.Workdir && chown != "" {
			cu, cg, _ := strings.Cut(chown, ":")
			if cg == "" {
				cg = cu
			}
			im.StateOwned = lookup(t, cu) == im.UID && lookup(t, cg) == im.GID
		}
	}
	return d, im
}

func lookup(t *testing.T, name string) int {
	t.Helper()
	if n, err := strconv.Atoi(name); err == nil {
		return n
	}
	id, ok := distrolessUsers[name]
	if !ok {
		t.Fatalf("user %q is not one of the distroless images' users %v", name, distrolessUsers)
	}
	return id
}

// TestImageShape checks what the final stage promises before the e2e test runs it:
// a non-root user, a WORKDIR that user owns, ENTRYPOINT the copied binary, CMD serve,
// listen flags on the EXPOSEd ports and every interface.
func TestImageShape(t *testing.T) {
	_, im := readImage(t)
	if !strings.HasPrefix(im.Base, "gcr.io/distroless/static") {
		t.Errorf("final stage FROM %s: the tests assume distroless static's users", im.Base)
	}
	if im.UID == 0 || im.GID == 0 {
		t.Errorf("USER %d:%d: want non-root", im.UID, im.GID)
	}
	if im.Workdir == "" || !filepath.IsAbs(im.Workdir) {
		t.Errorf("WORKDIR %q: want an absolute state directory", im.Workdir)
	}
	if !im.StateOwned {
		t.Errorf("WORKDIR %s is not made by a COPY --chown=%d:%d: Docker creates it owned by root and serve's default store and pepper cannot be created there",
			im.Workdir, im.UID, im.GID)
	}
	if len(im.Entrypoint) != 1 || im.Entrypoint[0] != im.BinaryDest {
		t.Errorf("ENTRYPOINT %q: want [%q], where the binary is copied", im.Entrypoint, im.BinaryDest)
	}
	if len(im.Cmd) == 0 || im.Cmd[0] != "serve" {
		t.Errorf("CMD %q: want serve first", im.Cmd)
	}
	ports := listenPorts(t, im.Cmd)
	if len(ports) != len(im.Expose) {
		t.Errorf("CMD listens on ports %v, EXPOSE says %v", ports, im.Expose)
	}
	for _, p := range im.Expose {
		if !ports[p] {
			t.Errorf("EXPOSE %d: CMD does not listen on it (%q)", p, im.Cmd)
		}
	}
}

// listenPorts returns the ports of CMD's --grpc-listen and --http-listen
// flags, failing when one binds loopback only (kubelet probes could not reach it).
func listenPorts(t *testing.T, cmd []string) map[int]bool {
	t.Helper()
	out := map[int]bool{}
	for i, a := range cmd {
		flag, v, ok := strings.Cut(a, "=")
		if !ok && i+1 < len(cmd) {
			v = cmd[i+1]
		}
		if flag != "--grpc-listen" && flag != "--http-listen" {
			continue
		}
		host, p, err := net.SplitHostPort(v)
		if err != nil {
			t.Errorf("CMD %s %s: %v", flag, v, err)
			continue
		}
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			t.Errorf("CMD %s %s: loopback only, unreachable from outside the container", flag, v)
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			t.Errorf("CMD %s %s: no port", flag, v)
			continue
		}
		out[n] = true
	}
	if len(out) != 2 {
		t.Errorf("CMD %q: want --grpc-listen and --http-listen on every interface", cmd)
	}
	return out
}

// buildCmd returns the go build command of a shell text (Dockerfile RUN or
// test/run.sh), with the Version value and the output path replaced by
// placeholders so the two can be compared.
func buildCmd(t *testing.T, what, s string) string {
	t.Helper()
	s = strings.ReplaceAll(s, "\\\n", " ")
	m := regexp.MustCompile(`CGO_ENABLED=0 go build [^\n]*`).FindString(s)
	if m == "" {
		t.Fatalf("%s: no `CGO_ENABLED=0 go build` line", what)
	}
	m = regexp.MustCompile(`\.Version=[^ "]+`).ReplaceAllString(m, ".Version=V")
	m = regexp.MustCompile(`-o +\S+`).ReplaceAllString(m, "-o OUT")
	return strings.Join(strings.Fields(m), " ")
}

// TestBuildMatchesRunSh keeps the Dockerfile's build step and test/run.sh's
// build() the same command, so the tests run the binary the image ships.
func TestBuildMatchesRunSh(t *testing.T) {
	root := testenv.RepoRoot(t)
	d, _ := readImage(t)
	var docker string
	for _, st := range d.Stages {
		for _, in := range st.All("RUN") {
			if strings.Contains(in.Args, "go build") {
				docker = in.Args
			}
		}
	}
	sh, err := os.ReadFile(filepath.Join(root, "test", "run.sh"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := buildCmd(t, "Dockerfile", docker), buildCmd(t, "test/run.sh", string(sh))
	if a != b {
		t.Errorf("build commands differ:\n  Dockerfile:  %s\n  test/run.sh: %s", a, b)
	}
}

// TestDockerignore checks that the build context leaves out the local state, the
// virtualenv and binaries, and keeps the sources. Patterns are matched as Docker
// does: from the context root, a pattern matching a directory excludes all under it.
func TestDockerignore(t *testing.T) {
	root := testenv.RepoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	var pats []*regexp.Regexp
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf(".dockerignore: exception %q: this test does not handle them", l)
		}
		pats = append(pats, dockerPattern(strings.TrimPrefix(l, "/")))
	}
	ignored := func(p string) bool {
		parts := strings.Split(p, "/")
		for i := 1; i <= len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			for _, re := range pats {
				if re.MatchString(prefix) {
					return true
				}
			}
		}
		return false
	}
	for _, p := range []string{".venv/bin/python", ".git/HEAD", "keyauthz", "cmd/keyauthz/keyauthz",
		"keyauthz.db", "keyauthz.db-wal", "keyauthz.db-shm", "keyauthz.pepper", "test/e2e/keyauthz.db",
		"extauthz/app/keyauthz.pepper", "extauthz/app/app.test", "test/load/out/run.json", "admin.token", "config/admin.token"} {
		if !ignored(p) {
			t.Errorf(".dockerignore lets %s into the build context", p)
		}
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/keyauthz/main.go", "extauthz/app/app.go",
		"extauthz/admin/openapi.yaml", "config/config.go"} {
		if ignored(p) {
			t.Errorf(".dockerignore leaves out %s, which the build needs", p)
		}
	}
}

// dockerPattern turns a .dockerignore pattern into a regexp over slash paths:
// * and ? stay within a path element, **/ spans any number of them.
func dockerPattern(p string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(p); i++ {
		switch {
		case strings.HasPrefix(p[i:], "**/"):
			b.WriteString("(.*/)?")
			i += 2
		case strings.HasPrefix(p[i:], "**"):
			b.WriteString(".*")
			i++
		case p[i] == '*':
			b.WriteString("[^/]*")
		case p[i] == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}
