//go:build !cgo

package confine

// cgoBuild says this binary was built with cgo (see build_cgo.go).
const cgoBuild = false
