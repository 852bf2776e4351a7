package mux

import (
	"encoding/binary"
	"io"
)

const (
	yamuxTypePing = 2
	yamuxFlagSYN  = 1
)

// pingFilter drops the ping requests the peer sends before yamux sees them.
// yamux v0.1.2 answers each in a goroutine of its own that may wait for the
// write timeout, so a node flooding pings grows the client's memory without
// bound. Neither end of ours ever pings (keepalive is off; SSH keepalives
// check the link), so there is nothing to answer.
//
// It follows the frame sequence like frameScanner: a header, then for a data
// frame its body, which passes straight through.
type pingFilter struct {
	r    io.Reader
	hdr  [yamuxHeaderLen]byte
	nhdr int    // header bytes read of the current frame
	out  []byte // the current header, still to be handed on
	body uint32 // body bytes of the current frame still to come
}

func (f *pingFilter) Read(p []byte) (int, error) {
	for {
		if len(f.out) > 0 {
			n := copy(p, f.out)
			f.out = f.out[n:]
			return n, nil
		}
		if f.body > 0 {
			if uint64(len(p)) > uint64(f.body) {
				p = p[:f.body]
			}
			n, err := f.r.Read(p)
			f.body -= uint32(n)
			return n, err
		}
		n, err := f.r.Read(f.hdr[f.nhdr:])
		f.nhdr += n
		if f.nhdr < yamuxHeaderLen {
			if err != nil {
				return 0, err
			}
			continue
		}
		f.nhdr = 0
		switch f.hdr[1] {
		case yamuxTypePing:
			if binary.BigEndian.Uint16(f.hdr[2:])&yamuxFlagSYN != 0 {
				if err != nil {
					return 0, err
				}
				continue // a ping request: dropped
			}
		case yamuxTypeData:
			f.body = binary.BigEndian.Uint32(f.hdr[8:])
		}
		f.out = f.hdr[:]
		if err != nil && err != io.EOF {
			return 0, err
		}
	}
}
