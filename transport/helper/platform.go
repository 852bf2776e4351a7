package helper

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/k8stunnel/k8stunnel/tui"
)

// exeFor is the build to run on a node whose `uname -sm` printed uname:
// Config.Helper if set, else this executable if it fits, else
// k8stunnel-OS-ARCH next to it.
func (l *Launcher) exeFor(uname string) (helperExe, error) {
	if l.cfg.Helper != "" || helperPlatformMatches(uname, runtime.GOOS, runtime.GOARCH) {
		return l.firstExe()
	}
	mismatch := fmt.Errorf("the node runs %s, this k8stunnel is %s/%s", uname, runtime.GOOS, runtime.GOARCH)
	goos, goarch, ok := helperPlatform(uname)
	if !ok {
		return helperExe{}, &tui.HintError{Err: mismatch,
			Hint: "pass --helper FILE with a k8stunnel built for the node, or install one there and pass --remote-cmd '/path/to/k8stunnel server'"}
	}
	own, err := l.localExe()
	if err != nil {
		return helperExe{}, err
	}
	dir := filepath.Dir(own.path)
	if own.path == "/proc/self/exe" {
		if p, err := os.Executable(); err == nil {
			dir = filepath.Dir(p)
		}
	}
	name := filepath.Join(dir, "k8stunnel-"+goos+"-"+goarch)
	if st, err := os.Stat(name); err == nil && st.Mode().IsRegular() {
		l.log.Debug("using the build for the node's platform", "file", name)
		return l.hashed(name)
	}
	return helperExe{}, &tui.HintError{Err: fmt.Errorf("%w, and there is no %s", mismatch, name),
		Hint: fmt.Sprintf("put a %s/%s build there (make dist builds them) or pass --helper FILE", goos, goarch)}
}

// firstExe is the build to try before the node's platform is known.
func (l *Launcher) firstExe() (helperExe, error) {
	if l.cfg.Helper != "" {
		return l.hashed(l.cfg.Helper)
	}
	return l.localExe()
}

// hashed is helperLocalExe for any file, each read once per Launcher.
func (l *Launcher) hashed(path string) (helperExe, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.builds[path]; ok {
		return e, nil
	}
	e, err := helperLocalExe(path)
	if err != nil {
		return helperExe{}, err
	}
	if l.builds == nil {
		l.builds = map[string]helperExe{}
	}
	l.builds[path] = e
	return e, nil
}

// helperPlatform is the GOOS and GOARCH of a node whose `uname -sm` printed
// uname.
func helperPlatform(uname string) (goos, goarch string, ok bool) {
	f := strings.Fields(uname)
	if len(f) != 2 {
		return "", "", false
	}
	for arch, machines := range helperMachines {
		for _, m := range machines {
			if m == f[1] {
				return strings.ToLower(f[0]), arch, true
			}
		}
	}
	return "", "", false
}
