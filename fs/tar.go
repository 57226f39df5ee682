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
	"syscall"
)

// Stats describes a transferred tree.
type Stats struct {
	Files    int   `json:"files"`
	Dirs     int   `json:"dirs"`
	Symlinks int   `json:"symlinks,omitempty"`
	Bytes    int64 `json:"bytes"`
	// Skipped lists the entries that were not transferred, each as
	// "PATH (why)": special files (FIFOs, sockets, devices), hard links, and
	// symlinks that would lead out of the tree.
	Skipped []string `json:"skipped,omitempty"`
}

func (st *Stats) skip(name, why string) {
	st.Skipped = append(st.Skipped, name+" ("+why+")")
}

// copyBuffer is the one buffer a Pack or Unpack copies every file through.
// A fresh buffer per file (io.Copy's way) costs a tree of small files more
// in page faults than in copying: in a new agent process every allocation
// touches new memory.
const copyBuffer = 64 << 10

// writerOnly hides a file's ReadFrom, which would allocate a buffer of its
// own for every file.
type writerOnly struct{ io.Writer }

// UnreadableError lists entries Pack could not read: the archive is complete
// without them (a file whose read failed midway is padded to its size).
type UnreadableError struct {
	Entries []string // "PATH: reason"
}

func (e *UnreadableError) Error() string {
	const show = 5
	list := e.Entries
	more := ""
	if len(list) > show {
		more = fmt.Sprintf(" (and %d more)", len(list)-show)
		list = list[:show]
	}
	return fmt.Sprintf("could not read %d entr%s of the working directory: %s%s",
		len(e.Entries), map[bool]string{true: "y", false: "ies"}[len(e.Entries) == 1], strings.Join(list, "; "), more)
}

// Pack writes the tree under dir to w as a tar stream of regular files,
// directories and symlinks (the link itself, never followed). Special files
// are left out and listed in Stats.Skipped. An entry it cannot read is left
// out too, and reported as an *UnreadableError after the archive was
// completed: the stream stays a well-formed archive whatever happens to
// the files while it is read.
func Pack(ctx context.Context, dir string, w io.Writer) (Stats, error) {
	var st Stats
	var unreadable []string
	tw := tar.NewWriter(w)
	buf := make([]byte, copyBuffer)
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel, rerr := filepath.Rel(dir, p)
		if rerr != nil {
			return rerr
		}
		name := filepath.ToSlash(rel)
		if err != nil {
			if rel == "." {
				return err
			}
			// A directory it cannot list: its header is out; the rest goes on.
			unreadable = append(unreadable, name+": "+reason(err))
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			unreadable = append(unreadable, name+": "+reason(err))
			return nil
		}
		switch mode := info.Mode(); {
		case d.IsDir():
			st.Dirs++
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: int64(mode.Perm()), ModTime: info.ModTime()})
		case mode&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				unreadable = append(unreadable, name+": "+reason(err))
				return nil
			}
			st.Symlinks++
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: info.ModTime()})
		case mode.IsRegular():
			return packFile(tw, p, name, info, buf, &st, &unreadable)
		default:
			st.skip(name, kind(mode))
			return nil
		}
	})
	if err != nil {
		return st, fmt.Errorf("pack %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return st, fmt.Errorf("pack %s: %w", dir, err)
	}
	if len(unreadable) > 0 {
		return st, &UnreadableError{Entries: unreadable}
	}
	return st, nil
}

// packFile writes one regular file. It is opened before its header is
// written; a read that fails midway pads the entry to its declared size.
func packFile(tw *tar.Writer, p, name string, info iofs.FileInfo, buf []byte, st *Stats, unreadable *[]string) error {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		*unreadable = append(*unreadable, name+": "+reason(err))
		return nil
	}
	defer f.Close()
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(info.Mode().Perm()), Size: info.Size(), ModTime: info.ModTime()}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, rerr := io.CopyBuffer(tw, io.LimitReader(f, info.Size()), buf)
	st.Files++
	st.Bytes += n
	if rerr == nil && n < info.Size() {
		rerr = errors.New("file shrank while it was read")
	}
	if rerr != nil {
		*unreadable = append(*unreadable, name+": "+reason(rerr))
		// The header promised Size bytes: the archive must stay well formed.
		// (Had the archive's own write failed, this write fails too.)
		for left := info.Size() - n; left > 0; {
			k := min(left, int64(len(buf)))
			clear(buf[:k])
			if _, err := tw.Write(buf[:k]); err != nil {
				return err
			}
			left -= k
		}
	}
	return nil
}

func reason(err error) string {
	var pe *iofs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// kind names a special file for messages.
func kind(m iofs.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return "not a file, directory or symlink"
}

// Limits bound an extraction.
type Limits struct {
	MaxBytes int64 // total bytes of file contents; 0 = unlimited
	MaxFiles int   // files, directories and symlinks; 0 = unlimited
}

// ErrUnsafePath is returned for an archive entry that would land outside the
// destination (absolute path or ".." escape).
var ErrUnsafePath = errors.New("unsafe path in archive")

// Unpack extracts a tar stream into dir, which must exist. Regular files,
// directories and symlinks whose target stays inside dir are created; every
// operation goes through an *os.Root of dir, nothing is ever written
// through a symlink, and links are recreated, never followed. Special files,
// hard links and symlinks that would lead out are skipped and listed. An
// entry named outside dir, or a stream over the limits, is an error.
func Unpack(ctx context.Context, r io.Reader, dir string, lim Limits) (Stats, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Stats{}, err
	}
	defer root.Close()
	u := unpacker{root: root, lim: lim, made: map[string]bool{".": true}, buf: make([]byte, copyBuffer)}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return u.st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return u.st, nil
		}
		if err != nil {
			return u.st, fmt.Errorf("read archive: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return u.st, err
		}
	}
}

type unpacker struct {
	root *os.Root
	lim  Limits
	st   Stats
	made map[string]bool // directories known to exist (not symlinks)
	buf  []byte
}

func (u *unpacker) count() error {
	if u.lim.MaxFiles > 0 && u.st.Files+u.st.Dirs+u.st.Symlinks > u.lim.MaxFiles {
		return fmt.Errorf("%w: more than %d files and directories", ErrTooLarge, u.lim.MaxFiles)
	}
	return nil
}

func (u *unpacker) entry(hdr *tar.Header, body io.Reader) error {
	name := hdr.Name
	clean := path.Clean(strings.TrimPrefix(name, "./"))
	if path.IsAbs(name) || clean == ".." || strings.HasPrefix(clean, "../") || strings.Contains(name, "\x00") {
		return fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	if clean == "." {
		return nil
	}
	if through := u.symlinkParent(clean); through != "" {
		u.st.skip(clean, "under "+through+", a symlink")
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		u.st.Dirs++
		if err := u.count(); err != nil {
			return err
		}
		perm := os.FileMode(hdr.Mode).Perm() | 0o700
		if fi, err := u.root.Lstat(clean); err == nil && !fi.IsDir() {
			// A file or a link of the same name came first: replaced.
			if err := u.root.Remove(clean); err != nil {
				return err
			}
		}
		if err := u.root.MkdirAll(clean, perm); err != nil {
			return err
		}
		u.made[clean] = true
		return u.root.Chmod(clean, perm)
	case tar.TypeReg:
		u.st.Files++
		if err := u.count(); err != nil {
			return err
		}
		if u.lim.MaxBytes > 0 && u.st.Bytes+hdr.Size > u.lim.MaxBytes {
			return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, u.lim.MaxBytes)
		}
		return u.file(clean, hdr, body)
	case tar.TypeSymlink:
		target := hdr.Linkname
		if why := linkLeaves(clean, target); why != "" {
			u.st.skip(clean+" -> "+target, why)
			return nil
		}
		u.st.Symlinks++
		if err := u.count(); err != nil {
			return err
		}
		if err := u.parents(clean); err != nil {
			return err
		}
		if fi, err := u.root.Lstat(clean); err == nil {
			if fi.IsDir() {
				u.st.skip(clean+" -> "+target, "a directory of that name exists")
				return nil
			}
			if err := u.root.Remove(clean); err != nil {
				return err
			}
		}
		return u.root.Symlink(target, clean)
	case tar.TypeLink:
		u.st.skip(clean, "a hard link")
	default:
		u.st.skip(clean, kind(os.FileMode(hdr.Mode)|typeMode(hdr.Typeflag)))
	}
	return nil
}

func typeMode(t byte) os.FileMode {
	switch t {
	case tar.TypeFifo:
		return os.ModeNamedPipe
	case tar.TypeChar, tar.TypeBlock:
		return os.ModeDevice
	}
	return 0
}

// linkLeaves says why a symlink target is refused: it must be relative and,
// read from the link's directory, stay inside the tree. (Every use of the
// tree goes through an os.Root, which also refuses what only resolves
// outside once links are followed.)
func linkLeaves(name, target string) string {
	switch {
	case target == "":
		return "a symlink with no target"
	case path.IsAbs(target):
		return "an absolute symlink"
	case strings.Contains(target, "\x00"):
		return "a symlink with a NUL in its target"
	}
	joined := path.Join(path.Dir(name), target)
	if joined == ".." || strings.HasPrefix(joined, "../") {
		return "a symlink that leads out of the working directory"
	}
	return ""
}

// symlinkParent returns the first parent of clean that is a symlink ("" if
// none): nothing is extracted through a link.
func (u *unpacker) symlinkParent(clean string) string {
	parts := strings.Split(clean, "/")
	cur := ""
	for _, part := range parts[:len(parts)-1] {
		cur = path.Join(cur, part)
		if u.made[cur] {
			continue
		}
		fi, err := u.root.Lstat(cur)
		if err != nil {
			return ""
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return cur
		}
	}
	return ""
}

// parents creates the directories above clean once each.
func (u *unpacker) parents(clean string) error {
	parent := path.Dir(clean)
	if u.made[parent] {
		return nil
	}
	if err := u.root.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	u.made[parent] = true
	return nil
}

func (u *unpacker) file(clean string, hdr *tar.Header, body io.Reader) error {
	// Syscalls are what extraction costs: parents are created once, and
	// the common case (a new file) is one open.
	if err := u.parents(clean); err != nil {
		return err
	}
	mode := os.FileMode(hdr.Mode).Perm()
	const flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC | syscall.O_NOFOLLOW
	f, err := u.root.OpenFile(clean, flags, mode)
	if err != nil {
		// Something else sits there (a symlink, which O_NOFOLLOW refuses to
		// follow, or a directory): it is replaced.
		if fi, lerr := u.root.Lstat(clean); lerr == nil && !fi.Mode().IsRegular() {
			if err := u.root.RemoveAll(clean); err != nil {
				return err
			}
			f, err = u.root.OpenFile(clean, flags, mode)
		}
		if err != nil {
			return err
		}
	}
	n, err := io.CopyBuffer(writerOnly{f}, io.LimitReader(body, hdr.Size), u.buf)
	if err == nil {
		// The umask may have narrowed the mode, and an existing file keeps
		// its own: set it exactly.
		err = f.Chmod(mode)
	}
	cerr := f.Close()
	u.st.Bytes += n
	if err != nil {
		return fmt.Errorf("write %s: %w", clean, err)
	}
	if cerr != nil {
		return cerr
	}
	if !hdr.ModTime.IsZero() {
		_ = u.root.Chtimes(clean, hdr.ModTime, hdr.ModTime)
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
