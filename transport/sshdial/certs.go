package sshdial

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshCALines finds the @cert-authority lines of known_hosts files, by
// "file:line". knownhosts lists a CA's key among a host's known keys
// (KeyError.Want) as if it were the host's own: a CA line must neither pin
// the host key type nor be called the host's old key.
func sshCALines(files []string) map[string]bool {
	lines := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			if strings.HasPrefix(strings.TrimSpace(sc.Text()), "@cert-authority") {
				lines[f+":"+strconv.Itoa(n)] = true
			}
		}
	}
	return lines
}

// sshHostKeysOnly drops the CA lines from keys.
func sshHostKeysOnly(keys []knownhosts.KnownKey, ca map[string]bool) []knownhosts.KnownKey {
	var out []knownhosts.KnownKey
	for _, k := range keys {
		if !ca[k.Filename+":"+strconv.Itoa(k.Line)] {
			out = append(out, k)
		}
	}
	return out
}

// sshCertAlgorithms are the host certificate algorithms x/crypto supports.
func sshCertAlgorithms() []string {
	var out []string
	for _, a := range ssh.SupportedAlgorithms().HostKeys {
		if strings.Contains(a, "-cert-") {
			out = append(out, a)
		}
	}
	return out
}
