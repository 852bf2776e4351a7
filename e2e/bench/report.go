//go:build linux

package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// metric is one row of the report: a figure per mode.
type metric struct {
	ID     string `json:"id"`
	Title  string `json:"title"`
	Unit   string `json:"unit"`
	Better string `json:"better"` // "higher" or "lower"
	// Values by mode; a mode that failed or was not run has none. A figure taken in several rounds is their median.
	Values map[string]float64 `json:"values"`
	// Samples by mode: every figure taken, one per round.
	Samples map[string][]float64 `json:"samples,omitempty"`
	// Errors by mode, for figures that could not be taken.
	Errors map[string]string `json:"errors,omitempty"`
	// Ratios are k8stunnel's figure divided by each other mode's, for every k8stunnel variant in the row.
	Ratios map[string]map[string]ratioValue `json:"ratios,omitempty"`
}

// ratioValue is written as null when infinite (a tunnel that held no connection at all): JSON has no infinity.
type ratioValue float64

func (v ratioValue) MarshalJSON() ([]byte, error) {
	if math.IsInf(float64(v), 0) || math.IsNaN(float64(v)) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(v))
}

type results struct {
	Date     string  `json:"date"`
	CPUs     int     `json:"cpus"`
	Kernel   string  `json:"kernel"`
	Seconds  float64 `json:"seconds"`
	Settings struct {
		BulkSeconds float64 `json:"bulk_seconds"`
		RateSeconds float64 `json:"rate_seconds"`
		RateClients int     `json:"rate_clients"`
		HoldSteps   string  `json:"hold_steps"`
		RTTms       int     `json:"rtt_ms"`
		Parallel    int     `json:"parallel"`
		Rounds      int     `json:"rounds"`
		Cipher      string  `json:"cipher"`
		OpenSSH     string  `json:"openssh"`
		Sshuttle    string  `json:"sshuttle"`
	} `json:"settings"`
	Load    map[string]string     `json:"load_at_start"`
	Metrics []*metric             `json:"metrics"`
	Rate    map[string]rateResult `json:"rate_detail"`
	Hold    map[string]holdResult `json:"hold_detail"`
	Setup   map[string]string     `json:"setup_errors,omitempty"`
	byID    map[string]*metric
}

func newResults(cfg config) *results {
	r := &results{
		Date:  time.Now().UTC().Format(time.RFC3339),
		CPUs:  runtime.NumCPU(),
		Load:  map[string]string{"bench": loadAvg()},
		Rate:  map[string]rateResult{},
		Hold:  map[string]holdResult{},
		Setup: map[string]string{},
		byID:  map[string]*metric{},
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		r.Kernel = strings.TrimSpace(string(b))
	}
	s := &r.Settings
	s.BulkSeconds, s.RateSeconds, s.RateClients = cfg.bulk.Seconds(), cfg.rate.Seconds(), 16
	s.HoldSteps, s.RTTms, s.Parallel, s.Rounds = cfg.steps, int(2*oneWayDelay/time.Millisecond), cfg.parallel, cfg.rounds
	s.Cipher = "aes128-gcm@openssh.com"
	if out, err := exec.Command("ssh", "-V").CombinedOutput(); err == nil {
		s.OpenSSH = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("sshuttle", "--version").CombinedOutput(); err == nil {
		s.Sshuttle = strings.TrimSpace(string(out))
	}
	for _, m := range []metric{
		{ID: "bulk_up", Title: "bulk laptop→pod", Unit: "Mbit/s", Better: "higher"},
		{ID: "bulk_down", Title: "bulk pod→laptop", Unit: "Mbit/s", Better: "higher"},
		{ID: "cpu_up", Title: "tunnel CPU, laptop→pod", Unit: "CPU-s/GB", Better: "lower"},
		{ID: "cpu_down", Title: "tunnel CPU, pod→laptop", Unit: "CPU-s/GB", Better: "lower"},
		{ID: "conn_rate", Title: "new connections (16 clients)", Unit: "conn/s", Better: "higher"},
		{ID: "conn_p50", Title: "connect+echo+close p50", Unit: "ms", Better: "lower"},
		{ID: "conn_p99", Title: "connect+echo+close p99", Unit: "ms", Better: "lower"},
		{ID: "rr1_rate", Title: "request/response, 1 warm connection", Unit: "trips/s", Better: "higher"},
		{ID: "rr1_p50", Title: "request/response, 1 connection, p50", Unit: "ms", Better: "lower"},
		{ID: "rr1_p99", Title: "request/response, 1 connection, p99", Unit: "ms", Better: "lower"},
		{ID: "rr50_rate", Title: "request/response, 50 warm connections", Unit: "trips/s", Better: "higher"},
		{ID: "rr50_p99", Title: "request/response, 50 connections, p99", Unit: "ms", Better: "lower"},
		{ID: "held", Title: "connections held open and echoing", Unit: "conns", Better: "higher"},
		{ID: "rss_per_conn", Title: "client RSS per held connection", Unit: "KiB", Better: "lower"},
		{ID: "rtt_up", Title: "bulk laptop→pod, 50 ms RTT", Unit: "Mbit/s", Better: "higher"},
		{ID: "rtt_down", Title: "bulk pod→laptop, 50 ms RTT", Unit: "Mbit/s", Better: "higher"},
		{ID: "udp_p50", Title: "UDP echo round trip p50", Unit: "ms", Better: "lower"},
		{ID: "udp_p99", Title: "UDP echo round trip p99", Unit: "ms", Better: "lower"},
		{ID: "udp_loss_50", Title: "iperf3 -u 50 Mbit/s loss", Unit: "%", Better: "lower"},
		{ID: "udp_loss_200", Title: "iperf3 -u 200 Mbit/s loss", Unit: "%", Better: "lower"},
	} {
		m.Values, m.Errors, m.Samples = map[string]float64{}, map[string]string{}, map[string][]float64{}
		r.Metrics = append(r.Metrics, &m)
		r.byID[m.ID] = &m
	}
	return r
}

func (r *results) set(id, mode string, v float64, err error) {
	m := r.byID[id]
	if err != nil {
		m.Errors[mode] = firstLine(err.Error())
		logf("  %s %s: %v", mode, id, err)
		return
	}
	m.Samples[mode] = append(m.Samples[mode], v)
	m.Values[mode] = median(m.Samples[mode])
}

// median of v, which is not empty.
func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func (r *results) fail(mode, what string, err error) {
	r.Setup[mode] = fmt.Sprintf("%s: %v", what, err)
	logf("%s: %s failed: %v", mode, what, err)
}

func (r *results) setRate(mode string, rr rateResult, err error) {
	r.Rate[mode] = rr
	if err != nil {
		for _, id := range []string{"conn_rate", "conn_p50", "conn_p99"} {
			r.set(id, mode, 0, err)
		}
		return
	}
	r.set("conn_rate", mode, rr.Rate, nil)
	r.set("conn_p50", mode, rr.P50ms, nil)
	r.set("conn_p99", mode, rr.P99ms, nil)
}

func (r *results) setRR(mode string, clients int, rr rrResult, err error) {
	id := fmt.Sprintf("rr%d_", clients)
	if err != nil {
		for _, f := range []string{"rate", "p50", "p99"} {
			if _, ok := r.byID[id+f]; ok {
				r.set(id+f, mode, 0, err)
			}
		}
		return
	}
	r.set(id+"rate", mode, rr.Rate, nil)
	if _, ok := r.byID[id+"p50"]; ok {
		r.set(id+"p50", mode, rr.P50ms, nil)
	}
	r.set(id+"p99", mode, rr.P99ms, nil)
}

func (r *results) setHold(mode string, h holdResult, err error) {
	r.Hold[mode] = h
	if err != nil {
		r.set("held", mode, 0, err)
		return
	}
	r.set("held", mode, float64(h.Held), nil)
	if h.KiBPerConn > 0 {
		r.set("rss_per_conn", mode, h.KiBPerConn, nil)
	}
	if h.TunnelDied {
		r.byID["held"].Errors[mode] = "tunnel process died at the next step"
	}
}

// columns are the modes in table order; k8stunnel variants are every column starting with "k8stunnel".
var columns = []string{"direct", "openssh", "sshuttle", "k8stunnel"}

func (r *results) computeRatios() {
	for _, m := range r.Metrics {
		m.Ratios = map[string]map[string]ratioValue{}
		for k, kv := range m.Values {
			if !strings.HasPrefix(k, "k8stunnel") {
				continue
			}
			rat := map[string]ratioValue{}
			for _, other := range []string{"sshuttle", "openssh"} {
				if ov, ok := m.Values[other]; ok {
					rat[other] = ratioValue(ratio(kv, ov))
				}
			}
			m.Ratios[k] = rat
		}
	}
}

// ratio is a/b; a held-connections figure against a tunnel that held none is +Inf, shown as "∞".
func ratio(a, b float64) float64 {
	if b == 0 {
		if a == 0 {
			return 1
		}
		return math.Inf(1)
	}
	return a / b
}

func (r *results) printTable(w io.Writer) {
	r.computeRatios()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure\tunit\tdirect\topenssh\tsshuttle\tk8stunnel\tk8s/sshuttle\tk8s/openssh\t")
	for _, m := range r.Metrics {
		variants := []string{}
		for k := range m.Values {
			if strings.HasPrefix(k, "k8stunnel") {
				variants = append(variants, k)
			}
		}
		if _, failed := m.Errors["k8stunnel"]; failed || len(variants) == 0 {
			variants = []string{"k8stunnel"}
		}
		sortVariants(variants)
		for i, k := range variants {
			title := m.Title
			if k != "k8stunnel" {
				title += " (" + strings.TrimPrefix(k, "k8stunnel ×") + " parallel)"
			} else if len(variants) > 1 {
				title += " (1 stream)"
			}
			cells := []string{title, m.Unit}
			for _, c := range columns[:3] {
				if i > 0 {
					cells = append(cells, "〃")
					continue
				}
				cells = append(cells, r.cell(m, c))
			}
			cells = append(cells, r.cell(m, k))
			for _, other := range []string{"sshuttle", "openssh"} {
				if v, ok := m.Ratios[k][other]; ok {
					cells = append(cells, fmtRatio(float64(v)))
				} else {
					cells = append(cells, "-")
				}
			}
			fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "\nratios are k8stunnel ÷ the other: above 1 is better for higher-is-better figures, below 1 for ms and KiB.")
	if r.Settings.Rounds > 1 {
		fmt.Fprintf(w, "new connections and request/response: median of %d rounds, the modes taking turns.\n", r.Settings.Rounds)
	}
	for mode, e := range r.Setup {
		fmt.Fprintf(w, "%s could not be set up: %s\n", mode, firstLine(e))
	}
	for _, m := range r.Metrics {
		for mode, e := range m.Errors {
			fmt.Fprintf(w, "%s, %s: %s\n", m.Title, mode, e)
		}
	}
}

func (r *results) cell(m *metric, mode string) string {
	v, ok := m.Values[mode]
	if !ok {
		if _, failed := m.Errors[mode]; failed {
			return "failed"
		}
		return "-"
	}
	switch {
	case m.Unit == "ms" || m.Unit == "KiB" || m.Unit == "CPU-s/GB" || m.Unit == "%":
		return fmt.Sprintf("%.2f", v)
	case m.ID == "held" && m.Errors[mode] != "":
		return fmt.Sprintf("%.0f (died)", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtRatio(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "∞"
	case v >= 10:
		return fmt.Sprintf("%.0f×", v)
	case v >= 1:
		return fmt.Sprintf("%.1f×", v)
	}
	return fmt.Sprintf("%.2f×", v)
}

func sortVariants(v []string) {
	// "k8stunnel" (one channel) first, then the many-channel runs.
	for i := range v {
		for j := i + 1; j < len(v); j++ {
			if v[j] == "k8stunnel" || (v[i] != "k8stunnel" && v[j] < v[i]) {
				v[i], v[j] = v[j], v[i]
			}
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func (r *results) writeJSON(path string) error {
	r.computeRatios()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

//go:embed plot.py
var plotScript string

func (r *results) writePNG(jsonPath, pngPath string) error {
	cmd := exec.Command(python, "-c", plotScript, jsonPath, pngPath)
	cmd.Env = append(os.Environ(), "MPLBACKEND=Agg", "MPLCONFIGDIR="+os.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("drawing %s: %w\n%s", pngPath, err, out)
	}
	return nil
}
