#!/usr/bin/env bash
# envtest-assets.sh builds the binaries that sigs.k8s.io/controller-runtime's
# envtest starts (kube-apiserver and etcd) from Go modules, caches them outside
# the repository, and prints the folder that KUBEBUILDER_ASSETS must name.
#
#   export KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)"
#
# Cold: about 6 minutes on 2 cores (kube-apiserver ~5, etcd ~1). Warm: instant.
# The webhook's end-to-end tests also find the folder without the variable, at
# ${PODTRACER_CACHE:-$HOME/.cache/podtracer}/envtest/current.
#
# Only the Go module proxy is needed; no pre-built release archives are fetched.
# Override the versions with K8S_VERSION and ETCD_VERSION.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.1}
ETCD_VERSION=${ETCD_VERSION:-v3.5.35}
CACHE=${PODTRACER_CACHE:-$HOME/.cache/podtracer}
ROOT=$CACHE/envtest
DIR=$ROOT/kube-$K8S_VERSION-etcd-$ETCD_VERSION

log() { echo "envtest-assets: $*" >&2; }

complete() { [[ -x $1/kube-apiserver && -x $1/etcd ]]; }

mkdir -p "$ROOT"
# One build at a time: a second caller waits for the first and then finds
# the cache filled.
exec 9>"$ROOT/.lock"
if command -v flock >/dev/null; then flock 9; fi

if ! complete "$DIR"; then
	export GOWORK=off GOFLAGS=-mod=mod
	WORK=$(mktemp -d)
	trap 'rm -rf "$WORK"' EXIT
	OUT=$WORK/out
	mkdir -p "$OUT"

	# kube-apiserver: a scratch module that requires k8s.io/kubernetes and maps
	# each staging module (replaced by ./staging/... in its go.mod) to the
	# published v0.x version of the same release.
	start=$SECONDS
	log "building kube-apiserver $K8S_VERSION (about 5 minutes cold)"
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
	go build -trimpath -ldflags="$ld" -o "$OUT/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
	log "kube-apiserver built in $((SECONDS - start))s"

	start=$SECONDS
	log "building etcd $ETCD_VERSION (about 1 minute cold)"
	mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
	printf 'module scratch/etcd\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >go.mod
	printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >tools.go
	go mod tidy >&2
	go build -trimpath -ldflags="-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
	log "etcd built in $((SECONDS - start))s"

	# Publish atomically: a half-built folder is never seen as complete.
	rm -rf "$DIR"
	mv "$OUT" "$DIR"
fi

ln -sfn "$(basename "$DIR")" "$ROOT/current"
echo "$DIR"
