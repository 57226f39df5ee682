package envpack

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	rlmfs "github.com/rlmrun/rlmrun/fs"
	"github.com/rlmrun/rlmrun/internal/ownerdir"
)

// Limits bound what one archive may unpack to.
const (
	MaxUnpackBytes = 16 << 30
	MaxUnpackFiles = 1_000_000
)

// ErrDigestMismatch is returned when an archive's bytes are not those its
// digest names.
var ErrDigestMismatch = errors.New("digest mismatch")

var digestRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidDigest reports whether d is "sha256:" and 64 lower-case hex digits.
func ValidDigest(d string) bool { return digestRe.MatchString(d) }

// Cache holds unpacked environments, each in a folder named by its digest,
// and which registry manifest gave which environment.
type Cache struct {
	// Dir is the cache's root: $RLMRUN_CACHE_DIR, $XDG_CACHE_HOME/rlmrun
	// or ~/.cache/rlmrun.
	Dir string
}

// DefaultCacheDir is where the cache lives unless told otherwise.
func DefaultCacheDir(getenv func(string) string) (string, error) {
	if d := getenv("RLMRUN_CACHE_DIR"); d != "" {
		return filepath.Abs(d)
	}
	if d := getenv("XDG_CACHE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "rlmrun"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the cache folder: %w (set XDG_CACHE_HOME or RLMRUN_CACHE_DIR)", err)
	}
	return filepath.Join(home, ".cache", "rlmrun"), nil
}

// Env is an unpacked environment.
type Env struct {
	Digest   string
	Dir      string // its folder in the cache
	Manifest Manifest
	// Spec is the spec file's path.
	Spec string
}

// dirs makes (or checks) the cache's private folders and returns
// ROOT/sub/sha256.
func (c *Cache) dirs(sub string) (string, error) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return "", fmt.Errorf("create cache %s: %w", c.Dir, err)
	}
	d := c.Dir
	for _, part := range []string{sub, "sha256"} {
		d = filepath.Join(d, part)
		if err := ownerdir.Ensure(d, 0o700); err != nil {
			return "", fmt.Errorf("cache: %w", err)
		}
	}
	return d, nil
}

// Lookup returns the unpacked environment of digest, if the cache has it.
func (c *Cache) Lookup(digest string) (*Env, bool) {
	if !ValidDigest(digest) {
		return nil, false
	}
	dir := filepath.Join(c.Dir, "envs", "sha256", strings.TrimPrefix(digest, "sha256:"))
	m, err := readManifest(dir)
	if err != nil {
		return nil, false
	}
	return &Env{Digest: digest, Dir: dir, Manifest: m, Spec: filepath.Join(dir, filepath.FromSlash(m.Spec))}, true
}

// Open unpacks the archive file (once: later calls find it by digest).
func (c *Cache) Open(ctx context.Context, archive string) (*Env, error) {
	f, err := os.Open(archive)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return nil, fmt.Errorf("read %s: %w", archive, err)
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if env, ok := c.Lookup(digest); ok {
		return env, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	env, err := c.Add(ctx, f, digest)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", archive, err)
	}
	return env, nil
}

// Add unpacks the archive read from r, whose digest must be digest, into
// the cache (unless it is there already).
func (c *Cache) Add(ctx context.Context, r io.Reader, digest string) (*Env, error) {
	if !ValidDigest(digest) {
		return nil, fmt.Errorf("bad digest %q", digest)
	}
	if env, ok := c.Lookup(digest); ok {
		return env, nil
	}
	envs, err := c.dirs("envs")
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(envs, ".unpack-")
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := unpack(ctx, r, tmp, digest); err != nil {
		return nil, err
	}
	final := filepath.Join(envs, strings.TrimPrefix(digest, "sha256:"))
	if err := os.Rename(tmp, final); err != nil {
		// Another run unpacked it first: theirs is as good as ours.
		if env, ok := c.Lookup(digest); ok {
			return env, nil
		}
		return nil, fmt.Errorf("cache: %w", err)
	}
	env, ok := c.Lookup(digest)
	if !ok {
		return nil, fmt.Errorf("cache: %s vanished after unpacking", final)
	}
	return env, nil
}

// unpack extracts the archive into dir and checks, once every byte is read,
// that they are digest's; a manifest that names no spec is an error.
func unpack(ctx context.Context, r io.Reader, dir, digest string) error {
	h := sha256.New()
	tee := io.TeeReader(r, h)
	br := bufio.NewReaderSize(tee, 1<<20)
	zr, err := gzip.NewReader(br)
	if err != nil {
		return fmt.Errorf("not an environment archive (gzip): %w", err)
	}
	zr.Multistream(false)
	st, uerr := rlmfs.Unpack(ctx, zr, dir, rlmfs.Limits{MaxBytes: MaxUnpackBytes, MaxFiles: MaxUnpackFiles})
	// The digest covers every byte, read or not by the extraction.
	_, _ = io.Copy(io.Discard, br)
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("%w: the archive's bytes have digest %s, not %s", ErrDigestMismatch, got, digest)
	}
	if uerr != nil {
		return fmt.Errorf("unpack: %w", uerr)
	}
	if st.Symlinks > 0 || len(st.Skipped) > 0 {
		return fmt.Errorf("unpack: the archive holds links or special files (%d), which rlmrun pack never writes", st.Symlinks+len(st.Skipped))
	}
	_, err = readManifest(dir)
	return err
}

func readManifest(dir string) (Manifest, error) {
	var m Manifest
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return m, fmt.Errorf("not an environment archive: no %s", ManifestName)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("not an environment archive: %s: %w", ManifestName, err)
	}
	if m.Format != FormatVersion {
		return m, fmt.Errorf("archive format %d; this rlmrun reads format %d", m.Format, FormatVersion)
	}
	clean := path.Clean(m.Spec)
	if m.Spec == "" || clean != m.Spec || path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") || clean == ManifestName {
		return m, fmt.Errorf("not an environment archive: %s names the spec %q", ManifestName, m.Spec)
	}
	st, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(clean)))
	if err != nil || !st.Mode().IsRegular() {
		return m, fmt.Errorf("not an environment archive: its spec %q is missing", m.Spec)
	}
	return m, nil
}

// Remember records that the registry manifest manifestDigest holds the
// environment envDigest, so a pinned reference runs without the network.
func (c *Cache) Remember(manifestDigest, envDigest string) error {
	if !ValidDigest(manifestDigest) || !ValidDigest(envDigest) {
		return fmt.Errorf("bad digest %q or %q", manifestDigest, envDigest)
	}
	refs, err := c.dirs("refs")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(refs, ".ref-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(envDigest + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(refs, strings.TrimPrefix(manifestDigest, "sha256:")))
}

// Recall returns the environment a registry manifest holds, if the cache
// has both.
func (c *Cache) Recall(manifestDigest string) (*Env, bool) {
	if !ValidDigest(manifestDigest) {
		return nil, false
	}
	data, err := os.ReadFile(filepath.Join(c.Dir, "refs", "sha256", strings.TrimPrefix(manifestDigest, "sha256:")))
	if err != nil {
		return nil, false
	}
	return c.Lookup(strings.TrimSpace(string(data)))
}

// CopyTo copies an unpacked environment into dir, which must not exist or
// be empty (rlmrun pull -o DIR).
func (e *Env) CopyTo(dir string) error {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("%s is not empty", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return filepath.WalkDir(e.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(e.Dir, p)
		if err != nil || rel == "." || rel == ManifestName {
			return err
		}
		if d.IsDir() && alwaysSkipped[d.Name()] {
			return filepath.SkipDir // written since, by the tools that ran (byte code)
		}
		if d.IsDir() {
			return root.Mkdir(rel, 0o755)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(dst, src); err != nil {
			dst.Close()
			return err
		}
		return dst.Close()
	})
}
