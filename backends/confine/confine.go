// Package confine confines the calling process, and everything it starts
// afterwards, with Landlock: what files it may read, write and run, which
// TCP ports it may connect to, and that it may neither signal nor ptrace
// (and so read /proc/PID/environ of) any process outside its domain. It
// needs no privileges; the kernel's Landlock ABI decides how much of a
// Policy is enforced, and Apply says what was.
package confine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// Modes, as the spec's backend.local.confinement names them.
const (
	// BestEffort confines with what the kernel offers, or not at all.
	BestEffort = "best-effort"
	// Required fails where the kernel has no Landlock.
	Required = "required"
	// Off does not confine.
	Off = "off"
)

// None is the result of a process left unconfined.
const None = "none"

// ErrUnavailable is returned in Required mode by a kernel without Landlock
// (or a build of rlmrun that cannot use it).
var ErrUnavailable = errors.New("landlock is not available on this kernel (backend.local.confinement: required)")

// errCgo is ErrUnavailable for a cgo build.
var errCgo = fmt.Errorf("%w: this rlmrun was built with cgo, and a cgo build cannot confine its agent; build it with CGO_ENABLED=0 (as the README's install does)", ErrUnavailable)

// Unavailable says why Landlock cannot be used here (nil when it can).
func Unavailable() error {
	if cgoBuild {
		return errCgo
	}
	if ABI() < 1 {
		return ErrUnavailable
	}
	return nil
}

// Policy is what a confined process may reach; everything else is refused.
type Policy struct {
	// RW are directories it may read, write, and run files beneath.
	RW []string
	// RODirs are directories it may read and run files beneath.
	RODirs []string
	// ROFiles are files it may read and run.
	ROFiles []string
	// RWFiles are files it may read and write (device nodes: /dev/null).
	RWFiles []string
	// ConnectTCP are the TCP ports it may connect to (any address).
	ConnectTCP []uint16
	// Network leaves TCP alone (the spec's network: host).
	Network bool
}

// System is the part of a Policy every REPL needs: the system's programs
// and libraries, the dynamic loader's cache and the few /etc files that
// interpreters read — not /etc as a whole (no passwd, no shadow, no
// host configuration) — the harmless devices, and /proc (other processes'
// secrets in it are guarded by Landlock's ptrace rule).
func System() Policy {
	return Policy{
		RODirs: []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/usr/local", "/etc/alternatives"},
		ROFiles: []string{
			"/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf",
			"/etc/mime.types", "/etc/inputrc",
		},
		RWFiles: []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"},
	}
}

// WithInterpreter adds the directories of an interpreter that lives
// outside the system's (a pyenv or virtualenv python): the folder of its
// path as named and, resolved, the installation it belongs to.
func (p Policy) WithInterpreter(path string) Policy {
	if path == "" || !filepath.IsAbs(path) {
		return p
	}
	p.RODirs = append(p.RODirs, filepath.Dir(path))
	if real, err := filepath.EvalSymlinks(path); err == nil {
		// bin/python3 -> the installation (lib/, include/ next to bin/).
		p.RODirs = append(p.RODirs, filepath.Dir(filepath.Dir(real)))
	}
	return p
}

// ABI is the Landlock ABI version this process can use: the kernel's
// (KernelABI), or 0 in a cgo build, which cannot use it.
func ABI() int {
	if cgoBuild {
		return 0
	}
	return KernelABI()
}

// KernelABI is the kernel's Landlock ABI version, 0 without Landlock.
func KernelABI() int {
	v, err := llsys.LandlockGetABIVersion()
	if err != nil || v < 0 {
		return 0
	}
	return v
}

// maxABI is the newest ABI this package asks for: the one it is tested on.
const maxABI = 7

// Apply confines the calling process (all its threads) and its future
// children by p, in mode (BestEffort, Required; Off does nothing). It
// returns what is enforced: "landlock-abi-N" or None. no_new_privs is
// set with it: nothing started afterwards gains privileges. What the
// confined process then starts through Scoped also has no capabilities
// and is scoped.
func Apply(p Policy, mode string) (string, error) {
	if mode == Off {
		return None, nil
	}
	abi := ABI()
	if abi < 1 {
		if mode == Required {
			return None, Unavailable()
		}
		return None, nil
	}
	var rules []landlock.Rule
	if dirs := existing(p.RW); len(dirs) > 0 {
		rules = append(rules, landlock.RWDirs(dirs...).WithRefer())
	}
	if dirs := existing(p.RODirs); len(dirs) > 0 {
		rules = append(rules, landlock.RODirs(dirs...))
	}
	if files := existing(p.ROFiles); len(files) > 0 {
		rules = append(rules, landlock.ROFiles(files...))
	}
	if files := existing(p.RWFiles); len(files) > 0 {
		rules = append(rules, landlock.RWFiles(files...).WithIoctlDev())
	}
	// Scoping is not part of this layer: every thread of a Go process gets
	// a domain of its own from it (ABI 7 has no way to share one), and a
	// scoped thread could not signal what another thread started. Scoped
	// adds it on the one thread that starts the REPL.
	cfg := landlock.Config{HandledAccessFS: landlock.V7.HandledAccessFS, HandledAccessNet: landlock.V7.HandledAccessNet}.BestEffort()
	if p.Network {
		cfg = landlock.Config{HandledAccessFS: landlock.V7.HandledAccessFS}.BestEffort()
	} else {
		for _, port := range p.ConnectTCP {
			rules = append(rules, landlock.ConnectTCP(port))
		}
	}
	if err := cfg.Restrict(rules...); err != nil {
		return None, fmt.Errorf("landlock: %w", err)
	}
	return fmt.Sprintf("landlock-abi-%d", min(abi, maxABI)), nil
}

// existing keeps the paths that exist: a rule for a missing path is an
// error to Landlock, and a system without /lib64 is no reason to fail.
func existing(paths []string) []string {
	var out []string
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// Scoped runs start on an OS thread of its own that first confines itself
// further with Landlock's scoping (ABI >= 6): what start starts — the REPL
// — and everything it starts can neither signal nor reach the abstract
// Unix sockets of processes outside that domain, and (Landlock's ptrace
// rule) cannot read their /proc/PID/environ. The thread stays until
// exited is closed: a child's parent-death signal follows the thread that
// started it. Then it ends with its goroutine, confinement and all.
//
// The thread also drops every capability first (capabilities, like
// Landlock domains, belong to threads; doing it on this one alone costs
// microseconds, not a stop of every thread of the agent).
func Scoped(start func() error, exited <-chan struct{}) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is not reused
		if err := dropCapabilities(); err != nil {
			errc <- err
			return
		}
		if ABI() < 6 {
			if err := start(); err != nil {
				errc <- err
				return
			}
			errc <- nil
			<-exited
			return
		}
		attr := llsys.RulesetAttr{Scoped: llsys.ScopeSignal | llsys.ScopeAbstractUnixSocket}
		fd, err := llsys.LandlockCreateRuleset(&attr, 0)
		if err != nil {
			errc <- fmt.Errorf("landlock scope: %w", err)
			return
		}
		err = llsys.LandlockRestrictSelf(fd, 0)
		syscall.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("landlock scope: %w", err)
			return
		}
		if err := start(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		<-exited
	}()
	return <-errc
}
