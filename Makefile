# synguard: SYN-flood defence with XDP. `make help` lists the targets.

GO        ?= go
PREFIX    ?= /usr
DESTDIR   ?=
BINDIR    ?= $(PREFIX)/bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
FUZZTIME  ?= 20s
GOTESTFLAGS ?= -count=1 -timeout 20m

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: generate
generate: ## Regenerate the bpf2go output (needs clang, llvm-strip, libbpf-dev).
	$(GO) generate ./bpf/...

.PHONY: check-generate
check-generate: generate ## Fail when the committed bpf2go output is stale.
	git diff --exit-code -- bpf/ || { echo "bpf2go output is stale: run 'make generate' and commit" >&2; exit 1; }

.PHONY: build
build: ## Build ./synguard.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o synguard ./cmd/synguard

# -p 1: one package at a time, so live network-namespace tests never race
# each other for the same names.
.PHONY: test
test: ## Run every test tier (privileged tiers skip with a reason when not root).
	$(GO) vet ./...
	$(GO) test $(GOTESTFLAGS) -p 1 ./...
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME)

.PHONY: fuzz
fuzz: ## Fuzz the XDP program against the Go reference classifier for FUZZTIME.
	@if [ "$$(id -u)" = 0 ]; then \
		$(GO) test -run '^$$' -fuzz '^FuzzClassify$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 300x ./bpf; \
	else echo "fuzz: skipped, needs root to load the XDP program"; fi

.PHONY: bench
bench: ## Run the benchmarks (BPF_PROG_RUN and detector).
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./bpf ./detector

.PHONY: demo
demo: ## Show synguard stopping a SYN flood on a throw-away netns test bed (root, ~15 s).
	$(GO) build -o build/synguard-demo ./internal/demo
	./build/synguard-demo

.PHONY: bench-resources
bench-resources: ## Daemon CPU during a 100k SYN/s random-source flood, RSS with 1M sources (root, ~4 min).
	GO=$(GO) bench/resources.sh

.PHONY: lint
lint: ## gofmt and clang-format checks (make test runs go vet).
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed" >&2; exit 1; }
	clang-format --dry-run --Werror bpf/*.c bpf/*.h 2>/dev/null || clang-format --dry-run --Werror bpf/*.c

.PHONY: clean
clean: ## Remove build output.
	rm -rf synguard build dist

# install, uninstall, deb, man and completions.
include packaging/packaging.mk
