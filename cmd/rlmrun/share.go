package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/envpack"
	"github.com/rlmrun/rlmrun/envregistry"
	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/schema"
)

// loadSpecFile loads a spec file (not an archive or reference) for pack and
// push, printing its problems.
func loadSpecFile(c *cli.Context, src *sources, file string) (*schema.Spec, error) {
	if strings.HasPrefix(file, schema.OCIScheme) {
		return nil, withCode(exitUsage, fmt.Errorf("%s is already in a registry; pull it to change it (rlmrun pull -o DIR %s)", safetext.Line(file), safetext.Line(file)))
	}
	if st, err := os.Stat(file); err == nil && st.IsDir() {
		if file, err = specOfDir(file); err != nil {
			return nil, withCode(exitUsage, err)
		}
	}
	spec, err := src.loader.Load(file)
	if err != nil {
		fmt.Fprintln(c.App.ErrWriter, safetext.Lines(err.Error()))
		return nil, withCode(exitUsage, fmt.Errorf("%s is invalid", safetext.Line(file)))
	}
	return spec, nil
}

func packCommand() *cli.Command {
	return &cli.Command{
		Name:      "pack",
		Usage:     "pack a spec and every file it uses into one reproducible archive",
		ArgsUsage: "SPEC",
		UsageText: `rlmrun pack [-o FILE] SPEC

Writes one archive (tar.gz) holding the spec and what it uses: the bases it
extends, filesystem.context_dir, copy sources, the programs of tools, MCP
servers and rewards under its folder, and package.include (less
package.exclude). A file it needs outside the spec's folder is an error. The
archive is reproducible: the same files give the same bytes on any machine,
and their SHA-256, printed, is the environment's digest. rlmrun run and
validate take the archive as they take a spec.

EXAMPLES:
   rlmrun pack examples/rlm-secrets/bash.yaml
   rlmrun pack -o dist/secrets.tar.gz examples/rlm-secrets/bash.yaml
   rlmrun run rlm-secrets-bash.tar.gz`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write the archive to `FILE` (default: NAME.tar.gz here)"},
			insecureFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(exitUsage, fmt.Errorf("pack needs exactly one SPEC file, got %d (see rlmrun pack --help)", c.NArg()))
			}
			src, err := newSources(context.Background(), c)
			if err != nil {
				return withCode(exitFailed, err)
			}
			spec, err := loadSpecFile(c, src, c.Args().First())
			if err != nil {
				return err
			}
			out := c.String("output")
			if out == "" {
				out = spec.Name + ".tar.gz"
			}
			if err := checkReports(spec, map[string]string{"--output": out}); err != nil {
				return withCode(exitUsage, err)
			}
			p, err := packTo(context.Background(), spec, out)
			if err != nil {
				return withCode(exitFailed, err)
			}
			fmt.Fprintf(c.App.Writer, "packed %s: %d files, %s of content, into %s (%s)\ndigest: %s\n",
				safetext.Line(spec.Name), p.Files, byteSize(p.Bytes), safetext.Line(out), byteSize(p.Size), p.Digest)
			return nil
		},
	}
}

// packTo writes the spec's archive to out, whole or not at all.
func packTo(ctx context.Context, spec *schema.Spec, out string) (envpack.Packed, error) {
	abs, err := filepath.Abs(out)
	if err != nil {
		return envpack.Packed{}, err
	}
	f, err := atomicfile.Create(abs)
	if err != nil {
		return envpack.Packed{}, fmt.Errorf("write %s: %w", out, err)
	}
	defer f.Abort()
	w := bufio.NewWriterSize(f, 1<<20)
	p, err := envpack.Pack(ctx, spec, w, abs, f.Name())
	if err != nil {
		return p, err
	}
	if err := w.Flush(); err != nil {
		return p, fmt.Errorf("write %s: %w", out, err)
	}
	if err := f.Commit(); err != nil {
		return p, fmt.Errorf("write %s: %w", out, err)
	}
	return p, nil
}

func byteSize(n int64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 10<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

func pushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "publish an environment to an OCI registry",
		ArgsUsage: "SPEC|ENV.tar.gz REF",
		UsageText: `rlmrun push [flags] SPEC|ENV.tar.gz REF

Packs SPEC (as rlmrun pack does; an archive goes as it is) and uploads it as
an OCI artifact (type application/vnd.rlmrun.env.v1: a config blob naming the
environment and its digest, the archive as its layer) tagged REF, e.g.
ghcr.io/org/envs/rlm-secrets:1.2.0. Credentials are Docker's: what
docker login stored in ~/.docker/config.json ($DOCKER_CONFIG), credential
helpers included. Prints the pinned reference (REF@sha256:...) to run.

EXAMPLES:
   rlmrun push examples/rlm-secrets/bash.yaml ghcr.io/org/envs/rlm-secrets:1.2.0
   rlmrun push --insecure-registry localhost:5000 env.tar.gz localhost:5000/envs/mine:dev`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "source", Usage: "the `URL` of the environment's source (annotation org.opencontainers.image.source; default: the git remote origin of the spec's folder)"},
			&cli.StringFlag{Name: "version", Usage: "the `VERSION` annotation (default: the tag)"},
			insecureFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return withCode(exitUsage, fmt.Errorf("push needs SPEC (or ENV.tar.gz) and REF, got %d arguments (see rlmrun push --help)", c.NArg()))
			}
			what, refArg := c.Args().Get(0), c.Args().Get(1)
			ref, err := envregistry.ParseRef(refArg)
			if err != nil {
				return withCode(exitUsage, err)
			}
			ctx := context.Background()
			src, err := newSources(ctx, c)
			if err != nil {
				return withCode(exitFailed, err)
			}
			archive, p, source, cleanup, err := pushable(c, src, what)
			if err != nil {
				return err
			}
			defer cleanup()
			if s := c.String("source"); s != "" {
				source = s
			}
			client, err := src.registry()
			if err != nil {
				return withCode(exitFailed, err)
			}
			created, err := buildTime(os.Getenv)
			if err != nil {
				return withCode(exitUsage, err)
			}
			pushed, err := client.Push(ctx, ref, envregistry.PushOptions{Archive: archive, Packed: p, Source: source, Version: c.String("version"), Created: created})
			if err != nil {
				return withCode(exitFailed, err)
			}
			pinned := ref.Registry + "/" + ref.Repository + "@" + pushed.Manifest.Digest.String()
			fmt.Fprintf(c.App.Writer, "pushed %s (%s)\n%s\ndigest: %s\nrun it with: rlmrun run oci://%s\n",
				safetext.Line(pushed.Ref), byteSize(p.Size), pinned, p.Digest, pinned)
			return nil
		},
	}
}

// pushable is the archive to push: the one given, or the spec packed into
// a temporary file (removed by cleanup).
func pushable(c *cli.Context, src *sources, what string) (archive string, p envpack.Packed, source string, cleanup func(), err error) {
	cleanup = func() {}
	if isArchive(what) {
		cache, err := src.cacheDir()
		if err != nil {
			return "", p, "", cleanup, withCode(exitFailed, err)
		}
		env, err := cache.Open(context.Background(), what)
		if err != nil {
			return "", p, "", cleanup, withCode(exitUsage, fmt.Errorf("%s: %w", safetext.Line(what), err))
		}
		// An archive that does not load here is not pushed.
		if _, err := loadSpecFile(c, src, env.Spec); err != nil {
			return "", p, "", cleanup, err
		}
		st, err := os.Stat(what)
		if err != nil {
			return "", p, "", cleanup, withCode(exitFailed, err)
		}
		return what, envpack.Packed{Digest: env.Digest, Size: st.Size(), Manifest: env.Manifest}, "", cleanup, nil
	}
	spec, err := loadSpecFile(c, src, what)
	if err != nil {
		return "", p, "", cleanup, err
	}
	dir, err := os.MkdirTemp("", "rlmrun-push-")
	if err != nil {
		return "", p, "", cleanup, withCode(exitFailed, err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	archive = filepath.Join(dir, spec.Name+".tar.gz")
	p, err = packTo(context.Background(), spec, archive)
	if err != nil {
		return "", p, "", cleanup, withCode(exitFailed, err)
	}
	return archive, p, gitOrigin(filepath.Dir(spec.File)), cleanup, nil
}

// buildTime is the creation time to record: SOURCE_DATE_EPOCH (for
// reproducible manifests), else now.
func buildTime(getenv func(string) string) (time.Time, error) {
	if s := getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds", safetext.Line(s))
		}
		return time.Unix(n, 0).UTC(), nil
	}
	return time.Now().UTC(), nil
}

// gitOrigin is the remote origin URL of the git repository holding dir,
// without any credentials written in it ("" when there is none).
func gitOrigin(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	for d := abs; ; d = filepath.Dir(d) {
		if st, err := os.Stat(filepath.Join(d, ".git", "config")); err == nil && st.Mode().IsRegular() {
			return originURL(filepath.Join(d, ".git", "config"))
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

func originURL(config string) string {
	f, err := os.Open(config)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	in := false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			in = line == `[remote "origin"]`
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !in || !ok || strings.TrimSpace(k) != "url" {
			continue
		}
		raw := strings.TrimSpace(v)
		if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
			u.User = nil // never publish a token written into the URL
			return u.String()
		}
		if strings.Contains(raw, "@") && !strings.Contains(raw, "://") {
			return raw // scp-like git@host:org/repo
		}
		return ""
	}
	return ""
}

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "fetch an environment from an OCI registry into the cache (or a folder)",
		ArgsUsage: "REF",
		UsageText: `rlmrun pull [-o DIR] REF

Resolves REF (HOST/REPOSITORY:TAG or @sha256:DIGEST; oci:// optional) to a
digest, downloads the environment, verifies it against its digest and
unpacks it into the cache ($XDG_CACHE_HOME/rlmrun). With -o, also copies its
files into DIR to edit them. rlmrun run oci://REF pulls by itself.

EXAMPLES:
   rlmrun pull ghcr.io/org/envs/rlm-secrets:1.2.0
   rlmrun pull -o my-secrets ghcr.io/org/envs/rlm-secrets@sha256:...`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "copy the environment's files into `DIR` (new or empty)"},
			insecureFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(exitUsage, fmt.Errorf("pull needs exactly one REF, got %d (see rlmrun pull --help)", c.NArg()))
			}
			given := c.Args().First()
			if !strings.HasPrefix(given, schema.OCIScheme) {
				given = schema.OCIScheme + given
			}
			if _, err := envregistry.ParseRef(given); err != nil {
				return withCode(exitUsage, err)
			}
			src, err := newSources(context.Background(), c)
			if err != nil {
				return withCode(exitFailed, err)
			}
			p, err := src.pull(given)
			if err != nil {
				return withCode(exitFailed, err)
			}
			spec := p.Env.Spec
			if dir := c.String("output"); dir != "" {
				if err := p.Env.CopyTo(dir); err != nil {
					return withCode(exitFailed, fmt.Errorf("copy into %s: %w", safetext.Line(dir), err))
				}
				spec = filepath.Join(dir, filepath.FromSlash(p.Env.Manifest.Spec))
			}
			how := "pulled"
			if p.Cached {
				how = "found in the cache"
			}
			fmt.Fprintf(c.App.Writer, "%s %s (%s)\ndigest: %s\nspec: %s\n", how, safetext.Line(p.Ref), p.Manifest, p.Env.Digest, safetext.Line(spec))
			if _, err := src.loader.Load(spec); err != nil {
				fmt.Fprintln(c.App.ErrWriter, safetext.Lines(err.Error()))
				return withCode(exitUsage, errors.New("the pulled spec is invalid for this rlmrun"))
			}
			return nil
		},
	}
}
