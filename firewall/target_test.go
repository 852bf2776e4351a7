package firewall

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // Target.String of the result
		from uint16
		to   uint16
	}{
		{in: "10.96.0.0/12", want: "10.96.0.0/12"},
		{in: "10.0.0.1", want: "10.0.0.1/32"},
		{in: "10.1.2.3/8", want: "10.0.0.0/8"},
		{in: "0/0", want: "0.0.0.0/0"},
		{in: "0.0.0.0/0", want: "0.0.0.0/0"},
		{in: "::/0", want: "::/0"},
		{in: "fd00::/8", want: "fd00::/8"},
		{in: "fd00::1", want: "fd00::1/128"},
		{in: "10.0.0.0/8:80", want: "10.0.0.0/8:80", from: 80, to: 80},
		{in: "10.0.0.1:443", want: "10.0.0.1/32:443", from: 443, to: 443},
		{in: "10.0.0.0/8:8000-9000", want: "10.0.0.0/8:8000-9000", from: 8000, to: 9000},
		{in: "0/0:22", want: "0.0.0.0/0:22", from: 22, to: 22},
		{in: "[fd00::/8]:443", want: "[fd00::/8]:443", from: 443, to: 443},
		{in: "[fd00::1]:80-90", want: "[fd00::1/128]:80-90", from: 80, to: 90},
		{in: "[fd00::1]", want: "fd00::1/128"},
		{in: "10.0.0.0/8:1-65535", want: "10.0.0.0/8:1-65535", from: 1, to: 65535},
	} {
		got, err := ParseTarget(tt.in)
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", tt.in, err)
			continue
		}
		if got.String() != tt.want || got.FirstPort != tt.from || got.LastPort != tt.to {
			t.Errorf("ParseTarget(%q) = %s (ports %d-%d), want %s (ports %d-%d)",
				tt.in, got, got.FirstPort, got.LastPort, tt.want, tt.from, tt.to)
		}
		if got.Prefix != got.Prefix.Masked() {
			t.Errorf("ParseTarget(%q) = %s, not masked", tt.in, got.Prefix)
		}
	}
}

func TestParseTargetErrors(t *testing.T) {
	for _, in := range []string{
		"", "foo", "10.0.0.0/33", "10.0.0", "10.0.0.0/8:", "10.0.0.0/8:0", "10.0.0.0/8:65536",
		"10.0.0.0/8:90-80", "10.0.0.0/8:80-", "10.0.0.0/8:-80", "10.0.0.0/8:x", "10.0.0.0/8:+80",
		"[fd00::/8", "[fd00::/8]443", "[fd00::/8]:", "[10.0.0.0/8]:80", "fe80::1%eth0", "[fe80::1%eth0]:80",
		"0/0/0", "fd00::/129", "example.com", "example.com:80", " 10.0.0.0/8",
	} {
		_, err := ParseTarget(in)
		if err == nil {
			t.Errorf("ParseTarget(%q) succeeded, want error", in)
			continue
		}
		if !strings.Contains(err.Error(), `"`+in+`"`) {
			t.Errorf("ParseTarget(%q) error %q does not name the input", in, err)
		}
	}
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"10.96.0.0/12", "10.0.0.1", "0/0", "::/0", "fd00::/8", "10.0.0.0/8:80",
		"10.0.0.0/8:8000-9000", "[fd00::/8]:443", "[fd00::1]:80-90", "::ffff:10.0.0.1", "[::ffff:1.2.3.4/120]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTarget(s)
		if err != nil {
			return
		}
		if err := got.validate(); err != nil {
			t.Fatalf("ParseTarget(%q) = %+v, which is invalid: %v", s, got, err)
		}
		again, err := ParseTarget(got.String())
		if err != nil || again != got {
			t.Fatalf("ParseTarget(%q) = %+v, but its String %q parses to %+v, %v", s, got, got.String(), again, err)
		}
	})
}

func TestSpecJSONRoundTrip(t *testing.T) {
	spec := Spec{
		Port:    12300,
		Include: []Target{mustTarget(t, "10.96.0.0/12"), mustTarget(t, "[fd00::/8]:80-90")},
		Exclude: []Target{mustTarget(t, "192.168.1.10")},
		DNS:     []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("[::1]:53")},
		DNSPort: 5300,
	}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"port":12300,"include":["10.96.0.0/12","[fd00::/8]:80-90"],"exclude":["192.168.1.10/32"],` +
		`"dns":["127.0.0.53:53","[::1]:53"],"dns_port":5300}`
	if string(b) != want {
		t.Errorf("json.Marshal(spec) =\n%s\nwant\n%s", b, want)
	}
	var back Spec
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, spec) {
		t.Errorf("round trip = %+v, want %+v", back, spec)
	}
	if err := json.Unmarshal([]byte(`{"port":1,"include":["10.0.0.0/33"]}`), &back); err == nil {
		t.Error("unmarshalling a bad target succeeded")
	}
}

func mustTarget(t testing.TB, s string) Target {
	t.Helper()
	tg, err := ParseTarget(s)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}
