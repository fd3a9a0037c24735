# podtracer: the two commands are `make demo` and `make test` (both as root).
GO ?= go

.PHONY: all build demo test test-unit generate check-generate fuzz bench lint

all: build

# The version spans and metrics carry (their instrumentation scope's).
# make build VERSION=v1.2.0 sets another.
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null)

# The agent and the webhook, built as in the image (Dockerfile): static (a
# dynamically linked agent maps libc, 1.5 MB more of its memory), and the
# agent without grpc-go's request tracing (golang.org/x/net/trace), whose
# html/template keeps every exported method of every linked type in the
# executable: 5 MB of file, 3.5 MB of the agent's resident memory.
AGENT_TAGS := grpcnotrace
build:
	CGO_ENABLED=0 $(GO) build -tags $(AGENT_TAGS) -ldflags "-X github.com/podtracer/podtracer/exporter.version=$(VERSION)" -o podtracer .
	CGO_ENABLED=0 $(GO) build -o podtracer-webhook ./cmd/podtracer-webhook

# A sample app and curl in a pod-like PID and network namespace, the agent printing spans.
demo:
	examples/demo/run.sh

# Every test: unit, fuzz seeds, the bench harness's own, and (as root) the
# eBPF end-to-end and webhook tests. CI runs this with CI=true, where a
# skipped test fails. Every Go benchmark runs once too, so that one broken
# by a change fails here rather than when someone measures with it.
test: lint
	$(GO) test -count=1 -timeout 30m ./...
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./...
	cd bench && $(GO) vet ./... && $(GO) test -count=1 ./...

test-unit:
	$(GO) test -short ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Rebuild the BPF objects (needs clang and llvm).
generate:
	$(GO) generate ./bpf/...

# The committed BPF objects match their sources.
check-generate: generate
	git diff --exit-code -- bpf/

# One minute per fuzz target.
fuzz:
	@for target in $$($(GO) test ./tracer -list 'Fuzz.*' | grep ^Fuzz); do \
		$(GO) test ./tracer -run '^$$' -fuzz "^$$target$$" -fuzztime 60s -fuzzminimizetime 100x || exit 1; done
	$(GO) test ./webhook -run '^$$' -fuzz FuzzMutateEndpoint -fuzztime 60s

# Overhead of the agent against bare servers and in-process otelhttp (root;
# about ten minutes). Results in bench/out/, explained in BENCHMARKS.md.
bench:
	cd bench && $(GO) run . -rounds 5
