// Package fs owns a rollout's staging filesystem: the copy of the context
// directory with a byte cap, the context data file, the declared mutations,
// metadata, and moving a directory tree as a tar stream with a safe
// extractor on the receiving end. It enforces the rules of paths inside a
// working directory (InsideWorkdir) and of permission strings (ParseMode).
package fs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrFrozen is returned by a mutation applied after the staging directory was
// frozen (its contents have been handed to a worker).
var ErrFrozen = errors.New("staging directory is frozen: the worker has already received it")

// ErrTooLarge is returned when a copy or an extraction exceeds its byte or file limit.
var ErrTooLarge = errors.New("size limit exceeded")

// Op is what a mutation does.
type Op int

// The mutations.
const (
	Write  Op = iota + 1 // write Content to Path (parents created)
	Mkdir                // create Path and its parents
	Copy                 // copy the host file or directory From to Path
	Remove               // remove Path (a file or a tree); it must exist
	Chmod                // set Path's permission bits to Mode
)

// Mutation is one change to the staging directory, its strings final.
type Mutation struct {
	Op Op
	// Path is inside the working directory (see InsideWorkdir).
	Path    string
	Content string
	// From is Copy's host path: absolute, or relative to Options.SourceDir.
	From string
	// Mode is the permission bits: Chmod's, or Write's and Mkdir's (0 means
	// 0644 and 0755).
	Mode os.FileMode
}

// Staging is a rollout's working directory before (and, after sync-back,
// after) the rollout.
type Staging struct {
	dir       string
	sourceDir string
	maxBytes  int64
	used      int64
	frozen    bool
}

// Options configure a staging directory.
type Options struct {
	// Dir is created (with parents) and must not exist yet or be empty.
	Dir string
	// SourceDir anchors relative copy sources (the spec's folder).
	SourceDir string
	// MaxBytes caps what context_dir and copy mutations bring in; 0 means no cap.
	MaxBytes int64
}

// New creates the staging directory.
func New(opts Options) (*Staging, error) {
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create staging directory: %w", err)
	}
	return &Staging{dir: opts.Dir, sourceDir: opts.SourceDir, maxBytes: opts.MaxBytes}, nil
}

// Dir is the staging directory's path.
func (s *Staging) Dir() string { return s.dir }

// Freeze forbids further mutations.
func (s *Staging) Freeze() { s.frozen = true }

// Frozen reports whether Freeze was called.
func (s *Staging) Frozen() bool { return s.frozen }

// root runs f on the staging directory as an *os.Root: nothing it does can
// land outside, whatever links the tree holds.
func (s *Staging) root(f func(*os.Root) error) error {
	if s.frozen {
		return ErrFrozen
	}
	r, err := os.OpenRoot(s.dir)
	if err != nil {
		return err
	}
	defer r.Close()
	return f(r)
}

// CopyContextDir copies src into the staging directory. Symlinks anywhere in
// src are refused, and the total size is capped by Options.MaxBytes.
func (s *Staging) CopyContextDir(src string) error {
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
	return s.root(func(r *os.Root) error { return s.copyTree(r, src, ".", "context_dir") })
}

// WriteContext writes data to context.txt (a string) or context.json.
func (s *Staging) WriteContext(data any) error {
	name, content := "context.txt", []byte(nil)
	if str, ok := data.(string); ok {
		content = []byte(str)
	} else {
		b, err := json.Marshal(data)
		if err != nil {
			return fmt.Errorf("context data is not JSON: %w", err)
		}
		name, content = "context.json", b
	}
	return s.root(func(r *os.Root) error { return writeFile(r, name, content, 0o644) })
}

// Apply applies one mutation.
func (s *Staging) Apply(m Mutation) error {
	if msg := InsideWorkdir(m.Path); msg != "" {
		return errors.New(msg)
	}
	rel := filepath.Clean(m.Path)
	return s.root(func(r *os.Root) error {
		if through := symlinkOnPath(r, rel); through != "" {
			return fmt.Errorf("path %q goes through a symlink (%s)", m.Path, through)
		}
		switch m.Op {
		case Write:
			if err := r.MkdirAll(filepath.Dir(rel), 0o755); err != nil {
				return fmt.Errorf("write %s: %w", m.Path, err)
			}
			return writeFile(r, rel, []byte(m.Content), modeOr(m.Mode, 0o644))
		case Mkdir:
			mode := modeOr(m.Mode, 0o755)
			if err := r.MkdirAll(rel, mode); err != nil {
				return fmt.Errorf("mkdir %s: %w", m.Path, err)
			}
			return r.Chmod(rel, mode)
		case Copy:
			return s.copy(r, m.From, rel)
		case Remove:
			if _, err := r.Lstat(rel); err != nil {
				return fmt.Errorf("remove %s: nothing there to remove", m.Path)
			}
			return r.RemoveAll(rel)
		case Chmod:
			if err := r.Chmod(rel, m.Mode); err != nil {
				return fmt.Errorf("chmod %s: %w", m.Path, err)
			}
			return nil
		}
		return fmt.Errorf("unknown mutation %d", m.Op)
	})
}

func modeOr(m, def os.FileMode) os.FileMode {
	if m == 0 {
		return def
	}
	return m
}

// symlinkOnPath returns the first existing component of rel that is a
// symlink ("" if none): mutations never go through one.
func symlinkOnPath(r *os.Root, rel string) string {
	cur := ""
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if part == "." || part == "" {
			continue
		}
		cur = filepath.Join(cur, part)
		st, err := r.Lstat(cur)
		if err != nil {
			return ""
		}
		if st.Mode()&os.ModeSymlink != 0 {
			return cur
		}
	}
	return ""
}

func (s *Staging) copy(r *os.Root, from, to string) error {
	src := from
	if !filepath.IsAbs(src) {
		src = filepath.Join(s.sourceDir, src)
	}
	st, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", from, err)
	}
	what := "copy " + from
	switch {
	case st.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%s: is a symlink, which is not allowed", what)
	case st.IsDir():
		return s.copyTree(r, src, to, what)
	case !st.Mode().IsRegular():
		return fmt.Errorf("%s: not a regular file", what)
	}
	if err := r.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := s.charge(st.Size(), what); err != nil {
		return err
	}
	return copyContents(r, src, to, st.Mode().Perm())
}

// InsideWorkdir returns a message when p is empty, absolute or escapes the
// working directory with "..": the rule for every path a spec names inside
// a rollout's working directory.
func InsideWorkdir(p string) string {
	if p == "" {
		return "path is empty"
	}
	if filepath.IsAbs(p) {
		return fmt.Sprintf("path %q is absolute; paths are relative to the working directory", p)
	}
	clean := filepath.Clean(p)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return fmt.Sprintf("path %q leaves the working directory", p)
	}
	return ""
}

// ParseMode parses an octal permission string such as "0644".
func ParseMode(s string) (os.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("mode %q is not an octal permission such as \"0644\"", s)
	}
	return os.FileMode(v), nil
}

func (s *Staging) charge(n int64, what string) error {
	s.used += n
	if s.maxBytes > 0 && s.used > s.maxBytes {
		return fmt.Errorf("%s: %w: more than copy_max_bytes (%d bytes)", what, ErrTooLarge, s.maxBytes)
	}
	return nil
}

// copyTree copies the host tree src to dst under r. Size and symlinks are
// checked before anything is copied, so a refused tree leaves no half copy.
func (s *Staging) copyTree(r *os.Root, src, dst, what string) error {
	var total int64
	err := filepath.WalkDir(src, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		switch t := d.Type(); {
		case t&os.ModeSymlink != 0:
			return fmt.Errorf("%s contains a symlink (%s), which is not allowed", what, rel)
		case t.IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		case !d.IsDir():
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
			return r.MkdirAll(target, info.Mode().Perm()|0o700)
		}
		return copyContents(r, p, target, info.Mode().Perm())
	})
}

// copyContents copies the host file src to dst under r, with mode exactly.
func copyContents(r *os.Root, src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := r.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chmod(mode)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeFile writes data to name under r, with mode exactly (WriteFile keeps
// an existing file's mode and follows a link at the last component).
func writeFile(r *os.Root, name string, data []byte, mode os.FileMode) error {
	f, err := r.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
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
