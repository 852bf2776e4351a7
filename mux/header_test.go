package mux

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestRequestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want []byte
	}{
		{"ipv4", Request{kind: kindConnect, Dst: netip.MustParseAddrPort("10.96.0.10:80")},
			[]byte{1, 1, 4, 10, 96, 0, 10, 0, 80}},
		{"ipv4 mapped becomes ipv4", Request{kind: kindConnect, Dst: netip.MustParseAddrPort("[::ffff:10.0.0.1]:443")},
			[]byte{1, 1, 4, 10, 0, 0, 1, 1, 187}},
		{"ipv6", Request{kind: kindConnect, Dst: netip.MustParseAddrPort("[fd00::1]:8080")},
			[]byte{1, 1, 16, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1f, 0x90}},
		{"reset", Request{kind: kindReset, streamID: 0x01020304}, []byte{1, 2, 1, 2, 3, 4}},
		{"name", Request{kind: kindConnectName, Host: "web.default.svc", Port: 443},
			append(append([]byte{1, 3, 15}, "web.default.svc"...), 1, 187)},
		{"stripe part 0", Request{kind: kindStripe, stripe: 0x0102030405060708, part: 0, parts: 3, Dst: netip.MustParseAddrPort("10.96.0.10:80")},
			[]byte{1, 6, 1, 2, 3, 4, 5, 6, 7, 8, 0, 3, 4, 10, 96, 0, 10, 0, 80}},
		{"stripe part 2", Request{kind: kindStripe, stripe: 9, part: 2, parts: 3},
			[]byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 9, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := writeRequest(&buf, tt.req); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), tt.want) {
				t.Fatalf("encoded % x, want % x", buf.Bytes(), tt.want)
			}
			buf.WriteString("payload")
			got, err := readRequest(&buf)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.req
			want.Dst = netip.AddrPortFrom(want.Dst.Addr().Unmap(), want.Dst.Port())
			if got != want {
				t.Fatalf("decoded %+v, want %+v", got, want)
			}
			if buf.String() != "payload" {
				t.Fatalf("readRequest consumed past the header: %q left", buf.String())
			}
		})
	}
}

func TestReadRequestErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"bad version", []byte{9, 1}, errBadVersion},
		{"bad kind", []byte{1, 9}, errBadKind},
		{"bad address length", []byte{1, 1, 5}, ErrBadAddress},
		{"short address", []byte{1, 1, 4, 10, 0}, io.ErrUnexpectedEOF},
		{"short reset", []byte{1, 2, 0}, io.ErrUnexpectedEOF},
		{"empty name", []byte{1, 3, 0}, ErrBadName},
		{"name too long", []byte{1, 3, 254}, ErrBadName},
		{"short name", []byte{1, 3, 5, 'a', 'b'}, io.ErrUnexpectedEOF},
		{"name with a space", []byte{1, 3, 3, 'a', ' ', 'b', 0, 80}, ErrBadName},
		{"name with a newline", []byte{1, 3, 2, 'a', '\n', 0, 80}, ErrBadName},
		{"stripe of one part", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1}, ErrBadStripe},
		{"stripe of too many parts", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 1, 1, MaxStripeParts + 1}, ErrBadStripe},
		{"stripe part past its count", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3}, ErrBadStripe},
		{"short stripe", []byte{1, 6, 0, 0, 0}, io.ErrUnexpectedEOF},
		{"stripe part 0 without an address", []byte{1, 6, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readRequest(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := appendRequest(nil, Request{kind: kindConnect}); !errors.Is(err, ErrBadAddress) {
		t.Fatalf("encoding a zero address: got %v, want ErrBadAddress", err)
	}
	if _, err := appendRequest(nil, Request{kind: kindConnectName, Host: "a..b", Port: 80}); !errors.Is(err, ErrBadName) {
		t.Fatalf("encoding a bad name: got %v, want ErrBadName", err)
	}
}

func TestValidName(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	long := strings.Repeat(label63+".", 3) + strings.Repeat("b", 61) // 253 bytes
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"localhost", true},
		{"web.default.svc.cluster.local", true},
		{"_http._tcp.example.com", true},
		{"xn--bcher-kva.example", true},
		{"10.0.0.1", true}, // the resolver takes it as an address
		{long, true},
		{long + "b", false},
		{label63 + "a.com", false},
		{"", false},
		{".", false},
		{"example.com.", false},
		{".example.com", false},
		{"a..b", false},
		{"a b", false},
		{"a:80", false},
		{"[::1]", false},
		{"caf\u00e9.example", false},
	} {
		if got := ValidName(tt.name); got != tt.ok {
			t.Errorf("ValidName(%q) = %v, want %v", tt.name, got, tt.ok)
		}
	}
}

func TestStatus(t *testing.T) {
	for s := StatusOK; s <= StatusNoName; s++ {
		var buf bytes.Buffer
		writeStatus(&buf, s)
		got, err := readStatus(&buf)
		if err != nil || got != s {
			t.Fatalf("status %v: got %v, %v", s, got, err)
		}
	}
	if _, err := readStatus(bytes.NewReader([]byte{200})); !errors.Is(err, ErrBadStatus) {
		t.Fatalf("got %v, want ErrBadStatus", err)
	}
}

func TestHelloSkipsShellNoise(t *testing.T) {
	var buf bytes.Buffer
	buf.WriteString("Welcome to node1\nlast login: never\n")
	h := Hello{version: protocolVersion, Program: "k8stunnel test", Facts: &Facts{PodCIDRs: []string{"10.244.0.0/16"}}}
	if err := writeHello(&buf, h); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("yamux bytes")
	r := bufio.NewReader(&buf)
	got, skipped, err := readHello(r)
	if err != nil {
		t.Fatal(err)
	}
	if got.Program != h.Program || got.version != protocolVersion || got.Facts.PodCIDRs[0] != "10.244.0.0/16" {
		t.Fatalf("got %+v", got)
	}
	if !strings.Contains(string(skipped), "Welcome to node1") {
		t.Fatalf("skipped = %q", skipped)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "yamux bytes" {
		t.Fatalf("readHello consumed past the hello: %q left", rest)
	}
}

func TestHelloErrors(t *testing.T) {
	if _, _, err := readHello(bufio.NewReader(strings.NewReader("bash: k8stunnel: command not found\n"))); !errors.Is(err, ErrNoHello) {
		t.Fatalf("no magic: got %v", err)
	}
	big := append(append([]byte{}, magic[:]...), 1, 0xff, 0xff, 0xff, 0xff)
	if _, _, err := readHello(bufio.NewReader(bytes.NewReader(big))); !errors.Is(err, ErrHelloTooLarge) {
		t.Fatalf("huge body: got %v", err)
	}
	noise := bytes.Repeat([]byte("x"), maxGarbage+10)
	if _, _, err := readHello(bufio.NewReader(bytes.NewReader(noise))); !errors.Is(err, ErrNoHello) {
		t.Fatalf("endless noise: got %v", err)
	}
}

func FuzzReadRequest(f *testing.F) {
	for _, r := range []Request{
		{kind: kindConnect, Dst: netip.MustParseAddrPort("10.0.0.1:80")},
		{kind: kindConnect, Dst: netip.MustParseAddrPort("[fd00::1]:443")},
		{kind: kindReset, streamID: 7},
		{kind: kindConnectName, Host: "web.default.svc.cluster.local", Port: 80},
		{kind: kindExpose, Entry: 3, Src: netip.MustParseAddrPort("10.244.1.10:40000")},
		{kind: kindUDP, Src: netip.MustParseAddrPort("10.0.0.1:5353"), Dst: netip.MustParseAddrPort("10.96.0.10:53")},
		{kind: kindUDP, Src: netip.MustParseAddrPort("[fd00::1]:1"), Dst: netip.MustParseAddrPort("[fd00:96::a]:53")},
	} {
		b, _ := appendRequest(nil, r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := readRequest(bytes.NewReader(in))
		if err != nil {
			return
		}
		// Whatever decodes must encode, and decode again to the same request
		// (bytes may differ: a v4-mapped address is sent as IPv4).
		out, err := appendRequest(nil, req)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", req, err)
		}
		again, err := readRequest(bytes.NewReader(out))
		want := req
		want.Dst = netip.AddrPortFrom(req.Dst.Addr().Unmap(), req.Dst.Port())
		want.Src = netip.AddrPortFrom(req.Src.Addr().Unmap(), req.Src.Port())
		if err != nil || again != want {
			t.Fatalf("round trip: % x -> %+v -> % x -> %+v, %v", in, req, out, again, err)
		}
	})
}

func FuzzReadHello(f *testing.F) {
	var buf bytes.Buffer
	writeHello(&buf, Hello{version: protocolVersion, Program: "k8stunnel"})
	f.Add(buf.Bytes())
	f.Add([]byte("motd\n" + string(magic[:]) + "\x01\x00\x00\x00\x02{}"))
	f.Fuzz(func(t *testing.T, in []byte) {
		readHello(bufio.NewReader(bytes.NewReader(in)))
	})
}

func BenchmarkRequestCodec(b *testing.B) {
	req := Request{kind: kindConnect, Dst: netip.MustParseAddrPort("10.96.0.10:80")}
	var buf [maxRequestLen]byte
	b.ReportAllocs()
	for b.Loop() {
		enc, _ := appendRequest(buf[:0], req)
		if _, err := readRequest(bytes.NewReader(enc)); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDescribeNoise(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"  \n", ""},
		{"bash: k8stunnel: command not found\n", "bash: k8stunnel: command not found"},
		{"a\nb\nc\nd\n", "a / b / c"},
		{"\x00\x01\xff binary", "10 bytes that are not text"},
	}
	for _, tt := range tests {
		if got := describeNoise([]byte(tt.in)); got != tt.want {
			t.Errorf("describeNoise(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
