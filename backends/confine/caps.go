package confine

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// Linux's prctl and capset constants (not all in package syscall).
const (
	prCapbsetDrop         = 24
	prCapAmbient          = 47
	prCapAmbientClearAll  = 4
	linuxCapabilityV3     = 0x20080522
	prSetSecurebits       = 28
	secbitNoroot          = 1 << 0
	secbitNorootLocked    = 1 << 1
	secbitNoSetuidFixup   = 1 << 2
	secbitNoSetuidLocked  = 1 << 3
	secbitKeepCapsLocked  = 1 << 5
	secbitNoCapAmbientRai = 1 << 6
	secbitNoCapAmbientLck = 1 << 7
)

// dropCapabilities leaves the calling thread (locked to its goroutine) and
// what it starts with no capability at all, even as root: Landlock refuses a
// confined process ptrace-class access to processes outside its domain
// (their /proc/PID/environ), but CAP_SYS_PTRACE overrides that, and uid
// 0 regains every capability at exec unless the bounding set is empty and
// the securebits say root is not special.
func dropCapabilities() error {
	last := 40
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			last = n
		}
	}
	if hasCap(capSetpcap) {
		for c := 0; c <= last; c++ {
			if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prCapbsetDrop, uintptr(c), 0); e != 0 && e != syscall.EINVAL {
				return fmt.Errorf("drop capability %d from the bounding set: %w", c, e)
			}
		}
		bits := secbitNoroot | secbitNorootLocked | secbitNoSetuidFixup | secbitNoSetuidLocked | secbitKeepCapsLocked | secbitNoCapAmbientRai | secbitNoCapAmbientLck
		if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetSecurebits, uintptr(bits), 0); e != 0 {
			return fmt.Errorf("securebits: %w", e)
		}
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prCapAmbient, prCapAmbientClearAll, 0); e != 0 && e != syscall.EINVAL {
		return fmt.Errorf("clear ambient capabilities: %w", e)
	}
	hdr := capHeader{version: linuxCapabilityV3}
	var data [2]capData
	if _, _, e := syscall.RawSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("capset: %w", e)
	}
	return nil
}

const capSetpcap = 8

type capHeader struct {
	version uint32
	pid     int32
}

type capData struct {
	effective, permitted, inheritable uint32
}

// hasCap reads whether the calling thread's effective set holds c.
func hasCap(c uint) bool {
	hdr := capHeader{version: linuxCapabilityV3}
	var data [2]capData
	if _, _, e := syscall.RawSyscall(syscall.SYS_CAPGET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return false
	}
	return data[c/32].effective&(1<<(c%32)) != 0
}
