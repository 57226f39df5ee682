// Package registrytest starts real OCI registries for tests: Debian's
// docker-registry (the registry:2 server) on 127.0.0.1, plain or behind
// TLS with a CA of its own, open or with basic auth (htpasswd).
package registrytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/rlmrun/rlmrun/internal/testbin"
)

// Binary is the registry server scripts/test installs.
const Binary = "/usr/bin/docker-registry"

// Options choose the registry's kind.
type Options struct {
	TLS bool
	// Users, when set, require basic auth with these user: password pairs.
	Users map[string]string
}

// Registry is a running registry, stopped when its test ends.
type Registry struct {
	// Host is 127.0.0.1:PORT.
	Host string
	// Storage is the registry's storage root (to tamper with blobs).
	Storage string
	// CAFile is the PEM of the CA that signed its certificate (TLS only).
	CAFile string
	CA     *x509.CertPool
}

// Available reports whether the registry server is installed.
func Available() bool {
	_, err := os.Stat(Binary)
	return err == nil
}

// Start starts a registry for t (skipping, or failing under
// RLMRUN_REQUIRE_ALL, when the server is not installed).
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	testbin.Need(t, Available(), "docker-registry ("+Binary+", Debian package docker-registry)")
	dir := t.TempDir()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{Host: fmt.Sprintf("127.0.0.1:%d", port), Storage: filepath.Join(dir, "data")}
	cfg := fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: %s}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
http:
  addr: %s
  secret: rlmrun-test
`, r.Storage, r.Host)
	if opts.TLS {
		cert, key, err := r.makeCerts(dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf("  tls: {certificate: %s, key: %s}\n", cert, key)
	}
	if len(opts.Users) > 0 {
		var lines []string
		for u, p := range opts.Users {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			lines = append(lines, u+":"+string(h))
		}
		hp := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(hp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd: {realm: rlmrun-test, path: %s}\n", hp)
	}
	cfgFile := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Binary, "serve", cfgFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	if !testbin.Within(20*time.Second, r.answers) {
		log, _ := os.ReadFile(logf.Name())
		t.Fatalf("the registry on %s did not answer in 20 s; its log:\n%s", r.Host, log)
	}
	return r
}

// answers reports whether the registry's API root answers (401 counts).
func (r *Registry) answers() bool {
	scheme := "http"
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if r.CA != nil {
		scheme = "https"
		tr.TLSClientConfig = &tls.Config{RootCAs: r.CA}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+r.Host+"/v2/", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
}

// DockerConfig writes a Docker config.json holding user's credentials for
// the registry and returns its folder (for DOCKER_CONFIG).
func (r *Registry) DockerConfig(t testing.TB, user, password string) string {
	t.Helper()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	cfg, _ := json.Marshal(map[string]any{"auths": map[string]any{r.Host: map[string]string{"auth": auth}}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// BlobFile is the file in the registry's storage that holds the blob of
// digest ("sha256:...").
func (r *Registry) BlobFile(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.Storage, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// makeCerts writes a CA and a certificate for 127.0.0.1 it signed.
func (r *Registry) makeCerts(dir string) (certFile, keyFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rlmrun test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile, r.CAFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	write := func(name, typ string, der []byte) error {
		return os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
	}
	if err := write(certFile, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	if err := write(keyFile, "EC PRIVATE KEY", keyDER); err != nil {
		return "", "", err
	}
	if err := write(r.CAFile, "CERTIFICATE", caDER); err != nil {
		return "", "", err
	}
	r.CA = x509.NewCertPool()
	r.CA.AddCert(ca)
	return certFile, keyFile, nil
}
