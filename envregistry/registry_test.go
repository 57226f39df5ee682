package envregistry

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/envpack"
	"github.com/rlmrun/rlmrun/internal/registrytest"
	"github.com/rlmrun/rlmrun/schema"
)

// archive packs a small environment into a file.
func archive(t *testing.T, word string) (string, envpack.Packed) {
	t.Helper()
	dir := t.TempDir()
	spec := filepath.Join(dir, "spec.yaml")
	text := "version: 1\nname: pushed\ndescription: " + word + "\nfilesystem: {context_dir: ctx}\nrollouts: [{id: r, prompt: p, turns: [{code: ls}]}]\n"
	if err := os.MkdirAll(filepath.Join(dir, "ctx"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ctx", "word.txt"), []byte(word), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spec, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := schema.Load(spec)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	p, err := envpack.Pack(context.Background(), s, &buf)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "env.tar.gz")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return file, p
}

func client(t *testing.T, opts Options) *Client {
	t.Helper()
	if opts.DockerConfig == "" {
		opts.DockerConfig = filepath.Join(t.TempDir(), "config.json") // no credentials
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ref(t *testing.T, s string) Ref {
	t.Helper()
	r, err := ParseRef(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func push(t *testing.T, c *Client, r string, word string) (Pushed, envpack.Packed) {
	t.Helper()
	file, p := archive(t, word)
	pushed, err := c.Push(context.Background(), ref(t, r), PushOptions{Archive: file, Packed: p, Source: "https://example.com/envs", Created: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	return pushed, p
}

func TestPushPull(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	c := client(t, Options{Insecure: []string{reg.Host}})
	pushed, p := push(t, c, reg.Host+"/envs/pushed:1.0.0", "one")
	if pushed.Digest != p.Digest || !strings.HasPrefix(pushed.Manifest.Digest.String(), "sha256:") {
		t.Errorf("pushed %+v", pushed)
	}
	cache := &envpack.Cache{Dir: t.TempDir()}
	ctx := context.Background()
	got, err := c.Pull(ctx, ref(t, "oci://"+reg.Host+"/envs/pushed:1.0.0"), cache)
	if err != nil {
		t.Fatal(err)
	}
	if got.Env.Digest != p.Digest || got.Manifest != pushed.Manifest.Digest.String() || got.Cached {
		t.Errorf("pulled %+v, want env %s manifest %s", got, p.Digest, pushed.Manifest.Digest)
	}
	if b, err := os.ReadFile(filepath.Join(got.Env.Dir, "ctx", "word.txt")); err != nil || string(b) != "one" {
		t.Errorf("pulled content %q %v", b, err)
	}
	// By digest: pinned, found in the cache without the registry.
	pinned := reg.Host + "/envs/pushed@" + got.Manifest
	again, err := c.Pull(ctx, ref(t, pinned), cache)
	if err != nil || !again.Cached || again.Env.Dir != got.Env.Dir {
		t.Errorf("pinned pull: %+v %v", again, err)
	}
	// By digest into an empty cache: from the registry.
	fresh, err := c.Pull(ctx, ref(t, pinned), &envpack.Cache{Dir: t.TempDir()})
	if err != nil || fresh.Cached || fresh.Env.Digest != p.Digest {
		t.Errorf("pinned pull, cold cache: %+v %v", fresh, err)
	}
	// A tag that moves: the new content, not the cached one.
	_, p2 := push(t, c, reg.Host+"/envs/pushed:1.0.0", "two")
	moved, err := c.Pull(ctx, ref(t, reg.Host+"/envs/pushed:1.0.0"), cache)
	if err != nil || moved.Env.Digest != p2.Digest {
		t.Errorf("after the tag moved: %+v %v, want %s", moved, err, p2.Digest)
	}
	// A missing tag and a missing repository.
	for _, missing := range []string{reg.Host + "/envs/pushed:9.9.9", reg.Host + "/envs/nothing:1"} {
		_, err := c.Pull(ctx, ref(t, missing), cache)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "has no tag") {
			t.Errorf("pull %s: %v, want ErrNotFound naming the tag", missing, err)
		}
	}
	// Plain HTTP without --insecure-registry: a clear error.
	strict := client(t, Options{})
	if _, err := strict.Pull(ctx, ref(t, reg.Host+"/envs/pushed:1.0.0"), &envpack.Cache{Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "--insecure-registry "+reg.Host) {
		t.Errorf("plain HTTP without --insecure-registry: %v", err)
	}
}

func TestPushNeedsATag(t *testing.T) {
	c := client(t, Options{})
	file, p := archive(t, "x")
	_, err := c.Push(context.Background(), ref(t, "127.0.0.1:1/envs/x@sha256:"+strings.Repeat("a", 64)), PushOptions{Archive: file, Packed: p})
	if err == nil || !strings.Contains(err.Error(), "needs a tag") {
		t.Errorf("push by digest: %v", err)
	}
}

func TestBasicAuth(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{Users: map[string]string{"alice": "s3cret"}})
	good := client(t, Options{Insecure: []string{reg.Host}, DockerConfig: filepath.Join(reg.DockerConfig(t, "alice", "s3cret"), "config.json")})
	pushed, p := push(t, good, reg.Host+"/team/env:1", "auth")
	ctx := context.Background()
	if got, err := good.Pull(ctx, ref(t, reg.Host+"/team/env:1"), &envpack.Cache{Dir: t.TempDir()}); err != nil || got.Env.Digest != p.Digest {
		t.Fatalf("pull with credentials: %+v %v", got, err)
	}
	cases := []struct {
		name string
		cfg  string
	}{
		{"no credentials", filepath.Join(t.TempDir(), "config.json")},
		{"wrong password", filepath.Join(reg.DockerConfig(t, "alice", "wrong"), "config.json")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := client(t, Options{Insecure: []string{reg.Host}, DockerConfig: tc.cfg})
			_, err := c.Pull(ctx, ref(t, reg.Host+"/team/env@"+pushed.Manifest.Digest.String()), &envpack.Cache{Dir: t.TempDir()})
			if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "docker login "+reg.Host) {
				t.Errorf("pull: %v, want ErrAuth telling how to log in", err)
			}
			file, p := archive(t, "intruder")
			_, err = c.Push(ctx, ref(t, reg.Host+"/team/env:1"), PushOptions{Archive: file, Packed: p})
			if !errors.Is(err, ErrAuth) {
				t.Errorf("push: %v, want ErrAuth", err)
			}
		})
	}
}

// TestCredentialHelper: credentials from a Docker credential helper
// (credHelpers in the config), as docker login with a helper leaves them.
func TestCredentialHelper(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{Users: map[string]string{"carol": "from-helper"}})
	bin := t.TempDir()
	helper := "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"carol\",\"Secret\":\"from-helper\"}' \"$server\"\n"
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-rlmruntest"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, []byte(`{"credHelpers": {"`+reg.Host+`": "rlmruntest"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c := client(t, Options{Insecure: []string{reg.Host}, DockerConfig: cfg})
	_, p := push(t, c, reg.Host+"/team/helped:1", "helped")
	got, err := c.Pull(context.Background(), ref(t, reg.Host+"/team/helped:1"), &envpack.Cache{Dir: t.TempDir()})
	if err != nil || got.Env.Digest != p.Digest {
		t.Errorf("pull with a credential helper: %+v %v", got, err)
	}
}

func TestTLSWithAPrivateCA(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{TLS: true})
	ctx := context.Background()
	trusted := client(t, Options{RootCAs: reg.CA})
	_, p := push(t, trusted, reg.Host+"/envs/tls:1", "tls")
	if got, err := trusted.Pull(ctx, ref(t, reg.Host+"/envs/tls:1"), &envpack.Cache{Dir: t.TempDir()}); err != nil || got.Env.Digest != p.Digest {
		t.Errorf("pull over verified TLS: %+v %v", got, err)
	}
	untrusted := client(t, Options{})
	_, err := untrusted.Pull(ctx, ref(t, reg.Host+"/envs/tls:1"), &envpack.Cache{Dir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "certificate is not trusted") {
		t.Errorf("an unknown CA: %v", err)
	}
	insecure := client(t, Options{Insecure: []string{reg.Host}})
	if got, err := insecure.Pull(ctx, ref(t, reg.Host+"/envs/tls:1"), &envpack.Cache{Dir: t.TempDir()}); err != nil || got.Env.Digest != p.Digest {
		t.Errorf("pull with --insecure-registry over TLS: %+v %v", got, err)
	}
}

// TestTamperedBlob: a registry that serves other bytes under the archive's
// digest is caught, and nothing enters the cache.
func TestTamperedBlob(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	c := client(t, Options{Insecure: []string{reg.Host}})
	_, p := push(t, c, reg.Host+"/envs/tampered:1", "honest")
	blob := reg.BlobFile(p.Digest)
	data, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(blob, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cache := &envpack.Cache{Dir: t.TempDir()}
	_, err = c.Pull(context.Background(), ref(t, reg.Host+"/envs/tampered:1"), cache)
	if !errors.Is(err, envpack.ErrDigestMismatch) {
		t.Errorf("pull of a tampered blob: %v, want a digest mismatch", err)
	}
	if left, _ := filepath.Glob(filepath.Join(cache.Dir, "envs", "sha256", "*")); len(left) > 0 {
		t.Errorf("the cache kept %v", left)
	}
}
