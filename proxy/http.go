package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"time"
)

// HTTP is an HTTP proxy: CONNECT tunnels (what HTTPS_PROXY clients and
// browsers use for https), and plain absolute-URI requests, which are
// forwarded with a transport whose connections go through Dial.
type HTTP struct {
	Dial Dialer
	Log  *slog.Logger // nil discards
}

// Serve answers proxy requests on ln until ctx ends. It closes ln, and
// returns once every request and CONNECT tunnel it started has ended.
func (h *HTTP) Serve(ctx context.Context, ln net.Listener) error {
	log := h.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tr := &http.Transport{
		// Never Proxy from the environment: HTTP_PROXY may well name us.
		Proxy:               nil,
		DialContext:         h.Dial.DialContext,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}
	defer tr.CloseIdleConnections()
	p := &proxyHandler{
		dial: h.Dial,
		log:  log,
		rp: &httputil.ReverseProxy{
			// The request is absolute already: it goes where it says, with
			// its own Host; ReverseProxy drops the hop-by-hop headers.
			Rewrite:   func(*httputil.ProxyRequest) {},
			Transport: tr,
			ErrorLog:  slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
	}
	p.rp.ErrorHandler = p.fail
	srv := &http.Server{
		Handler:           p,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: handshakeTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	err := srv.Serve(ln)
	srv.Close()
	// Hijacked CONNECT tunnels are no longer the server's: wait for them.
	p.t.wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

type proxyHandler struct {
	dial Dialer
	log  *slog.Logger
	rp   *httputil.ReverseProxy
	t    tracker
}

func (p *proxyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.t.add() {
		http.Error(w, "k8stunnel is stopping", http.StatusServiceUnavailable)
		return
	}
	defer p.t.done()
	switch {
	case r.Method == http.MethodConnect:
		p.connect(w, r)
	case r.URL.IsAbs() && r.URL.Host != "":
		p.log.Debug("http: forward", "method", r.Method, "url", r.URL.Redacted())
		p.rp.ServeHTTP(w, r)
	default:
		http.Error(w, "this is k8stunnel's HTTP proxy: send requests with an absolute URI (http://host/path), or CONNECT", http.StatusBadRequest)
	}
}

// connect dials the target first and answers 200 only once it accepted, so
// the client learns of a refused port as an error status, not a dead tunnel.
func (p *proxyHandler) connect(w http.ResponseWriter, r *http.Request) {
	target := r.Host
	if _, _, err := net.SplitHostPort(target); err != nil {
		http.Error(w, fmt.Sprintf("CONNECT needs host:port, not %q", target), http.StatusBadRequest)
		return
	}
	dctx, cancel := context.WithTimeout(r.Context(), dialTimeout)
	remote, err := p.dial.DialContext(dctx, "tcp", target)
	cancel()
	if err != nil {
		p.fail(w, r, err)
		return
	}
	defer remote.Close()
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.log.Debug("http: cannot take over the connection", "err", err)
		http.Error(w, "cannot take over this connection", http.StatusInternalServerError)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Time{})
	if _, err := brw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	// Whatever the client sent after its request is the tunnel's first data.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := remote.Write(b); err != nil {
			return
		}
	}
	p.log.Debug("http: connect", "dst", target)
	if err := relay(r.Context(), c, remote); err != nil {
		p.log.Debug("http: connection ended", "dst", target, "err", err)
	}
}

// fail answers a request whose target could not be reached: 504 when it did
// not answer in time, 502 for every other failure.
func (p *proxyHandler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusBadGateway
	if classify(err) == failTimeout {
		code = http.StatusGatewayTimeout
	}
	p.log.Debug("http: failed", "host", r.Host, "err", err)
	http.Error(w, fmt.Sprintf("k8stunnel: cannot reach %s: %v", r.Host, err), code)
}
