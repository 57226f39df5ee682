package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/envpack"
	"github.com/rlmrun/rlmrun/envregistry"
	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
)

// insecureFlag lets plain-HTTP and self-signed registries be used.
func insecureFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach registry `HOST[:PORT]` over plain HTTP, or TLS without checking its certificate (local registries; repeatable)"}
}

// sources loads what commands are given: a spec file, an environment
// archive (env.tar.gz) or a registry reference (oci://REF), and the
// registry bases specs extend.
type sources struct {
	ctx      context.Context
	insecure []string
	loader   *schema.Loader
	cache    *envpack.Cache
	client   *envregistry.Client
	// pulled are the registry environments this command pulled, by ref.
	pulled map[string]*envregistry.Pulled
}

func newSources(ctx context.Context, c *cli.Context) (*sources, error) {
	loader, err := schema.NewLoader()
	if err != nil {
		return nil, err
	}
	s := &sources{ctx: ctx, loader: loader, pulled: map[string]*envregistry.Pulled{}}
	if c != nil && hasFlag(c, "insecure-registry") {
		s.insecure = c.StringSlice("insecure-registry")
	}
	loader.Remote = s.remoteBase
	return s, nil
}

func hasFlag(c *cli.Context, name string) bool {
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

func (s *sources) cacheDir() (*envpack.Cache, error) {
	if s.cache == nil {
		dir, err := envpack.DefaultCacheDir(os.Getenv)
		if err != nil {
			return nil, err
		}
		s.cache = &envpack.Cache{Dir: dir}
	}
	return s.cache, nil
}

func (s *sources) registry() (*envregistry.Client, error) {
	if s.client == nil {
		c, err := envregistry.New(envregistry.Options{Insecure: s.insecure, UserAgent: "rlmrun/" + version, CAFile: os.Getenv("SSL_CERT_FILE")})
		if err != nil {
			return nil, err
		}
		s.client = c
	}
	return s.client, nil
}

// pull fetches a registry environment into the cache (once per command).
func (s *sources) pull(given string) (*envregistry.Pulled, error) {
	if p, ok := s.pulled[given]; ok {
		return p, nil
	}
	ref, err := envregistry.ParseRef(given)
	if err != nil {
		return nil, err
	}
	cache, err := s.cacheDir()
	if err != nil {
		return nil, err
	}
	client, err := s.registry()
	if err != nil {
		return nil, err
	}
	p, err := client.Pull(s.ctx, ref, cache)
	if err != nil {
		return nil, err
	}
	s.pulled[given] = p
	return p, nil
}

func (s *sources) remoteBase(ref string) (schema.RemoteBase, error) {
	p, err := s.pull(schema.OCIScheme + ref)
	if err != nil {
		return schema.RemoteBase{}, err
	}
	return schema.RemoteBase{File: p.Env.Spec, Ref: schema.OCIScheme + ref, Digest: p.Env.Digest}, nil
}

// loaded is a spec as a command was given it.
type loaded struct {
	given string
	spec  *schema.Spec
	// env is set for a packed environment (an archive or a reference).
	env *runner.Environment
	// remote says it came from a registry.
	remote bool
}

// isArchive tells an environment archive from a spec: by name, or by the
// gzip magic of an existing file.
func isArchive(arg string) bool {
	if strings.HasSuffix(arg, ".tar.gz") || strings.HasSuffix(arg, ".tgz") {
		return true
	}
	f, err := os.Open(arg)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 2)
	n, _ := bufio.NewReader(f).Read(magic)
	return n == 2 && magic[0] == 0x1f && magic[1] == 0x8b
}

// errFetch marks a failure to get an environment (exit 1), as opposed to an
// invalid one (exit 2).
type errFetch struct{ err error }

func (e *errFetch) Error() string { return e.err.Error() }
func (e *errFetch) Unwrap() error { return e.err }

// specOfDir is the spec a folder stands for: its spec.yaml (what rlmrun
// init writes). Any other folder is an error listing the specs in it.
func specOfDir(dir string) (string, error) {
	p := filepath.Join(dir, "spec.yaml")
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
		return p, nil
	}
	var names []string
	for _, pat := range []string{"*.yaml", "*.yml"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, f := range m {
			names = append(names, filepath.Base(f))
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("%s is a folder without a spec (spec.yaml)", safetext.Line(dir))
	}
	return "", fmt.Errorf("%s is a folder without spec.yaml: name one of its specs (%s)", safetext.Line(dir), safetext.Line(strings.Join(names, ", ")))
}

// load loads arg. An invalid spec is a *schema problems error; a failure to
// fetch is an *errFetch.
func (s *sources) load(arg string) (*loaded, error) {
	if st, err := os.Stat(arg); err == nil && st.IsDir() {
		spec, err := specOfDir(arg)
		if err != nil {
			return nil, err
		}
		arg = spec
	}
	switch {
	case strings.HasPrefix(arg, schema.OCIScheme):
		p, err := s.pull(arg)
		if err != nil {
			return nil, &errFetch{err}
		}
		spec, err := s.loader.Load(p.Env.Spec)
		if err != nil {
			return nil, err
		}
		return &loaded{given: arg, spec: spec, remote: true, env: &runner.Environment{Ref: arg, Digest: p.Env.Digest, Manifest: p.Manifest}}, nil
	case isArchive(arg):
		cache, err := s.cacheDir()
		if err != nil {
			return nil, &errFetch{err}
		}
		env, err := cache.Open(s.ctx, arg)
		if err != nil {
			return nil, &errFetch{fmt.Errorf("open environment %s: %w", arg, err)}
		}
		spec, err := s.loader.Load(env.Spec)
		if err != nil {
			return nil, err
		}
		return &loaded{given: arg, spec: spec, env: &runner.Environment{Ref: arg, Digest: env.Digest}}, nil
	}
	spec, err := s.loader.Load(arg)
	if err != nil {
		return nil, err
	}
	return &loaded{given: arg, spec: spec}, nil
}
