// Package envregistry publishes environment archives (envpack) to OCI
// registries as artifacts, and pulls them back into the cache by digest,
// with oras-go: Docker Hub, GHCR, Harbor or a private registry:2, with the
// credentials `docker login` stored (~/.docker/config.json and its
// credential helpers).
package envregistry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/rlmrun/rlmrun/envpack"
)

// Media types of an environment artifact.
const (
	ArtifactType    = "application/vnd.rlmrun.env.v1"
	ConfigMediaType = "application/vnd.rlmrun.env.config.v1+json"
)

// Bounds on what a registry may send besides the archive.
const (
	maxManifestBytes = 4 << 20
	maxConfigBytes   = 1 << 20
)

// Config is the artifact's config blob: what the environment is, readable
// without downloading it.
type Config struct {
	Name          string `json:"name"`
	Description   string `json:"description,omitempty"`
	Spec          string `json:"spec"`
	SpecFormat    int    `json:"spec_format"`
	ArchiveFormat int    `json:"archive_format"`
	// Digest is the archive's (the environment's) digest.
	Digest string `json:"digest"`
}

// Options configure a Client.
type Options struct {
	// Insecure lists registries (host or host:port) reached over plain HTTP,
	// or over TLS without checking the certificate: for local registries.
	Insecure []string
	// RootCAs, when set, replaces the system's CAs (CAFile and
	// /etc/docker/certs.d/HOST/*.crt are added either way).
	RootCAs *x509.CertPool
	// CAFile is a PEM file of more CAs to trust (the CLI passes
	// $SSL_CERT_FILE: read when the client is made, not once per process).
	CAFile string
	// DockerConfig is the Docker config file with credentials (default:
	// $DOCKER_CONFIG/config.json, else ~/.docker/config.json).
	DockerConfig string
	// UserAgent is sent with every request.
	UserAgent string
}

// Client pushes and pulls environments.
type Client struct {
	opts     Options
	insecure map[string]bool
	creds    credentials.Store
	mu       sync.Mutex
	plain    map[string]bool // insecure hosts found to speak plain HTTP
	authn    auth.Cache
	extraCAs []byte // PEM of Options.CAFile
}

// New makes a client; the Docker config is read now (a broken one is an
// error naming it).
func New(opts Options) (*Client, error) {
	c := &Client{opts: opts, insecure: map[string]bool{}, plain: map[string]bool{}, authn: auth.NewCache()}
	for _, h := range opts.Insecure {
		c.insecure[h] = true
	}
	var store credentials.Store
	var err error
	if opts.DockerConfig != "" {
		store, err = credentials.NewStore(opts.DockerConfig, credentials.StoreOptions{})
	} else {
		store, err = credentials.NewStoreFromDocker(credentials.StoreOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("read Docker credentials: %w", err)
	}
	c.creds = store
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		c.extraCAs = pem
	}
	return c, nil
}

// Ref is a parsed registry reference.
type Ref struct {
	registry.Reference
	// Given is the reference as written.
	Given string
}

// ParseRef parses host/repository[:tag][@digest] (an oci:// prefix is
// allowed).
func ParseRef(s string) (Ref, error) {
	given := s
	s = strings.TrimPrefix(s, "oci://")
	r, err := registry.ParseReference(s)
	if err != nil {
		return Ref{}, fmt.Errorf("bad reference %q: %w (want HOST/REPOSITORY:TAG or HOST/REPOSITORY@sha256:DIGEST)", given, err)
	}
	return Ref{Reference: r, Given: given}, nil
}

// Pinned reports whether the reference names a digest.
func (r Ref) Pinned() bool {
	_, err := r.Digest()
	return err == nil
}

func (c *Client) repository(ctx context.Context, ref Ref) (*remote.Repository, error) {
	repo, err := remote.NewRepository(ref.Registry + "/" + ref.Repository)
	if err != nil {
		return nil, err
	}
	host := ref.Registry
	insecure := c.insecure[host]
	repo.Client = &auth.Client{
		Client:     c.httpClient(host, insecure),
		Credential: credentials.Credential(c.creds),
		Cache:      c.authn,
		Header:     http.Header{"User-Agent": {c.userAgent()}},
	}
	if insecure {
		repo.PlainHTTP = c.speaksHTTP(ctx, host)
	}
	return repo, nil
}

func (c *Client) userAgent() string {
	if c.opts.UserAgent != "" {
		return c.opts.UserAgent
	}
	return "rlmrun"
}

func (c *Client) httpClient(host string, insecure bool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.opts.RootCAs}
	if insecure {
		cfg.InsecureSkipVerify = true
	} else if pems, _ := filepath.Glob(filepath.Join("/etc/docker/certs.d", host, "*.crt")); len(pems) > 0 || len(c.extraCAs) > 0 {
		// Docker's place for a private registry's CA, and CAFile, on top of
		// the system's (parsed only when needed: it costs milliseconds).
		pool := c.opts.RootCAs
		if pool == nil {
			pool, _ = x509.SystemCertPool()
		}
		if pool == nil {
			pool = x509.NewCertPool()
		}
		pool = pool.Clone()
		pool.AppendCertsFromPEM(c.extraCAs)
		for _, p := range pems {
			if b, err := os.ReadFile(p); err == nil {
				pool.AppendCertsFromPEM(b)
			}
		}
		cfg.RootCAs = pool
	}
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}
}

// speaksHTTP tells whether an insecure registry answers plain HTTP (as
// Docker does: TLS first, plain HTTP when the server is not TLS).
func (c *Client) speaksHTTP(ctx context.Context, host string) bool {
	c.mu.Lock()
	known, ok := c.plain[host]
	c.mu.Unlock()
	if ok {
		return known
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/v2/", nil)
	if err != nil {
		return false
	}
	plain := false
	resp, err := c.httpClient(host, true).Do(req)
	if err != nil {
		var rhe tls.RecordHeaderError
		plain = errors.As(err, &rhe) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client")
	} else {
		resp.Body.Close()
	}
	c.mu.Lock()
	c.plain[host] = plain
	c.mu.Unlock()
	return plain
}

// PushOptions describe what is pushed.
type PushOptions struct {
	// Archive is the environment archive's file and Packed its facts.
	Archive string
	Packed  envpack.Packed
	// Source is the URL of the environment's source (an annotation).
	Source string
	// Version is the annotation's version (default: the reference's tag).
	Version string
	// Created is the creation time written in the annotations.
	Created time.Time
}

// Pushed is what a push made.
type Pushed struct {
	Ref      string
	Manifest ocispec.Descriptor
	// Digest is the environment's (the archive's) digest.
	Digest string
}

// Push uploads the archive as an artifact and tags it with ref's tag.
func (c *Client) Push(ctx context.Context, ref Ref, opts PushOptions) (Pushed, error) {
	tag := ref.Reference.Reference
	if tag == "" || ref.Pinned() {
		return Pushed{}, fmt.Errorf("push %s: the reference needs a tag (HOST/REPOSITORY:TAG)", ref.Given)
	}
	repo, err := c.repository(ctx, ref)
	if err != nil {
		return Pushed{}, err
	}
	p := opts.Packed
	layer := ocispec.Descriptor{
		MediaType:   envpack.MediaType,
		Digest:      digest.Digest(p.Digest),
		Size:        p.Size,
		Annotations: map[string]string{ocispec.AnnotationTitle: p.Manifest.Name + ".tar.gz"},
	}
	if err := c.pushBlob(ctx, repo, layer, func() (io.ReadCloser, error) { return os.Open(opts.Archive) }); err != nil {
		return Pushed{}, c.explain(ref, "push", err)
	}
	cfg, err := json.Marshal(Config{Name: p.Manifest.Name, Description: p.Manifest.Description, Spec: p.Manifest.Spec,
		SpecFormat: p.Manifest.SpecVersion, ArchiveFormat: p.Manifest.Format, Digest: p.Digest})
	if err != nil {
		return Pushed{}, err
	}
	cfgDesc := content.NewDescriptorFromBytes(ConfigMediaType, cfg)
	if err := c.pushBlob(ctx, repo, cfgDesc, func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(cfg))), nil }); err != nil {
		return Pushed{}, c.explain(ref, "push", err)
	}
	version := opts.Version
	if version == "" {
		version = tag
	}
	created := opts.Created
	if created.IsZero() {
		created = time.Now()
	}
	ann := map[string]string{
		ocispec.AnnotationTitle:   p.Manifest.Name,
		ocispec.AnnotationVersion: version,
		ocispec.AnnotationCreated: created.UTC().Format(time.RFC3339),
	}
	if p.Manifest.Description != "" {
		ann[ocispec.AnnotationDescription] = p.Manifest.Description
	}
	if opts.Source != "" {
		ann[ocispec.AnnotationSource] = opts.Source
	}
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       cfgDesc,
		Layers:       []ocispec.Descriptor{layer},
		Annotations:  ann,
	})
	if err != nil {
		return Pushed{}, err
	}
	mdesc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, manifest)
	mdesc.ArtifactType = ArtifactType
	if err := repo.PushReference(ctx, mdesc, strings.NewReader(string(manifest)), tag); err != nil {
		return Pushed{}, c.explain(ref, "push", err)
	}
	return Pushed{Ref: ref.Registry + "/" + ref.Repository + ":" + tag, Manifest: mdesc, Digest: p.Digest}, nil
}

func (c *Client) pushBlob(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, open func() (io.ReadCloser, error)) error {
	if ok, err := repo.Blobs().Exists(ctx, desc); err == nil && ok {
		return nil
	}
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	err = repo.Blobs().Push(ctx, desc, rc)
	if errors.Is(err, errdef.ErrAlreadyExists) {
		return nil
	}
	return err
}

// Pulled is an environment pulled from a registry.
type Pulled struct {
	Ref string // as given
	// Manifest is the digest the reference resolved to.
	Manifest string
	Env      *envpack.Env
	// Cached says nothing was downloaded.
	Cached bool
}

// Pull resolves ref to a manifest digest, checks that it is an
// environment, and unpacks its archive into the cache (verified against its
// digest), unless the cache has it. A pinned reference found in the cache
// needs no network.
func (c *Client) Pull(ctx context.Context, ref Ref, cache *envpack.Cache) (*Pulled, error) {
	if d, err := ref.Digest(); err == nil {
		if env, ok := cache.Recall(d.String()); ok {
			return &Pulled{Ref: ref.Given, Manifest: d.String(), Env: env, Cached: true}, nil
		}
	}
	repo, err := c.repository(ctx, ref)
	if err != nil {
		return nil, err
	}
	desc, err := repo.Resolve(ctx, ref.Reference.Reference)
	if err != nil {
		return nil, c.explain(ref, "pull", err)
	}
	if d, err := ref.Digest(); err == nil && desc.Digest != d {
		return nil, fmt.Errorf("pull %s: %w: the registry resolved it to %s", ref.Given, envpack.ErrDigestMismatch, desc.Digest)
	}
	if env, ok := cache.Recall(desc.Digest.String()); ok {
		return &Pulled{Ref: ref.Given, Manifest: desc.Digest.String(), Env: env, Cached: true}, nil
	}
	if desc.Size > maxManifestBytes {
		return nil, fmt.Errorf("pull %s: the manifest is %d bytes, more than an environment's", ref.Given, desc.Size)
	}
	mbytes, err := fetchAll(ctx, repo, desc, false)
	if err != nil {
		return nil, c.explain(ref, "pull", err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mbytes, &m); err != nil {
		return nil, fmt.Errorf("pull %s: bad manifest: %w", ref.Given, err)
	}
	if m.ArtifactType != ArtifactType && m.Config.MediaType != ConfigMediaType {
		kind := m.ArtifactType
		if kind == "" {
			kind = m.Config.MediaType
		}
		return nil, fmt.Errorf("pull %s: not an rlmrun environment (artifact type %q, want %q)", ref.Given, kind, ArtifactType)
	}
	var layer *ocispec.Descriptor
	for i := range m.Layers {
		if m.Layers[i].MediaType == envpack.MediaType {
			if layer != nil {
				return nil, fmt.Errorf("pull %s: the artifact holds more than one environment archive", ref.Given)
			}
			layer = &m.Layers[i]
		}
	}
	if layer == nil {
		return nil, fmt.Errorf("pull %s: the artifact holds no environment archive (%s)", ref.Given, envpack.MediaType)
	}
	if m.Config.Size > maxConfigBytes {
		return nil, fmt.Errorf("pull %s: the config is %d bytes, more than an environment's", ref.Given, m.Config.Size)
	}
	cbytes, err := fetchAll(ctx, repo, m.Config, true)
	if err != nil {
		return nil, c.explain(ref, "pull", err)
	}
	var cfg Config
	if err := json.Unmarshal(cbytes, &cfg); err != nil {
		return nil, fmt.Errorf("pull %s: bad config: %w", ref.Given, err)
	}
	if cfg.Digest != layer.Digest.String() {
		return nil, fmt.Errorf("pull %s: %w: the config names %s, the archive is %s", ref.Given, envpack.ErrDigestMismatch, cfg.Digest, layer.Digest)
	}
	env, ok := cache.Lookup(layer.Digest.String())
	if !ok {
		rc, err := repo.Blobs().Fetch(ctx, *layer)
		if err != nil {
			return nil, c.explain(ref, "pull", err)
		}
		vr := content.NewVerifyReader(rc, *layer)
		env, err = cache.Add(ctx, vr, layer.Digest.String())
		rc.Close()
		if err != nil {
			return nil, c.explain(ref, "pull", err)
		}
	}
	if err := cache.Remember(desc.Digest.String(), env.Digest); err != nil {
		return nil, err
	}
	return &Pulled{Ref: ref.Given, Manifest: desc.Digest.String(), Env: env}, nil
}

// fetchAll reads a small blob or manifest whole, verified against desc.
func fetchAll(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, blob bool) ([]byte, error) {
	var rc io.ReadCloser
	var err error
	if blob {
		rc, err = repo.Blobs().Fetch(ctx, desc)
	} else {
		rc, err = repo.Fetch(ctx, desc)
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return content.ReadAll(rc, desc)
}

// ErrAuth is returned when a registry refuses the credentials (or their
// absence).
var ErrAuth = errors.New("authentication failed")

// ErrNotFound is returned for a tag or digest the repository does not have.
var ErrNotFound = errors.New("not found")

// explain turns what oras and the network said into what to do about it.
func (c *Client) explain(ref Ref, op string, err error) error {
	host := ref.Registry
	var er *errcode.ErrorResponse
	var uerr x509.UnknownAuthorityError
	var herr x509.HostnameError
	var cerr *tls.CertificateVerificationError
	var nerr *net.OpError
	switch {
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return fmt.Errorf("%s %s: %w: %s wants credentials and %s has none for it: log in with `docker login %s`", op, ref.Given, ErrAuth, host, c.configPath(), host)
	case errors.As(err, &er) && (er.StatusCode == http.StatusUnauthorized || er.StatusCode == http.StatusForbidden):
		return fmt.Errorf("%s %s: %w: %s refused the credentials (%d %s): log in with `docker login %s` or check %s", op, ref.Given, ErrAuth, host, er.StatusCode, http.StatusText(er.StatusCode), host, c.configPath())
	case errors.Is(err, errdef.ErrNotFound) || (errors.As(err, &er) && er.StatusCode == http.StatusNotFound):
		what := "tag " + ref.Reference.Reference
		if ref.Pinned() {
			what = "digest " + ref.Reference.Reference
		}
		return fmt.Errorf("%s %s: %w: %s/%s has no %s", op, ref.Given, ErrNotFound, host, ref.Repository, what)
	case errors.Is(err, content.ErrMismatchedDigest) || errors.Is(err, envpack.ErrDigestMismatch) || errors.Is(err, content.ErrTrailingData):
		return fmt.Errorf("%s %s: %w: what the registry sent is not what its digest names (tampered or corrupt): %v", op, ref.Given, envpack.ErrDigestMismatch, err)
	case errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &cerr):
		return fmt.Errorf("%s %s: %s's TLS certificate is not trusted (%v): add its CA (SSL_CERT_FILE, or /etc/docker/certs.d/%s/ca.crt), or use --insecure-registry %s for a local registry", op, ref.Given, host, err, host, host)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%s %s: %s speaks plain HTTP: use --insecure-registry %s for a local registry", op, ref.Given, host, host)
	case errors.As(err, &nerr):
		return fmt.Errorf("%s %s: cannot reach %s: %w", op, ref.Given, host, err)
	}
	return fmt.Errorf("%s %s: %w", op, ref.Given, err)
}

func (c *Client) configPath() string {
	if ds, ok := c.creds.(*credentials.DynamicStore); ok && ds.ConfigPath() != "" {
		return ds.ConfigPath()
	}
	return "~/.docker/config.json"
}
