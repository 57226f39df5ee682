package kubernetes

import (
	"bufio"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNames(t *testing.T) {
	for _, in := range []string{"rlmrun-20261126-101500-a1b2c3-solve_1-0a1b2c3d", "rlmrun-X-Ünïcode#3", strings.Repeat("very-long-", 20)} {
		n := podName(in)
		if len(n) > 63 || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || strings.HasPrefix(n, "-") {
			t.Errorf("podName(%q) = %q", in, n)
		}
	}
	if podName("rlmrun-r-a#1") == podName("rlmrun-r-a_1") {
		t.Error("two sandboxes, one pod name")
	}
	if v := labelValue("r#1 " + strings.Repeat("x", 80)); len(v) > 63 || strings.ContainsAny(v, "# ") {
		t.Errorf("labelValue = %q", v)
	}
}

// wsEcho is a server speaking the exec channel protocol: what comes on
// stdin goes back on stdout, "err" on stderr, then a status.
func wsEcho(t *testing.T, protocol string) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Sec-WebSocket-Protocol"), protocol) {
			http.Error(w, "no protocol", http.StatusBadRequest)
			return
		}
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + wsGUID))
		h, _ := w.(http.Hijacker)
		conn, rw, err := h.Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
		rw.WriteString("Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\nSec-WebSocket-Protocol: " + protocol + "\r\n\r\n")
		rw.Flush()
		c := &wsConn{rw: conn, br: bufio.NewReader(rw)}
		send := func(b []byte) { // server frames are not masked
			hdr := []byte{0x80 | opBinary}
			if len(b) < 126 {
				hdr = append(hdr, byte(len(b)))
			} else {
				hdr = append(hdr, 126)
				hdr = binary.BigEndian.AppendUint16(hdr, uint16(len(b)))
			}
			conn.Write(append(hdr, b...))
		}
		send([]byte{chanStdout}) // channels open empty, as the API server does
		conn.Write([]byte{0x80 | opPing, 0})
		for {
			msg, err := c.readMessage()
			if err != nil {
				return
			}
			switch {
			case msg[0] == chanStdin && string(msg[1:]) == "quit":
				send([]byte{chanStderr, 'e', 'r', 'r'})
				send(append([]byte{chanError}, []byte(`{"status":"Failure","message":"command terminated with non-zero exit code","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}`)...))
				conn.Write([]byte{0x80 | opClose, 0})
				return
			case msg[0] == chanStdin:
				send(append([]byte{chanStdout}, msg[1:]...))
			}
		}
	}))
}

func TestExecStream(t *testing.T) {
	for _, proto := range []string{protocolV5, protocolV4} {
		t.Run(proto, func(t *testing.T) {
			srv := wsEcho(t, proto)
			defer srv.Close()
			a := newAPIClient(&restConfig{server: srv.URL, tls: &tls.Config{}}, 0)
			a.upgrade = srv.Client()
			s, err := a.exec(t.Context(), "ns", "pod", "c", []string{"sh", "-c", "cat"})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.v5 != (proto == protocolV5) {
				t.Errorf("v5 = %v", s.v5)
			}
			big := strings.Repeat("0123456789", 5000)
			go func() {
				_, _ = s.Write([]byte(big))
				_, _ = s.Write([]byte("quit"))
			}()
			got, err := io.ReadAll(s)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if string(got) != big {
				t.Errorf("echoed %d bytes, sent %d", len(got), len(big))
			}
			err = s.wait(t.Context())
			if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "err") {
				t.Errorf("status %v", err)
			}
			if d := s.Diagnostics(); !strings.Contains(d, "err") {
				t.Errorf("diagnostics %q", d)
			}
		})
	}
}

func TestKubeconfigLoading(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("a", `apiVersion: v1
kind: Config
current-context: one
clusters:
- name: c1
  cluster: {server: "https://one.example:6443/", insecure-skip-tls-verify: true}
users:
- name: u1
  user: {token: tok-one}
contexts:
- name: one
  context: {cluster: c1, user: u1, namespace: team}
`)
	b := write("b", `apiVersion: v1
kind: Config
current-context: two
clusters:
- name: c1
  cluster: {server: "https://shadowed.example"}
- name: c2
  cluster: {server: "https://two.example"}
users:
- name: u2
  user: {tokenFile: tokfile}
contexts:
- name: two
  context: {cluster: c2, user: u2}
`)
	write("tokfile", "tok-two\n")
	t.Setenv("KUBECONFIG", a+string(filepath.ListSeparator)+b+string(filepath.ListSeparator)+filepath.Join(dir, "missing"))
	rc, err := loadConfig("", "")
	if err != nil {
		t.Fatal(err)
	}
	if rc.server != "https://one.example:6443" || rc.namespace != "team" || !rc.tls.InsecureSkipVerify {
		t.Errorf("first file's context: %+v", rc)
	}
	req, _ := http.NewRequest("GET", "https://x", nil)
	if err := rc.auth(req); err != nil || req.Header.Get("Authorization") != "Bearer tok-one" {
		t.Errorf("token: %q %v", req.Header.Get("Authorization"), err)
	}
	rc, err = loadConfig("", "two")
	if err != nil {
		t.Fatal(err)
	}
	req, _ = http.NewRequest("GET", "https://x", nil)
	if rc.server != "https://two.example" || rc.auth(req) != nil || req.Header.Get("Authorization") != "Bearer tok-two" {
		t.Errorf("second file's context: %+v %q", rc, req.Header.Get("Authorization"))
	}
	if _, err := loadConfig("", "nope"); err == nil || !strings.Contains(err.Error(), `no context "nope"`) {
		t.Errorf("unknown context: %v", err)
	}
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", dir)
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := loadConfig("", ""); err == nil || !strings.Contains(err.Error(), "no kubeconfig") {
		t.Errorf("nothing to load: %v", err)
	}
}

func TestRetriesAndRateLimit(t *testing.T) {
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		if n <= 2 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"kind":"Status","message":"too many requests","reason":"TooManyRequests","code":429}`))
			return
		}
		w.Write([]byte(`{"gitVersion":"v1.34.3"}`))
	}))
	defer srv.Close()
	a := newAPIClient(&restConfig{server: srv.URL, tls: &tls.Config{}}, 1000)
	a.http = srv.Client()
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := a.do(t.Context(), "version", http.MethodGet, "/version", nil, &v); err != nil || v.GitVersion != "v1.34.3" || n != 3 {
		t.Fatalf("%v %+v after %d requests", err, v, n)
	}
	if got := a.throttled.snapshot()["version"]; got != 2 {
		t.Errorf("throttled answers counted: %d, want 2", got)
	}
	b := newTokenBucket(20, 1)
	start := time.Now()
	for i := 0; i < 5; i++ {
		if err := b.wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("5 takes at 20/s with a burst of 1 took %s", d)
	}
}

// TestExpired: other hosts' pods are removable only past their lifetime
// (a pod without one: past the default that bounds its deadline).
func TestExpired(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		created  time.Time
		lifetime string
		want     bool
	}{
		{now.Add(-time.Minute), "1h0m0s", false},
		{now.Add(-2 * time.Hour), "1h0m0s", true},
		{now.Add(-2 * time.Hour), "0s", false},
		{now.Add(-25 * time.Hour), "0s", true},
		{now.Add(-25 * time.Hour), "garbage", false},
		{time.Time{}, "1s", false},
	} {
		if got := expired(c.created, c.lifetime); got != c.want {
			t.Errorf("expired(%v ago, %q) = %v, want %v", now.Sub(c.created).Round(time.Minute), c.lifetime, got, c.want)
		}
	}
}

// TestKeepalive: an idle exec stream is pinged, so that proxies between the
// runner and the API server do not drop it; the pings stop with the stream.
func TestKeepalive(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	s := &execStream{ws: &wsConn{rw: client, br: bufio.NewReader(client)}, done: make(chan struct{})}
	stopped := make(chan struct{})
	go func() {
		s.keepalive(5 * time.Millisecond)
		close(stopped)
	}()
	peer := &wsConn{rw: server, br: bufio.NewReader(server)}
	for i := 0; i < 3; i++ {
		_, op, _, err := peer.readFrame()
		if err != nil || op != opPing {
			t.Fatalf("frame %d: op %#x, %v", i, op, err)
		}
	}
	close(s.done)
	go func() { _, _, _, _ = peer.readFrame() }() // a ping already on its way
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("keepalive did not stop with its stream")
	}
}
