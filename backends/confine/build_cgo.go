//go:build cgo

package confine

// cgoBuild says this binary was built with cgo. go-landlock then confines
// all threads through libpsx, whose per-thread signals never reach the Go
// runtime's threads of an agent that leads its PID namespace: the agent
// hangs before it says hello. A cgo build therefore runs unconfined
// (best-effort) or refuses (required), as on a kernel without Landlock.
const cgoBuild = true
