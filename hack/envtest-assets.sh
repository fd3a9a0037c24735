#!/usr/bin/env bash
# envtest-assets.sh builds what the webhook's end-to-end tests start with
# sigs.k8s.io/controller-runtime/pkg/envtest: kube-apiserver and etcd, built
# from Go modules, and cert-manager's CRDs (to validate examples/webhook).
# It caches them outside the repository and prints the folder that
# KUBEBUILDER_ASSETS must name:
#
#   export KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)"
#
# Cold: about 7.5 minutes on 2 cores (kube-apiserver ~6, etcd ~1.5). Warm:
# instant. The tests also find the folder without the variable, through the
# link ${PODTRACER_CACHE:-$HOME/.cache/podtracer}/envtest/current.
#
# Only the Go module proxy is needed: no release archives are downloaded.
# K8S_VERSION, ETCD_VERSION and CERT_MANAGER_VERSION override the versions.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.1}
ETCD_VERSION=${ETCD_VERSION:-v3.5.35}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.21.2}
CACHE=${PODTRACER_CACHE:-$HOME/.cache/podtracer}
ROOT=$CACHE/envtest
DIR=$ROOT/kube-$K8S_VERSION-etcd-$ETCD_VERSION-cert-manager-$CERT_MANAGER_VERSION

log() { echo "envtest-assets: $*" >&2; }

mkdir -p "$DIR"
# One build at a time: a second caller waits, then finds the cache filled.
exec 9>"$ROOT/.lock"
if command -v flock >/dev/null; then flock 9; fi

# Build in the cache's file system, so that publishing is an atomic rename:
# an interrupted build never leaves a file that looks complete.
WORK=$(mktemp -d "$ROOT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export GOWORK=off GOFLAGS=-mod=mod

# A cached binary is a regular executable file; anything else (an
# interrupted or broken earlier build) is built again.
built() { [[ -f $1 && -x $1 ]]; }

if ! built "$DIR/kube-apiserver"; then
	# A scratch module that requires k8s.io/kubernetes and maps each staging
	# module (replaced by ./staging/... in its go.mod) to the published v0.x
	# version of the same release.
	start=$SECONDS
	log "building kube-apiserver $K8S_VERSION (about 6 minutes cold)"
	mkdir -p "$WORK/kube" && cd "$WORK/kube"
	kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	staging=v0.${K8S_VERSION#v1.}
	minor=$(echo "$K8S_VERSION" | cut -d. -f2)
	{
		echo "module scratch/kube"
		echo
		echo "go $(awk '/^go /{print $2}' "$kmod")"
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		echo "replace ("
		for m in $(grep -E '^\s*k8s.io/.* => ./staging' "$kmod" | awk '{print $1}'); do
			echo "	$m => $m $staging"
		done
		echo ")"
	} >go.mod
	printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' >tools.go
	go mod tidy >&2
	ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
	ld="$ld -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
	go build -trimpath -ldflags="$ld" -o "$WORK/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
	mv "$WORK/kube-apiserver" "$DIR/kube-apiserver"
	log "kube-apiserver built in $((SECONDS - start))s"
fi

if ! built "$DIR/etcd"; then
	start=$SECONDS
	log "building etcd $ETCD_VERSION (about 1.5 minutes cold)"
	rm -rf "$DIR/etcd"
	# The scratch module's folder must not be the output path: go build -o
	# into an existing folder writes the binary inside it.
	mkdir -p "$WORK/etcd-module" && cd "$WORK/etcd-module"
	printf 'module scratch/etcd\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >go.mod
	printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >tools.go
	go mod tidy >&2
	go build -trimpath -ldflags="-s -w" -o "$WORK/etcd" go.etcd.io/etcd/server/v3
	mv "$WORK/etcd" "$DIR/etcd"
	log "etcd built in $((SECONDS - start))s"
fi

if [[ ! -d $DIR/crds ]]; then
	# cert-manager publishes plain CRDs (deploy/crds) in its Go module; the
	# tests need Certificate and Issuer to validate examples/webhook.
	log "fetching cert-manager $CERT_MANAGER_VERSION CRDs"
	src=$(cd "$WORK" && go mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
	mkdir -p "$WORK/crds"
	cp "$src/deploy/crds/cert-manager.io_certificates.yaml" "$src/deploy/crds/cert-manager.io_issuers.yaml" "$WORK/crds/"
	chmod u+w "$WORK/crds"/*
	mv "$WORK/crds" "$DIR/crds"
fi

ln -sfn "$(basename "$DIR")" "$ROOT/current"
echo "$DIR"
