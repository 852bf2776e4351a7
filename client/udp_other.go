//go:build !linux

package client

import (
	"context"
	"net"
)

// udpListen needs TPROXY; New refuses the transparent mode elsewhere first.
func (c *Client) udpListen() error { return nil }

func (c *Client) udpTransparent(context.Context, Firewall) error { return nil }

func (c *Client) udpLoop(context.Context, *net.UDPConn) {}
