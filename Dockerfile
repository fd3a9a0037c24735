# syntax=docker/dockerfile:1
#
# podtracer in two static binaries and nothing else: /podtracer, the agent
# (the default, the sidecar, and its `podtracer wait` hook), and
# /podtracer-webhook, the admission webhook, run from the same image. The
# webhook is a binary of its own so that the agent, in every traced pod,
# does not carry the Kubernetes API's packages in its memory.
#
#   docker build -t podtracer .
#   docker buildx build --platform linux/amd64 -t REGISTRY/podtracer:TAG --push .
#
# linux/amd64 only for now: the committed eBPF objects are built for x86_64
# (bpf/gen.go); arm64 needs its syscall numbers and registers in capture.c.
#
# The image's user is non-root, which suits the webhook. The agent needs root
# and a few capabilities; the injected sidecar (and examples/sidecar) asks for
# them in its securityContext. To run the agent by hand beside processes on a
# host: docker run --rm --pid=host --user 0 --privileged podtracer

ARG GO_VERSION=1.26

# Build on the builder's own platform and cross-compile: no emulation. The
# eBPF objects are generated and committed, so no clang is needed here.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
# The version spans and metrics carry (their instrumentation scope's):
# docker build --build-arg VERSION=v1.2.0 . (the context has no .git for
# Go to stamp one from). grpcnotrace leaves grpc-go's request tracing
# (golang.org/x/net/trace) out of the agent: its html/template keeps every
# exported method in the executable, 3.5 MB of the agent's memory.
ARG VERSION=
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
	go build -trimpath -tags grpcnotrace -ldflags="-s -w -X github.com/podtracer/podtracer/exporter.version=${VERSION}" -o /out/podtracer . && \
	CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
	go build -trimpath -ldflags="-s -w" -o /out/podtracer-webhook ./cmd/podtracer-webhook

FROM scratch
# Root CAs, for OTLP over TLS to a collector with a public certificate.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/podtracer /podtracer
COPY --from=build /out/podtracer-webhook /podtracer-webhook
USER 65532:65532
ENTRYPOINT ["/podtracer"]
