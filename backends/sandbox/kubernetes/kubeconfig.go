package kubernetes

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// restConfig is how to reach one cluster: where, with which credentials.
type restConfig struct {
	server    string
	namespace string // the context's namespace ("" when unset)
	tls       *tls.Config
	// auth adds credentials to a request (a bearer token), if any.
	auth func(*http.Request) error
	// source says where the configuration came from, for messages.
	source string
}

// kubeconfig is the part of a kubeconfig file rlmrun reads.
type kubeconfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server                   string `yaml:"server"`
			CertificateAuthority     string `yaml:"certificate-authority"`
			CertificateAuthorityData string `yaml:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `yaml:"insecure-skip-tls-verify"`
			TLSServerName            string `yaml:"tls-server-name"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string   `yaml:"name"`
		User userAuth `yaml:"user"`
	} `yaml:"users"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster   string `yaml:"cluster"`
			User      string `yaml:"user"`
			Namespace string `yaml:"namespace"`
		} `yaml:"context"`
	} `yaml:"contexts"`
	// dir is the folder relative paths of this file start from.
	dir string
}

type userAuth struct {
	ClientCertificate     string         `yaml:"client-certificate"`
	ClientCertificateData string         `yaml:"client-certificate-data"`
	ClientKey             string         `yaml:"client-key"`
	ClientKeyData         string         `yaml:"client-key-data"`
	Token                 string         `yaml:"token"`
	TokenFile             string         `yaml:"tokenFile"`
	Username              string         `yaml:"username"`
	Password              string         `yaml:"password"`
	Exec                  *execConfig    `yaml:"exec"`
	AuthProvider          map[string]any `yaml:"auth-provider"`
}

// execConfig is a credential plugin (aws eks get-token, gke-gcloud-auth-plugin, ...).
type execConfig struct {
	APIVersion string   `yaml:"apiVersion"`
	Command    string   `yaml:"command"`
	Args       []string `yaml:"args"`
	Env        []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
}

// In-cluster configuration, as every client finds it.
const (
	saTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	saCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	saNSFile    = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
)

// loadConfig finds the cluster by the standard rules: an explicit
// kubeconfig file, else $KUBECONFIG (a list of files; for each key the
// first file that sets it wins), else ~/.kube/config, else the in-cluster
// service account. contextName picks a context ("" the current one).
func loadConfig(kubeconfigPath, contextName string) (*restConfig, error) {
	var files []string
	switch {
	case kubeconfigPath != "":
		files = []string{kubeconfigPath}
	case os.Getenv("KUBECONFIG") != "":
		for _, f := range filepath.SplitList(os.Getenv("KUBECONFIG")) {
			if f != "" {
				files = append(files, f)
			}
		}
	default:
		if home, err := os.UserHomeDir(); err == nil {
			if _, err := os.Stat(filepath.Join(home, ".kube", "config")); err == nil {
				files = []string{filepath.Join(home, ".kube", "config")}
			}
		}
	}
	if len(files) == 0 {
		if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
			return inCluster()
		}
		return nil, errors.New("no kubeconfig: set KUBECONFIG, give backend.sandbox.kubernetes.kubeconfig, create ~/.kube/config, or run inside a cluster")
	}
	var merged kubeconfig
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			if kubeconfigPath == "" && errors.Is(err, os.ErrNotExist) && len(files) > 1 {
				continue // a listed file that does not exist is skipped, as kubectl does
			}
			return nil, fmt.Errorf("read kubeconfig %s: %w", f, err)
		}
		var k kubeconfig
		if err := yaml.Unmarshal(b, &k); err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", f, err)
		}
		abs, _ := filepath.Abs(f)
		k.dir = filepath.Dir(abs)
		if i == 0 {
			merged = k
			continue
		}
		merge(&merged, k)
	}
	return fromKubeconfig(merged, contextName, strings.Join(files, string(filepath.ListSeparator)))
}

// merge adds to m what it lacks of k (the first file's entries win).
func merge(m *kubeconfig, k kubeconfig) {
	if m.CurrentContext == "" {
		m.CurrentContext = k.CurrentContext
	}
	has := func(names []string, n string) bool {
		for _, x := range names {
			if x == n {
				return true
			}
		}
		return false
	}
	var names []string
	for _, c := range m.Clusters {
		names = append(names, c.Name)
	}
	for _, c := range k.Clusters {
		if !has(names, c.Name) {
			// Relative paths stay relative to their own file.
			if c.Cluster.CertificateAuthority != "" && !filepath.IsAbs(c.Cluster.CertificateAuthority) {
				c.Cluster.CertificateAuthority = filepath.Join(k.dir, c.Cluster.CertificateAuthority)
			}
			m.Clusters = append(m.Clusters, c)
		}
	}
	names = nil
	for _, u := range m.Users {
		names = append(names, u.Name)
	}
	for _, u := range k.Users {
		if !has(names, u.Name) {
			for _, p := range []*string{&u.User.ClientCertificate, &u.User.ClientKey, &u.User.TokenFile} {
				if *p != "" && !filepath.IsAbs(*p) {
					*p = filepath.Join(k.dir, *p)
				}
			}
			m.Users = append(m.Users, u)
		}
	}
	names = nil
	for _, c := range m.Contexts {
		names = append(names, c.Name)
	}
	for _, c := range k.Contexts {
		if !has(names, c.Name) {
			m.Contexts = append(m.Contexts, c)
		}
	}
}

func fromKubeconfig(k kubeconfig, contextName, source string) (*restConfig, error) {
	name := contextName
	if name == "" {
		name = k.CurrentContext
	}
	if name == "" {
		return nil, fmt.Errorf("kubeconfig %s has no current-context: give backend.sandbox.kubernetes.context", source)
	}
	var ctxCluster, ctxUser, ns string
	found := false
	for _, c := range k.Contexts {
		if c.Name == name {
			ctxCluster, ctxUser, ns, found = c.Context.Cluster, c.Context.User, c.Context.Namespace, true
		}
	}
	if !found {
		return nil, fmt.Errorf("kubeconfig %s has no context %q", source, name)
	}
	rc := &restConfig{namespace: ns, source: fmt.Sprintf("context %s of %s", name, source), tls: &tls.Config{MinVersion: tls.VersionTLS12}}
	path := func(p string) string {
		if p != "" && !filepath.IsAbs(p) {
			return filepath.Join(k.dir, p)
		}
		return p
	}
	clusterFound := false
	for _, c := range k.Clusters {
		if c.Name != ctxCluster {
			continue
		}
		clusterFound = true
		rc.server = strings.TrimSuffix(c.Cluster.Server, "/")
		rc.tls.InsecureSkipVerify = c.Cluster.InsecureSkipTLSVerify
		rc.tls.ServerName = c.Cluster.TLSServerName
		ca, err := pemOf(c.Cluster.CertificateAuthorityData, path(c.Cluster.CertificateAuthority))
		if err != nil {
			return nil, fmt.Errorf("cluster %s: certificate authority: %w", ctxCluster, err)
		}
		if ca != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return nil, fmt.Errorf("cluster %s: the certificate authority holds no PEM certificate", ctxCluster)
			}
			rc.tls.RootCAs = pool
		}
	}
	if !clusterFound || rc.server == "" {
		return nil, fmt.Errorf("kubeconfig %s: context %s names cluster %q, which has no server", source, name, ctxCluster)
	}
	for _, u := range k.Users {
		if u.Name != ctxUser {
			continue
		}
		if err := userCredentials(rc, u.User, path); err != nil {
			return nil, fmt.Errorf("user %s: %w", ctxUser, err)
		}
	}
	return rc, nil
}

// userCredentials sets the user's client certificate or bearer token.
func userCredentials(rc *restConfig, u userAuth, path func(string) string) error {
	cert, err := pemOf(u.ClientCertificateData, path(u.ClientCertificate))
	if err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	key, err := pemOf(u.ClientKeyData, path(u.ClientKey))
	if err != nil {
		return fmt.Errorf("client key: %w", err)
	}
	if cert != nil || key != nil {
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return fmt.Errorf("client certificate and key: %w", err)
		}
		rc.tls.Certificates = []tls.Certificate{pair}
	}
	switch {
	case u.Token != "":
		tok := u.Token
		rc.auth = func(r *http.Request) error { r.Header.Set("Authorization", "Bearer "+tok); return nil }
	case u.TokenFile != "":
		file := path(u.TokenFile)
		rc.auth = func(r *http.Request) error {
			b, err := os.ReadFile(file) // re-read: projected tokens rotate
			if err != nil {
				return err
			}
			r.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
			return nil
		}
	case u.Exec != nil:
		rc.auth = execAuth(u.Exec)
	case u.Username != "":
		user, pass := u.Username, u.Password
		rc.auth = func(r *http.Request) error { r.SetBasicAuth(user, pass); return nil }
	case len(u.AuthProvider) > 0:
		return fmt.Errorf("auth-provider %v is not supported: use an exec credential plugin", u.AuthProvider["name"])
	}
	return nil
}

// pemOf is inline base64 data, or a file's content, or nil.
func pemOf(data, file string) ([]byte, error) {
	if data != "" {
		return base64.StdEncoding.DecodeString(data)
	}
	if file != "" {
		return os.ReadFile(file)
	}
	return nil, nil
}

// execAuth runs a credential plugin and caches its token until it expires.
func execAuth(e *execConfig) func(*http.Request) error {
	var mu sync.Mutex
	var token string
	var expiry time.Time
	return func(r *http.Request) error {
		mu.Lock()
		defer mu.Unlock()
		if token == "" || (!expiry.IsZero() && time.Until(expiry) < time.Minute) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, e.Command, e.Args...)
			cmd.Env = os.Environ()
			for _, v := range e.Env {
				cmd.Env = append(cmd.Env, v.Name+"="+v.Value)
			}
			apiVersion := e.APIVersion
			if apiVersion == "" {
				apiVersion = "client.authentication.k8s.io/v1"
			}
			info, _ := json.Marshal(map[string]any{"apiVersion": apiVersion, "kind": "ExecCredential", "spec": map[string]any{"interactive": false}})
			cmd.Env = append(cmd.Env, "KUBERNETES_EXEC_INFO="+string(info))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("credential plugin %s: %v: %s", e.Command, err, strings.TrimSpace(stderr.String()))
			}
			var cred struct {
				Status struct {
					Token               string    `json:"token"`
					ExpirationTimestamp time.Time `json:"expirationTimestamp"`
				} `json:"status"`
			}
			if err := json.Unmarshal(out, &cred); err != nil || cred.Status.Token == "" {
				return fmt.Errorf("credential plugin %s: no token in its output", e.Command)
			}
			token, expiry = cred.Status.Token, cred.Status.ExpirationTimestamp
		}
		r.Header.Set("Authorization", "Bearer "+token)
		return nil
	}
}

// inCluster is the configuration of a process running in a pod.
func inCluster() (*restConfig, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	ca, err := os.ReadFile(saCAFile)
	if err != nil {
		return nil, fmt.Errorf("in-cluster configuration: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	ns, _ := os.ReadFile(saNSFile)
	rc := &restConfig{
		server:    "https://" + net.JoinHostPort(host, port),
		namespace: strings.TrimSpace(string(ns)),
		tls:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		source:    "the in-cluster service account",
	}
	rc.auth = func(r *http.Request) error {
		b, err := os.ReadFile(saTokenFile)
		if err != nil {
			return err
		}
		r.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
		return nil
	}
	return rc, nil
}
