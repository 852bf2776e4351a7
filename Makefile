# `sudo make test` runs everything; the e2e tests need root for their network namespaces.
GO ?= go
# sudo resets PATH to secure_path, which does not know where Go lives.
export PATH := $(PATH):/usr/local/go/bin

UNIT_PKGS = $$($(GO) list ./... | grep -v '/e2e')

.PHONY: build dist test unit cross e2e demo deps cleanup bench bench-deps

build:
	$(GO) build -o bin/k8stunnel ./cmd/k8stunnel

# Static builds for other nodes: next to the k8stunnel that runs, k8stunnel-linux-ARCH is what a node of that
# architecture gets as its helper.
DIST_ARCHS = amd64 arm64 arm
dist:
	for a in $(DIST_ARCHS); do CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build -o bin/k8stunnel-linux-$$a ./cmd/k8stunnel || exit 1; done

deps:
	scripts/deps.sh

test: deps cross
	$(GO) vet ./...
	$(GO) test $(UNIT_PKGS)
	$(GO) test -count=1 -v -timeout 10m ./e2e/

unit:
	$(GO) test $(UNIT_PKGS)

# The proxy mode (--socks, --http-proxy) runs on macOS and Windows laptops too,
# and the tests compile there (those that need Linux say so in a build tag).
cross:
	GOOS=darwin GOARCH=amd64 $(GO) build -o /dev/null ./cmd/k8stunnel
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./cmd/k8stunnel
	GOOS=windows GOARCH=amd64 $(GO) build -o /dev/null ./cmd/k8stunnel
	GOOS=darwin GOARCH=arm64 $(GO) vet ./...
	GOOS=windows GOARCH=amd64 $(GO) vet ./...

e2e: deps
	$(GO) test -count=1 -v -timeout 10m ./e2e/

# Builds a throwaway lab, shows curl reaching a service IP through k8stunnel, then removes it all (also on Ctrl-C).
demo: deps
	$(GO) run ./e2e/demo

# Removes namespaces, processes and temp dirs that interrupted e2e runs left behind.
cleanup:
	$(GO) run ./e2e/demo -cleanup

bench-deps: deps
	scripts/bench-deps.sh

# k8stunnel side by side with direct routing, OpenSSH and sshuttle in the e2e lab (about 6 minutes, root): prints a
# table and writes bench-out/results.json and bench-out/results.png.
bench: bench-deps
	$(GO) run ./e2e/bench -out bench-out
