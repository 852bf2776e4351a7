//go:build !linux

package rawio

const supported = false

func isNonblocking(uintptr) bool { return false }

func read(uintptr, []byte) (int, error)     { panic("rawio: not supported") }
func write(uintptr, []byte) (int, error)    { panic("rawio: not supported") }
func writev(uintptr, [][]byte) (int, error) { panic("rawio: not supported") }
