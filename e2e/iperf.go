//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
)

// IperfUDPResult reads what `iperf3 -u -J` printed (out) and how it ended (runErr): the share of datagrams lost, in
// percent, and how many were sent. A run that sent nothing or reported an error is an error.
func IperfUDPResult(out []byte, runErr error) (lostPercent float64, packets int64, err error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			Sum struct {
				LostPercent float64 `json:"lost_percent"`
				Packets     int64   `json:"packets"`
			} `json:"sum"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		return 0, 0, fmt.Errorf("iperf3 -u: %v, %v: %s", runErr, jerr, out)
	}
	if r.Error != "" || r.End.Sum.Packets == 0 {
		return 0, 0, fmt.Errorf("iperf3 -u: %q (%v): %s", r.Error, runErr, out)
	}
	return r.End.Sum.LostPercent, r.End.Sum.Packets, nil
}
