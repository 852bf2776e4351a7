//go:build unix

package main

import (
	"errors"
	"os"
	"syscall"
)

// statOwner follows symlinks: what sudo runs is what the path leads to.
func statOwner(path string) (owner, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return owner{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return owner{}, errors.New("no owner in the file's status")
	}
	return owner{uid: st.Uid, mode: fi.Mode()}, nil
}
