// Package ownerdir makes the directories rlmrun keeps its private state in,
// in places other users can write to (/tmp). A directory is used only if
// this process's user created it: it is made with the requested mode, or, if
// it exists, it must be a real directory (not a symlink) owned by this user
// and writable by nobody else. Otherwise another user may have planted it,
// with symlinks inside that would turn rlmrun's writes against any file.
// Files inside are then created through an *os.Root, exclusively and
// without following links.
package ownerdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotOwned is returned for a directory rlmrun must not trust.
var ErrNotOwned = errors.New("not a private directory of this user")

// Ensure creates dir with mode perm (its parent must exist), or checks that
// the existing one is trustworthy and sets its mode to perm.
func Ensure(dir string, perm os.FileMode) error {
	err := os.Mkdir(dir, perm)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := Check(dir); err != nil {
		return err
	}
	// Mkdir's mode was narrowed by the umask; an existing directory of ours
	// may have another. Set it through the checked directory itself.
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	return nil
}

// Check reports whether dir is a directory (not a symlink) owned by this
// process's effective user that no other user may write to.
func Check(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%w: %s is a symlink", ErrNotOwned, dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrNotOwned, dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: cannot tell who owns %s", ErrNotOwned, dir)
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s belongs to uid %d, not to this user (uid %d); someone else made it: remove it", ErrNotOwned, dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s is writable by other users (mode %04o)", ErrNotOwned, dir, fi.Mode().Perm())
	}
	return nil
}

// Exclusive is the open flag set for files rlmrun creates in its
// directories: a new file, never one that exists, never through a link.
const Exclusive = os.O_WRONLY | os.O_CREATE | os.O_EXCL | syscall.O_NOFOLLOW

// WriteFile creates name under root exclusively with data and mode perm
// (exactly, whatever the umask).
func WriteFile(root *os.Root, name string, data []byte, perm os.FileMode) error {
	f, err := root.OpenFile(name, Exclusive, perm)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Chmod(perm)
	if err := f.Close(); werr == nil && cerr == nil {
		return err
	}
	if werr != nil {
		return werr
	}
	return cerr
}
