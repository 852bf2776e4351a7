//go:build !linux

package mux

import "net"

func readDatagram(pc net.Conn) ([]byte, int, error) { return readDatagramPlain(pc) }
