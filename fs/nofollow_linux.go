package fs

import "syscall"

// noFollow makes opening a file fail rather than follow a symlink planted at
// the last path component.
const noFollow = syscall.O_NOFOLLOW
