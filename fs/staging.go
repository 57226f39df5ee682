// Package fs owns a rollout's staging filesystem: the copy of the context
// directory with a byte cap, the context data file, the spec's declared
// mutations, metadata, and moving a directory tree as a tar stream with a safe
// extractor on the receiving end.
package fs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/rlmrun/rlmrun/schema"
)

// ErrFrozen is returned by a mutation applied after the staging directory was
// frozen (its contents have been handed to a worker).
var ErrFrozen = errors.New("staging directory is frozen: the worker has already received it")

// ErrTooLarge is returned when a copy or an extraction exceeds its byte or file limit.
var ErrTooLarge = errors.New("size limit exceeded")

// Staging is a rollout's working directory before (and, after sync-back,
// after) the rollout.
type Staging struct {
	dir      string
	maxBytes int64
	used     int64
	frozen   bool
}

// Options configure a staging directory.
type Options struct {
	// Dir is created (with parents) and must not exist yet or be empty.
	Dir string
	// MaxBytes caps what context_dir and copy mutations bring in; 0 means no cap.
	MaxBytes int64
}

// New creates the staging directory.
func New(opts Options) (*Staging, error) {
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create staging directory: %w", err)
	}
	return &Staging{dir: opts.Dir, maxBytes: opts.MaxBytes}, nil
}

// Dir is the staging directory's path.
func (s *Staging) Dir() string { return s.dir }

// Freeze forbids further mutations.
func (s *Staging) Freeze() { s.frozen = true }

// Frozen reports whether Freeze was called.
func (s *Staging) Frozen() bool { return s.frozen }

// CopyContextDir copies src into the staging directory. Symlinks anywhere in
// src are refused, and the total size is capped by Options.MaxBytes.
func (s *Staging) CopyContextDir(src string) error {
	if s.frozen {
		return ErrFrozen
	}
	st, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("context_dir: %w", err)
	}
	if st.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("context_dir %s is a symlink, which is not allowed", src)
	}
	if !st.IsDir() {
		return fmt.Errorf("context_dir %s is not a directory", src)
	}
	return s.copyTree(src, s.dir, "context_dir")
}

// WriteContext writes data to context.txt (a string) or context.json.
func (s *Staging) WriteContext(data any) error {
	if s.frozen {
		return ErrFrozen
	}
	if str, ok := data.(string); ok {
		return os.WriteFile(filepath.Join(s.dir, "context.txt"), []byte(str), 0o644)
	}
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("context data is not JSON: %w", err)
	}
	return os.WriteFile(filepath.Join(s.dir, "context.json"), b, 0o644)
}

// Apply applies one mutation whose strings are already rendered. specDir
// anchors relative copy sources.
func (s *Staging) Apply(m schema.Mutation, specDir string) error {
	if s.frozen {
		return ErrFrozen
	}
	switch {
	case m.Write != nil:
		p, err := s.inside(m.Write.Path)
		if err != nil {
			return err
		}
		mode, err := modeOr(m.Write.Mode, 0o644)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("write %s: %w", m.Write.Path, err)
		}
		if err := os.WriteFile(p, []byte(m.Write.Content), mode); err != nil {
			return fmt.Errorf("write %s: %w", m.Write.Path, err)
		}
		return os.Chmod(p, mode) // WriteFile keeps the mode of an existing file
	case m.Mkdir != nil:
		p, err := s.inside(m.Mkdir.Path)
		if err != nil {
			return err
		}
		mode, err := modeOr(m.Mkdir.Mode, 0o755)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(p, mode); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.Mkdir.Path, err)
		}
		return os.Chmod(p, mode)
	case m.Copy != nil:
		dst, err := s.inside(m.Copy.To)
		if err != nil {
			return err
		}
		src := m.Copy.From
		if !filepath.IsAbs(src) {
			src = filepath.Join(specDir, src)
		}
		st, err := os.Lstat(src)
		if err != nil {
			return fmt.Errorf("copy %s: %w", m.Copy.From, err)
		}
		if st.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("copy %s: is a symlink, which is not allowed", m.Copy.From)
		}
		if st.IsDir() {
			return s.copyTree(src, dst, "copy "+m.Copy.From)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("copy %s: %w", m.Copy.From, err)
		}
		return s.copyFile(src, dst, st, "copy "+m.Copy.From)
	case m.Remove != nil:
		p, err := s.inside(m.Remove.Path)
		if err != nil {
			return err
		}
		if _, err := os.Lstat(p); err != nil {
			return fmt.Errorf("remove %s: nothing there to remove", m.Remove.Path)
		}
		return os.RemoveAll(p)
	case m.Chmod != nil:
		p, err := s.inside(m.Chmod.Path)
		if err != nil {
			return err
		}
		mode, err := schema.ParseMode(m.Chmod.Mode)
		if err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return fmt.Errorf("chmod %s: %w", m.Chmod.Path, err)
		}
		return nil
	}
	return errors.New("empty mutation")
}

func modeOr(s string, def os.FileMode) (os.FileMode, error) {
	if s == "" {
		return def, nil
	}
	return schema.ParseMode(s)
}

// inside resolves a working-directory path, refusing escapes, including
// through symlinks already in the tree.
func (s *Staging) inside(rel string) (string, error) {
	if msg := schema.InsideWorkdir(rel); msg != "" {
		return "", errors.New(msg)
	}
	p := filepath.Join(s.dir, filepath.Clean(rel))
	// Walk existing components: none may be a symlink.
	cur := s.dir
	for _, part := range strings.Split(filepath.Clean(rel), string(filepath.Separator)) {
		if part == "." || part == "" {
			continue
		}
		cur = filepath.Join(cur, part)
		st, err := os.Lstat(cur)
		if err != nil {
			break
		}
		if st.Mode()&os.ModeSymlink != 0 {
			return "", fmt.Errorf("path %q goes through a symlink", rel)
		}
	}
	return p, nil
}

func (s *Staging) charge(n int64, what string) error {
	s.used += n
	if s.maxBytes > 0 && s.used > s.maxBytes {
		return fmt.Errorf("%s: %w: more than copy_max_bytes (%d bytes)", what, ErrTooLarge, s.maxBytes)
	}
	return nil
}

func (s *Staging) copyTree(src, dst, what string) error {
	// Size and symlinks are checked before anything is copied, so a refused
	// tree leaves no half copy behind.
	var total int64
	err := filepath.WalkDir(src, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&os.ModeSymlink != 0 {
			rel, _ := filepath.Rel(src, p)
			return fmt.Errorf("%s contains a symlink (%s), which is not allowed", what, rel)
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		} else if !d.IsDir() {
			rel, _ := filepath.Rel(src, p)
			return fmt.Errorf("%s contains %s, which is neither a file nor a directory", what, rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.charge(total, what); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm()|0o700)
		}
		return copyContents(p, target, info.Mode().Perm())
	})
}

func (s *Staging) copyFile(src, dst string, st os.FileInfo, what string) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", what)
	}
	if err := s.charge(st.Size(), what); err != nil {
		return err
	}
	return copyContents(src, dst, st.Mode().Perm())
}

func copyContents(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// Metadata summarises a directory tree, as the Python REPL's fs_metadata.
type Metadata struct {
	FileCount int   `json:"file_count"`
	TotalSize int64 `json:"total_size"`
}

// Measure counts the regular files under dir and their total size.
func Measure(dir string) (Metadata, error) {
	var m Metadata
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			m.FileCount++
			m.TotalSize += info.Size()
		}
		return nil
	})
	return m, err
}
