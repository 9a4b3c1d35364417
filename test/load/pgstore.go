package load

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/postgres"
	"github.com/keyauthz/keyauthz/test/testenv"
)

// pgSettings are the harness's own PostgreSQL settings (scenario b-pg). Not
// durable (fsync, synchronous_commit and full_page_writes off; wal_level
// minimal, so the bulk load into tables truncated in its transaction writes
// no WAL); a shared_buffers of a size a 10M-key deployment would give it;
// checkpoints far enough apart that none falls in a measured window. The
// query planner, JIT and everything else keep PostgreSQL's defaults.
var pgSettings = []string{
	"listen_addresses=127.0.0.1",
	"unix_socket_directories=",
	"fsync=off",
	"synchronous_commit=off",
	"full_page_writes=off",
	"wal_level=minimal",
	"max_wal_senders=0",
	"shared_buffers=1GB",
	"maintenance_work_mem=512MB",
	"max_wal_size=8GB",
	"checkpoint_timeout=1h",
	"max_connections=100",
}

// pgSettingsNote lists pgSettings for the report, less the listening ones.
func pgSettingsNote() string {
	var out []string
	for _, s := range pgSettings {
		if !strings.HasPrefix(s, "listen_addresses=") && !strings.HasPrefix(s, "unix_socket_directories=") {
			out = append(out, s)
		}
	}
	return strings.Join(out, ", ")
}

// pgVersionOf returns the major version of p's data directory ("?" if unknown).
func pgVersionOf(p *pgServer) string {
	b, err := os.ReadFile(filepath.Join(p.data(), "PG_VERSION"))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// pgServer is a PostgreSQL server the harness runs on a data directory of its
// cache (scenario b-pg): stopped and started again on the same data.
type pgServer struct {
	bin  string              // directory holding initdb and postgres
	dir  string              // holds data/ (and the password file)
	log  string              // server log
	cred *syscall.Credential // the postgres system user when we are root
	port int
	proc *testenv.Proc // nil while stopped
}

// newPGServer prepares (without starting) a server whose data lives in dir
// and whose log is logPath.
func newPGServer(dir, logPath string) (*pgServer, error) {
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := pgCredential()
	if err != nil {
		return nil, err
	}
	return &pgServer{bin: bin, dir: dir, log: logPath, cred: cred}, nil
}

func (p *pgServer) data() string { return filepath.Join(p.dir, "data") }

// url returns the connection URL of database db.
func (p *pgServer) url(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(testenv.PGUser, testenv.PGPassword),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// initdb creates dir and a fresh data directory in it: superuser
// testenv.PGUser with testenv.PGPassword (SCRAM over TCP, as in production).
func (p *pgServer) initdb() error {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return err
	}
	pw := filepath.Join(p.dir, "pwfile")
	if err := os.WriteFile(pw, []byte(testenv.PGPassword+"\n"), 0o600); err != nil {
		return err
	}
	if p.cred != nil {
		for _, f := range []string{p.dir, pw} {
			if err := os.Chown(f, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
				return fmt.Errorf("postgres: chown %s: %w", f, err)
			}
		}
	}
	cmd := exec.Command(filepath.Join(p.bin, "initdb"), "-D", p.data(), "-U", testenv.PGUser, "--pwfile", pw,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	return nil
}

// start runs postgres on the data directory on a free loopback port, on cpus
// ("" for any), and waits until it accepts connections (a restart after an
// interrupted run may first replay its WAL). StopAll stops it too.
func (p *pgServer) start(ctx context.Context, cpus string) error {
	if p.proc != nil {
		return nil
	}
	var err error
	if p.port, err = testenv.TryFreePort(); err != nil {
		return err
	}
	args := []string{"-D", p.data(), "-p", strconv.Itoa(p.port)}
	for _, s := range pgSettings {
		args = append(args, "-c", s)
	}
	proc, err := testenv.TryStartProc(testenv.ProcOptions{Name: "postgres", Log: p.log, CPUs: cpus, Cred: p.cred,
		Bin: filepath.Join(p.bin, "postgres"), Args: args})
	if err != nil {
		return err
	}
	onStopAll(func() { pgStop(proc) })
	err = testenv.PollContext(ctx, 2*time.Minute, func() error {
		if done, werr := proc.Exited(); done {
			return fmt.Errorf("exited (%v)", werr)
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		c, err := pgx.Connect(cctx, p.url("postgres"))
		if err != nil {
			return err
		}
		return c.Close(cctx)
	})
	if err != nil {
		pgStop(proc)
		return fmt.Errorf("postgres on port %d not ready: %v\n%s", p.port, err, testenv.Tail(p.log, 3000))
	}
	p.proc = proc
	return nil
}

// stop shuts the server down (a fast shutdown: clients disconnected, a
// checkpoint written) and waits for it.
func (p *pgServer) stop() {
	if p.proc != nil {
		pgStop(p.proc)
		p.proc = nil
	}
}

// pgStop sends postgres SIGINT (fast shutdown) and waits up to a minute (the
// shutdown checkpoint writes the dirty shared buffers), then kills it.
func pgStop(proc *testenv.Proc) {
	if done, _ := proc.Exited(); done {
		return
	}
	_ = proc.Signal(syscall.SIGINT)
	select {
	case <-proc.Done():
	case <-time.After(time.Minute):
		proc.Kill()
	}
}

// createdb creates database name.
func (p *pgServer) createdb(ctx context.Context, name string) error {
	c, err := pgx.Connect(ctx, p.url("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}

// pgBinDir finds initdb and postgres as testenv does: $KEYAUTHZ_PG_BIN, the
// newest /usr/lib/postgresql/*/bin, then PATH.
func pgBinDir() (string, error) {
	has := func(dir string) bool {
		_, err1 := os.Stat(filepath.Join(dir, "initdb"))
		_, err2 := os.Stat(filepath.Join(dir, "postgres"))
		return err1 == nil && err2 == nil
	}
	if dir := os.Getenv(testenv.PGBinEnv); dir != "" {
		if !has(dir) {
			return "", fmt.Errorf("%s (%s=%s holds no initdb and postgres)", testenv.PGHelp, testenv.PGBinEnv, dir)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	major := func(d string) int { v, _ := strconv.Atoi(filepath.Base(filepath.Dir(d))); return v }
	slices.SortFunc(dirs, func(a, b string) int { return major(b) - major(a) })
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New(testenv.PGHelp)
}

// pgCredential returns the postgres system user's credential when we are
// root (initdb and postgres refuse to run as root), else nil.
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres system user (%v); %s", err, testenv.PGHelp)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// pgSeedTimes is how long each step of seedPG took.
type pgSeedTimes struct {
	Load, Index, Analyze time.Duration
}

// seedPG fills the keys and digests tables of the migrated database at dbURL
// with n keys laid out as seed lays out the SQLite store (same ids,
// workspaces, names, rate limits; digests from apikey.Hasher under pepper),
// fast: the digests are computed in Go while the keys stream in; both tables
// are truncated and loaded with COPY … FREEZE in one transaction (with
// wal_level=minimal no WAL is written, and the rows are frozen and visible at
// once, so no vacuum rewrites them later), foreign-key triggers off (the rows
// are consistent by construction), the primary keys filled in key order and
// every other index of the two tables dropped and rebuilt afterwards (two at
// a time), then VACUUM ANALYZE. The schema stays the migrations' own.
func seedPG(ctx context.Context, dbURL string, n int, gen keyGen, pepper []byte) (pgSeedTimes, error) {
	var t pgSeedTimes
	h, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		return t, err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return t, err
	}
	defer conn.Close(context.Background())
	start := time.Now()

	// Digests, computed and sorted while the keys load.
	digc := make(chan []pgDigest, 1)
	go func() { digc <- pgDigests(gen, h, n) }()
	defer func() {
		if digc != nil {
			<-digc
		}
	}()

	var idx []string // CREATE INDEX statements of the dropped indexes
	rows, err := conn.Query(ctx, `SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
		FROM pg_index i WHERE i.indrelid IN ('keys'::regclass, 'digests'::regclass)
		AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
		ORDER BY 1`)
	if err != nil {
		return t, fmt.Errorf("list indexes: %w", err)
	}
	var drop []string
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			rows.Close()
			return t, err
		}
		drop, idx = append(drop, name), append(idx, def)
	}
	if err := rows.Err(); err != nil {
		return t, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return t, err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	stmts := []string{`SET LOCAL session_replication_role = replica`, `TRUNCATE keys, digests CASCADE`}
	for _, d := range drop {
		stmts = append(stmts, "DROP INDEX "+d)
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return t, fmt.Errorf("%s: %w", s, err)
		}
	}
	pc := conn.PgConn()
	if _, err := pc.CopyFrom(ctx, &pgRows{n: n, row: func(b []byte, i int) []byte { return appendKeyRow(b, gen, i) }},
		`COPY keys (id, workspace, name, display, created_at, rate_limit) FROM STDIN WITH (FREEZE)`); err != nil {
		return t, fmt.Errorf("copy keys: %w", err)
	}
	ds := <-digc
	digc = nil
	if _, err := pc.CopyFrom(ctx, &pgRows{n: n, row: func(b []byte, i int) []byte { return appendDigestRow(b, ds[i]) }},
		`COPY digests (digest, key_id, pepper_version) FROM STDIN WITH (FREEZE)`); err != nil {
		return t, fmt.Errorf("copy digests: %w", err)
	}
	ds = nil
	if err := tx.Commit(ctx); err != nil {
		return t, err
	}
	t.Load = time.Since(start)

	// The dropped indexes, two builds at a time (one per connection).
	start = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conn
			if w > 0 {
				if c, errs[w] = pgx.Connect(ctx, dbURL); errs[w] != nil {
					return
				}
				defer c.Close(context.Background())
			}
			for j := w; j < len(idx); j += len(errs) {
				if _, err := c.Exec(ctx, idx[j]); err != nil {
					errs[w] = fmt.Errorf("%s: %w", idx[j], err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return t, err
	}
	t.Index = time.Since(start)
	start = time.Now()
	if _, err := conn.Exec(ctx, `VACUUM (ANALYZE) keys, digests`); err != nil {
		return t, fmt.Errorf("vacuum analyze: %w", err)
	}
	t.Analyze = time.Since(start)
	return t, nil
}

// pgDigest is one stored key's digest and index.
type pgDigest struct {
	sum [32]byte
	i   uint32
}

// pgDigests returns the digests of stored keys [0, n), sorted by digest (so
// the digests primary key is filled in order), computed on every CPU the
// process may use.
func pgDigests(gen keyGen, h *apikey.Hasher, n int) []pgDigest {
	ds := make([]pgDigest, n)
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var kb [128]byte
			for i := w * n / workers; i < (w+1)*n/workers; i++ {
				k := gen.appendKey(kb[:0], streamStored, uint64(i))
				ds[i] = pgDigest{sum: h.Sum(string(k)).Sum, i: uint32(i)}
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(ds, func(a, b pgDigest) int {
		x, y := binary.BigEndian.Uint64(a.sum[:8]), binary.BigEndian.Uint64(b.sum[:8])
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
		return bytes.Compare(a.sum[8:], b.sum[8:])
	})
	return ds
}

// seededCreatedAt is every seeded key's created_at (Unix microseconds), as in seed.
var seededCreatedAt = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()

// appendKeyRow appends stored key i's keys row in COPY text format: id,
// workspace, name, display, created_at, rate_limit (seed's layout).
func appendKeyRow(b []byte, gen keyGen, i int) []byte {
	b = append(b, keyID(uint64(i))...)
	b = append(b, "\tws_"...)
	ws := strconv.AppendUint(nil, uint64(i/10), 10)
	for range 7 - len(ws) {
		b = append(b, '0')
	}
	b = append(b, ws...)
	b = append(b, "\tk"...)
	b = strconv.AppendInt(b, int64(i%10), 10)
	b = append(b, '\t')
	var kb [128]byte
	k := gen.appendKey(kb[:0], streamStored, uint64(i))
	b = append(b, k[:len(gen.prefix)+5]...)
	b = append(b, '\t')
	b = strconv.AppendInt(b, seededCreatedAt, 10)
	b = append(b, '\t')
	if i >= HitKeys && i < HitKeys+LimitedKeys {
		b = append(b, LimitedRate...)
	}
	return append(b, '\n')
}

// appendDigestRow appends d's digests row in COPY text format: the digest as
// bytea hex input (its backslash escaped for COPY), key id, pepper version 1.
func appendDigestRow(b []byte, d pgDigest) []byte {
	b = append(b, `\\x`...)
	b = hex.AppendEncode(b, d.sum[:])
	b = append(b, '\t')
	b = append(b, keyID(uint64(d.i))...)
	return append(b, "\t1\n"...)
}

// pgRows is COPY input made on demand: rows [0, n) rendered by row.
type pgRows struct {
	n, i int
	row  func(b []byte, i int) []byte
	buf  []byte
	off  int
}

// Read fills p with the next rows.
func (r *pgRows) Read(p []byte) (int, error) {
	if r.off == len(r.buf) {
		if r.i == r.n {
			return 0, io.EOF
		}
		r.buf, r.off = r.buf[:0], 0
		for ; r.i < r.n && len(r.buf) < 256<<10; r.i++ {
			r.buf = r.row(r.buf, r.i)
		}
	}
	c := copy(p, r.buf[r.off:])
	r.off += c
	return c, nil
}

// checkSeededPG verifies that the database at dbURL holds n keys and n
// digests and that the first, a limited and the last key resolve through
// the postgres store's Lookup under pepper: a cached database from an earlier
// run is reused only then.
func checkSeededPG(ctx context.Context, dbURL string, n int, gen keyGen, pepper []byte) error {
	st, err := postgres.Open(ctx, dbURL, zap.NewNop(), postgres.Options{Existing: true})
	if err != nil {
		return err
	}
	defer st.Close()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var keys, digests int
	if err := conn.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM keys), (SELECT COUNT(*) FROM digests)`).Scan(&keys, &digests); err != nil {
		return err
	}
	if keys != n || digests != n {
		return fmt.Errorf("database holds %d keys and %d digests, want %d", keys, digests, n)
	}
	h, err := apikey.NewHasher(map[int][]byte{1: pepper}, 1)
	if err != nil {
		return err
	}
	for _, i := range []uint64{0, HitKeys, uint64(n - 1)} {
		k, err := st.Lookup(ctx, h.Sum(gen.key(streamStored, i)))
		if err != nil {
			return fmt.Errorf("key %d: %w", i, err)
		}
		if k.ID != keyID(i) {
			return fmt.Errorf("key %d: id %s, want %s", i, k.ID, keyID(i))
		}
	}
	return nil
}

// pgMigrate runs `keyauthz migrate` (the binary under test) against the
// database at dbURL, with a config like the scenarios' but
// store.statement_timeout bpgStatementTimeout: like serve, migrate counts the
// stored keys by pepper version first, which at 10M keys takes longer than
// the default 2 s (scenario b-pg reports that for serve).
func (r *runner) pgMigrate(ctx context.Context, dbURL string) error {
	cfg := filepath.Join(r.o.Work, "b-pg-migrate.yaml")
	c := KeyauthzConfig{StoreURL: dbURL, Pepper: r.pepper, StatementTimeout: bpgStatementTimeout}
	if err := os.WriteFile(cfg, []byte(c.yaml("127.0.0.1:0", "127.0.0.1:0")), 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, r.o.KeyauthzBin, "migrate", "--config", cfg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("keyauthz migrate: %v\n%s", err, out)
	}
	return nil
}

// pgStore returns the harness's PostgreSQL, running on the client's CPU, with
// the PGKeys-key database migrated by the binary under test: the data
// directory is kept in the cache directory and reused when a check of its
// rows passes; otherwise it is created and seeded (seedPG), which the run's
// facts and log time.
func (r *runner) pgStore(ctx context.Context) (*pgServer, string, error) {
	if err := os.MkdirAll(r.o.Cache, 0o755); err != nil {
		return nil, "", err
	}
	dir := filepath.Join(r.o.Cache, fmt.Sprintf("pg-%d-seed%d", r.o.PGKeys, r.o.Seed))
	p, err := newPGServer(dir, filepath.Join(r.o.Work, "postgres.log"))
	if err != nil {
		return nil, "", err
	}
	marker := filepath.Join(dir, "seeded")
	reused := false
	if b, err := os.ReadFile(marker); err == nil {
		err := p.start(ctx, "")
		if err == nil {
			if err = r.pgMigrate(ctx, p.url(testenv.PGDatabase)); err == nil {
				err = checkSeededPG(ctx, p.url(testenv.PGDatabase), r.o.PGKeys, r.gen, Pepper(r.o.Seed))
			}
		}
		if err == nil {
			reused = true
			r.logf("  reusing seeded PostgreSQL database %s (seeded in %s s by an earlier run)", dir, strings.TrimSpace(string(b)))
			if s, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64); err == nil {
				r.res.Facts["bpg_seed_seconds_earlier"] = s
			}
		} else {
			r.logf("  cached PostgreSQL database %s not usable: seeding again: %v", dir, err)
			p.stop()
		}
	}
	if !reused {
		if err := os.RemoveAll(dir); err != nil {
			return nil, "", err
		}
		r.logf("  seeding %d keys into a new PostgreSQL database in %s (cached for later runs)", r.o.PGKeys, dir)
		start := time.Now()
		if err := p.initdb(); err != nil {
			return nil, "", err
		}
		// Unpinned while seeding: the server works on one CPU while this
		// process computes digests on the other.
		if err := p.start(ctx, ""); err != nil {
			return nil, "", err
		}
		if err := p.createdb(ctx, testenv.PGDatabase); err != nil {
			p.stop()
			return nil, "", err
		}
		if err := r.pgMigrate(ctx, p.url(testenv.PGDatabase)); err != nil {
			p.stop()
			return nil, "", err
		}
		ready := time.Since(start)
		t, err := seedPG(ctx, p.url(testenv.PGDatabase), r.o.PGKeys, r.gen, Pepper(r.o.Seed))
		if err != nil {
			p.stop()
			return nil, "", fmt.Errorf("seed PostgreSQL: %w", err)
		}
		total := time.Since(start)
		r.logf("  seeded in %v: initdb, start and keyauthz migrate %v; COPY of keys and digests %v; index builds %v; VACUUM ANALYZE %v",
			total.Round(time.Millisecond), ready.Round(time.Millisecond), t.Load.Round(time.Millisecond), t.Index.Round(time.Millisecond), t.Analyze.Round(time.Millisecond))
		f := r.res.Facts
		f["bpg_seed_seconds"] = total.Seconds()
		f["bpg_seed_setup_seconds"] = ready.Seconds()
		f["bpg_seed_load_seconds"] = t.Load.Seconds()
		f["bpg_seed_index_seconds"] = t.Index.Seconds()
		f["bpg_seed_analyze_seconds"] = t.Analyze.Seconds()
		if err := os.WriteFile(marker, []byte(strconv.FormatFloat(total.Seconds(), 'f', 1, 64)+"\n"), 0o600); err != nil {
			p.stop()
			return nil, "", err
		}
	}
	// Measured with the server on the client's CPU, as Redis in scenario c,
	// so the server under test has its CPU to itself.
	p.stop()
	if err := p.start(ctx, r.cpuCli); err != nil {
		return nil, "", err
	}
	return p, p.url(testenv.PGDatabase), nil
}
