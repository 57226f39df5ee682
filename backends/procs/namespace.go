package procs

import (
	"errors"
	"os"
	"syscall"
)

// Containment names how a process's descendants are kept together.
const (
	// ContainPIDNamespace: the process leads a PID namespace of its own;
	// when it ends, the kernel ends everything left in it.
	ContainPIDNamespace = "pid-namespace"
	// ContainProcessGroup: a process group, which `setsid` escapes.
	ContainProcessGroup = "process-group"
)

// NewPIDNamespace adds to attr what makes the started process the first
// of a PID namespace of its own: CLONE_NEWPID, and, when this process is not
// root, an identity-mapped user namespace (the caller's own uid and gid,
// nothing more), which unprivileged users may create.
func NewPIDNamespace(attr *syscall.SysProcAttr) {
	attr.Cloneflags |= syscall.CLONE_NEWPID
	if os.Geteuid() != 0 {
		uid, gid := os.Geteuid(), os.Getegid()
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
}

// NamespaceRefused tells a start that failed because the kernel (or its
// limits, or a container's seccomp policy) refuses new namespaces from one
// that failed for another reason.
func NamespaceRefused(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case syscall.EPERM, syscall.EINVAL, syscall.ENOSPC, syscall.EUSERS, syscall.ENOSYS:
		return true
	}
	return false
}
