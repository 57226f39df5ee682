// Package docker is the Docker sandbox provider: each rollout's agent runs
// in a container of the spec's image, on the local daemon or a remote one
// (DOCKER_HOST), reached through the Engine API.
//
// The Engine API is spoken directly over HTTP (the unix socket, TCP, or TCP
// with TLS): rlmrun uses a dozen endpoints, and the official client's
// dependency tree would be linked into the binary that starts as every
// rollout's agent and every Bash tool command, where start-up time is the
// budget.
package docker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Engine is a minimal Docker Engine API client.
type Engine struct {
	host    string // "unix:///var/run/docker.sock", "tcp://host:2376"
	version string // API version used in paths, e.g. "1.41"
	tls     *tls.Config
	http    *http.Client
}

// APIError is an error reply of the Engine API.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("docker: %s (HTTP %d)", e.Message, e.Status) }

// IsNotFound reports a 404 from the Engine API.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// NewEngineFromEnv connects as the docker CLI would: DOCKER_HOST,
// DOCKER_TLS_VERIFY, DOCKER_CERT_PATH and DOCKER_API_VERSION are honoured.
func NewEngineFromEnv(ctx context.Context) (*Engine, error) {
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	e := &Engine{host: host}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("DOCKER_HOST %q: %w", host, err)
	}
	if os.Getenv("DOCKER_TLS_VERIFY") != "" || os.Getenv("DOCKER_CERT_PATH") != "" {
		cfg, err := tlsFromEnv()
		if err != nil {
			return nil, err
		}
		e.tls = cfg
	}
	e.http = &http.Client{Transport: &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return e.dial(ctx) },
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}}
	if u.Scheme != "unix" && u.Scheme != "tcp" {
		return nil, fmt.Errorf("DOCKER_HOST %q: only unix:// and tcp:// are supported", host)
	}
	if v := os.Getenv("DOCKER_API_VERSION"); v != "" {
		e.version = v
		return e, nil
	}
	// The daemon's own version, as long as it is new enough for what rlmrun asks.
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(pctx, http.MethodGet, "http://docker/_ping", nil)
	resp, err := e.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot reach the Docker daemon at %s: %v", errUnreachable, host, err)
	}
	resp.Body.Close()
	e.version = resp.Header.Get("Api-Version")
	if e.version == "" {
		e.version = "1.41"
	}
	if versionLess(e.version, "1.41") {
		return nil, fmt.Errorf("the Docker daemon speaks API %s; rlmrun needs 1.41 or newer", e.version)
	}
	return e, nil
}

var errUnreachable = errors.New("docker daemon unreachable")

func versionLess(a, b string) bool {
	var am, an, bm, bn int
	fmt.Sscanf(a, "%d.%d", &am, &an)
	fmt.Sscanf(b, "%d.%d", &bm, &bn)
	return am < bm || (am == bm && an < bn)
}

func tlsFromEnv() (*tls.Config, error) {
	dir := os.Getenv("DOCKER_CERT_PATH")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".docker")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("docker TLS client certificate in %s: %w", dir, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if ca, err := os.ReadFile(filepath.Join(dir, "ca.pem")); err == nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		cfg.RootCAs = pool
	}
	if os.Getenv("DOCKER_TLS_VERIFY") == "" {
		cfg.InsecureSkipVerify = true
	}
	return cfg, nil
}

func (e *Engine) dial(ctx context.Context) (net.Conn, error) {
	u, _ := url.Parse(e.host)
	var d net.Dialer
	if u.Scheme == "unix" {
		return d.DialContext(ctx, "unix", u.Path)
	}
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil || e.tls == nil {
		return c, err
	}
	cfg := e.tls.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(u.Host)
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// Host is the daemon's address.
func (e *Engine) Host() string { return e.host }

func (e *Engine) path(p string) string { return "http://docker/v" + e.version + p }

// do sends a request and decodes a JSON reply into out (when not nil).
func (e *Engine) do(ctx context.Context, method, p string, q url.Values, body any, out any) error {
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case io.Reader:
		rd, ctype = b, "application/x-tar"
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return err
		}
		rd, ctype = bytes.NewReader(raw), "application/json"
	}
	u := e.path(p)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return fmt.Errorf("docker %s %s: %w", method, p, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return apiError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func apiError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &m) != nil || m.Message == "" {
		m.Message = strings.TrimSpace(string(raw))
	}
	return &APIError{Status: resp.StatusCode, Message: m.Message}
}

// ImageExists reports whether the daemon has the image.
func (e *Engine) ImageExists(ctx context.Context, ref string) (bool, error) {
	err := e.do(ctx, http.MethodGet, "/images/"+ref+"/json", nil, nil, nil)
	if IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// Pull pulls an image, printing progress to w (one line per change).
func (e *Engine) Pull(ctx context.Context, ref string, w io.Writer) error {
	name, tag := splitRef(ref)
	q := url.Values{"fromImage": {name}, "tag": {tag}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.path("/images/create")+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if auth := registryAuth(); auth != "" {
		req.Header.Set("X-Registry-Auth", auth)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("pull %s: %w", ref, apiError(resp))
	}
	dec := json.NewDecoder(resp.Body)
	last := ""
	for {
		var m struct {
			Status   string `json:"status"`
			ID       string `json:"id"`
			Progress string `json:"progress"`
			Error    string `json:"error"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("pull %s: %w", ref, err)
		}
		if m.Error != "" {
			return fmt.Errorf("pull %s: %s", ref, m.Error)
		}
		line := strings.TrimSpace(m.ID + " " + m.Status)
		if line != last && w != nil {
			fmt.Fprintf(w, "pull %s: %s\n", ref, line)
			last = line
		}
	}
}

// registryAuth passes RLMRUN_DOCKER_AUTH (a base64url-encoded JSON auth
// config, as the Engine API's X-Registry-Auth wants it) through for pulls
// from private registries.
func registryAuth() string { return os.Getenv("RLMRUN_DOCKER_AUTH") }

// splitRef splits "name:tag" (a registry port is not a tag).
func splitRef(ref string) (string, string) {
	if i := strings.LastIndex(ref, "@"); i >= 0 {
		return ref[:i], ref[i+1:]
	}
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return ref, "latest"
	}
	return ref[:i], ref[i+1:]
}

// hijack sends a request that upgrades the connection to a raw stream
// (container attach, exec start) and returns the connection.
func (e *Engine) hijack(ctx context.Context, p string, body any) (net.Conn, *bufio.Reader, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, nil, err
	}
	conn, err := e.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	req, _ := http.NewRequest(http.MethodPost, e.path(p), bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "tcp")
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode != http.StatusOK {
		defer conn.Close()
		return nil, nil, apiError(resp)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, br, nil
}
