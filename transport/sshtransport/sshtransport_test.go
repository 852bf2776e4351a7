package sshtransport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/k8stunnel/k8stunnel/transport"
	"github.com/k8stunnel/k8stunnel/transport/helper"
	"github.com/k8stunnel/k8stunnel/transport/internal/sshtest"
	"github.com/k8stunnel/k8stunnel/transport/sshdial"
)

func testTransport(t *testing.T, opts sshtest.Options, interval, timeout time.Duration) (*sshtest.Server, *Transport) {
	t.Helper()
	home := sshtest.Env(t)
	signer, priv := sshtest.Key(t)
	opts.Key = signer.PublicKey()
	opts.Home = t.TempDir()
	srv := sshtest.Start(t, opts)
	keyFile := sshtest.KeyFile(t, filepath.Join(home, "k", "id"), priv, "")
	tr, err := New(Config{
		SSH:               sshdial.Config{Remote: srv.Remote("u"), Identities: []string{keyFile}, KnownHostsFile: srv.KnownHosts(t)},
		Helper:            helper.Config{RemoteCmd: "cat; :"},
		KeepaliveInterval: interval,
		KeepaliveTimeout:  timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, tr
}

func TestLink(t *testing.T) {
	srv, tr := testTransport(t, sshtest.Options{}, time.Hour, time.Hour)
	l, err := tr.Connect(sshtest.Ctx(t))
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if want := fmt.Sprintf("u@127.0.0.1:%d", srv.Port); l.Remote() != want {
		t.Errorf("Remote = %q, want %q", l.Remote(), want)
	}
	if want := netip.MustParseAddr("127.0.0.1"); l.Server() != want {
		t.Errorf("Server = %v, want %v", l.Server(), want)
	}
	for range 2 {
		ch, err := l.Open(sshtest.Ctx(t))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		ch.Started()
		if _, err := ch.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(ch, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q, %v; want the echo", buf, err)
		}
		ch.Close()
	}
	select {
	case <-l.Done():
		t.Fatalf("link done while open: %v", l.Err())
	default:
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	<-l.Done()
	if !errors.Is(l.Err(), net.ErrClosed) {
		t.Errorf("Err after Close = %v, want net.ErrClosed", l.Err())
	}
	l.Close()
	if _, err := l.Open(sshtest.Ctx(t)); err == nil {
		t.Error("Open on a closed link succeeded")
	}
}

func TestLinkKeepaliveTimeout(t *testing.T) {
	_, tr := testTransport(t, sshtest.Options{Silent: true}, 10*time.Millisecond, 50*time.Millisecond)
	l, err := tr.Connect(sshtest.Ctx(t))
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer l.Close()
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("link alive with a node that never answers keepalives")
	}
	if !errors.Is(l.Err(), sshdial.ErrKeepaliveTimeout) {
		t.Errorf("Err = %v, want ErrKeepaliveTimeout", l.Err())
	}
}

func TestConnectPermanent(t *testing.T) {
	sshtest.Env(t)
	signer, _ := sshtest.Key(t)
	srv := sshtest.Start(t, sshtest.Options{Key: signer.PublicKey()})
	tr, err := New(Config{SSH: sshdial.Config{Remote: srv.Remote("u"), KnownHostsFile: filepath.Join(t.TempDir(), "kh")}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = tr.Connect(sshtest.Ctx(t))
	if !errors.Is(err, transport.ErrPermanent) || !errors.Is(err, sshdial.ErrUnknownHostKey) {
		t.Errorf("Connect = %v, want a permanent unknown host key error", err)
	}
}
