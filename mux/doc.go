// Package mux is the wire protocol both ends of a k8stunnel share: the session
// handshake, the per-stream request header, the yamux settings, and the relay
// that copies bytes between a local socket and a stream with half-close.
//
// The client and the helper on the node never import each other; everything
// they must agree on lives here, so one version number covers all of it.
package mux
