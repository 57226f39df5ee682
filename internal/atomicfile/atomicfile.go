// Package atomicfile writes report files whole or not at all: the content
// goes to a new temporary file in the same folder, which replaces the target
// by rename only once it is complete. A reader never sees half a report, and
// a failed write leaves the previous file as it was.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// File is a report being written.
type File struct {
	*os.File
	target string
	done   bool
}

// Create starts writing path.
func Create(path string) (*File, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return &File{File: f, target: path}, nil
}

// Commit makes the written content the target's.
func (f *File) Commit() error {
	if f.done {
		return nil
	}
	f.done = true
	if err := f.File.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), f.target); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// Abort drops what was written.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.File.Close()
	os.Remove(f.Name())
}

// Write writes path with write, atomically.
func Write(path string, write func(io.Writer) error) error {
	f, err := Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Abort()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Commit()
}

// CheckWritable reports whether a file can be created in path's folder, and
// that path is not a directory.
func CheckWritable(path string) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("%s is a directory", path)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".rlmrun-check-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}
