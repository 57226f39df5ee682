package fs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Stats describes a transferred tree.
type Stats struct {
	Files int   `json:"files"`
	Dirs  int   `json:"dirs"`
	Bytes int64 `json:"bytes"`
	// Skipped lists entries that are not regular files or directories
	// (symlinks, devices, sockets, ...); they are never transferred.
	Skipped []string `json:"skipped,omitempty"`
}

// copyBuffer is the one buffer a Pack or Unpack copies every file through.
// A fresh buffer per file (io.Copy's way) costs a tree of small files more
// in page faults than in copying: in a new agent process every allocation
// touches new memory.
const copyBuffer = 64 << 10

// writerOnly hides a file's ReadFrom, which would allocate a buffer of its
// own for every file.
type writerOnly struct{ io.Writer }

// Pack writes the tree under dir to w as a tar stream of regular files and
// directories. Symlinks and special files are skipped (and listed in Stats).
func Pack(ctx context.Context, dir string, w io.Writer) (Stats, error) {
	var st Stats
	tw := tar.NewWriter(w)
	buf := make([]byte, copyBuffer)
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			st.Dirs++
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: int64(info.Mode().Perm()), ModTime: info.ModTime()})
		case info.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(info.Mode().Perm()), Size: info.Size(), ModTime: info.ModTime()}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			n, err := io.CopyBuffer(tw, io.LimitReader(f, info.Size()), buf)
			if err == nil && n < info.Size() {
				err = io.ErrUnexpectedEOF
			}
			st.Files++
			st.Bytes += n
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			return nil
		default:
			st.Skipped = append(st.Skipped, name)
			return nil
		}
	})
	if err != nil {
		return st, fmt.Errorf("pack %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return st, fmt.Errorf("pack %s: %w", dir, err)
	}
	return st, nil
}

// Limits bound an extraction.
type Limits struct {
	MaxBytes int64 // total bytes of file contents; 0 = unlimited
	MaxFiles int   // files plus directories; 0 = unlimited
}

// ErrUnsafePath is returned for an archive entry that would land outside the
// destination (absolute path or ".." escape).
var ErrUnsafePath = errors.New("unsafe path in archive")

// Unpack extracts a tar stream into dir, which must exist. Only regular files
// and directories are created; symlinks, hard links and special files are
// skipped and listed. An entry outside dir, or a stream over the limits, is an
// error.
func Unpack(ctx context.Context, r io.Reader, dir string, lim Limits) (Stats, error) {
	var st Stats
	tr := tar.NewReader(r)
	made := map[string]bool{dir: true}
	buf := make([]byte, copyBuffer)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("read archive: %w", err)
		}
		name := hdr.Name
		clean := path.Clean(strings.TrimPrefix(name, "./"))
		if path.IsAbs(name) || clean == ".." || strings.HasPrefix(clean, "../") || strings.Contains(name, "\x00") {
			return st, fmt.Errorf("%w: %q", ErrUnsafePath, name)
		}
		if clean == "." {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(clean))
		if err := noSymlinkParents(dir, clean); err != nil {
			return st, err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			st.Dirs++
			if lim.MaxFiles > 0 && st.Files+st.Dirs > lim.MaxFiles {
				return st, fmt.Errorf("%w: more than %d files and directories", ErrTooLarge, lim.MaxFiles)
			}
			if err := os.MkdirAll(target, os.FileMode(hdr.Mode).Perm()|0o700); err != nil {
				return st, err
			}
			made[target] = true
			if err := os.Chmod(target, os.FileMode(hdr.Mode).Perm()|0o700); err != nil {
				return st, err
			}
		case tar.TypeReg:
			st.Files++
			if lim.MaxFiles > 0 && st.Files+st.Dirs > lim.MaxFiles {
				return st, fmt.Errorf("%w: more than %d files and directories", ErrTooLarge, lim.MaxFiles)
			}
			if lim.MaxBytes > 0 && st.Bytes+hdr.Size > lim.MaxBytes {
				return st, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, lim.MaxBytes)
			}
			// Syscalls are what extraction costs: parents are created once,
			// and the common case (a new file) is one open.
			if parent := filepath.Dir(target); !made[parent] {
				if err := os.MkdirAll(parent, 0o755); err != nil {
					return st, err
				}
				made[parent] = true
			}
			mode := os.FileMode(hdr.Mode).Perm()
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|noFollow, mode)
			if err != nil {
				// Something else sits there (a symlink, which O_NOFOLLOW refuses
				// to follow, or a directory): it is replaced.
				if fi, lerr := os.Lstat(target); lerr == nil && !fi.Mode().IsRegular() {
					if err := os.RemoveAll(target); err != nil {
						return st, err
					}
					f, err = os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|noFollow, mode)
				}
				if err != nil {
					return st, err
				}
			}
			n, err := io.CopyBuffer(writerOnly{f}, io.LimitReader(tr, hdr.Size), buf)
			if err == nil {
				// The umask may have narrowed the mode, and an existing file
				// keeps its own: set it exactly.
				err = f.Chmod(mode)
			}
			cerr := f.Close()
			st.Bytes += n
			if err != nil {
				return st, fmt.Errorf("write %s: %w", clean, err)
			}
			if cerr != nil {
				return st, cerr
			}
			if !hdr.ModTime.IsZero() {
				_ = os.Chtimes(target, hdr.ModTime, hdr.ModTime)
			}
		default:
			st.Skipped = append(st.Skipped, clean)
		}
	}
}

// noSymlinkParents refuses to write below a symlink that an earlier entry or
// an existing file put in the tree.
func noSymlinkParents(dir, clean string) error {
	cur := dir
	parts := strings.Split(clean, "/")
	for _, part := range parts[:len(parts)-1] {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if err != nil {
			return nil
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%w: %q goes through a symlink", ErrUnsafePath, clean)
		}
	}
	return nil
}

// ReplaceDir empties dir (keeping dir itself) so a download can replace it.
func ReplaceDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
