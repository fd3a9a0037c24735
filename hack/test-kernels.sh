#!/usr/bin/env bash
# test-kernels.sh fetches the other kernels the capture is tested on
# (test/kernels boots each under qemu):
#
#   - Debian's current 6.1 cloud kernel, which has no socket tracepoints
#     (Linux 6.3+), so the agent runs on the syscall hooks there, and
#     whose struct pid predates 6.5;
#   - Debian 12's current 6.12 cloud kernel (the series bookworm updates
#     to): the socket hooks, the fast path and the kernel's spans, checked
#     by another verifier than the host's.
#
# It caches their images outside the repository and prints the folder
# that holds them:
#
#   export PODTRACER_TEST_KERNELS="$(hack/test-kernels.sh | tail -1)"
#
# It needs apt (the package is downloaded, not installed) and dpkg-deb.
# The tests also find the folder without the variable, at
# ${PODTRACER_CACHE:-$HOME/.cache/podtracer}/kernels.
set -euo pipefail

CACHE=${PODTRACER_CACHE:-$HOME/.cache/podtracer}
DIR=$CACHE/kernels
mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# fetch puts the image of the newest package apt knows whose name matches
# $1 in $DIR (each series is pinned: a newer Debian's default kernel
# would change what is tested).
fetch() {
	local pkg version
	pkg=$(apt-cache search --names-only "$1" 2>/dev/null | awk '{print $1}' | sort -V | tail -1)
	if [ -z "$pkg" ]; then
		echo "test-kernels: apt knows no package matching $1 (run apt-get update; Debian 12's archive has them)" >&2
		exit 1
	fi
	version=${pkg#linux-image-}
	if [ ! -f "$DIR/vmlinuz-$version" ]; then
		echo "test-kernels: fetching $pkg" >&2
		rm -rf "${tmp:?}"/*
		(cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1 && dpkg-deb -x ./*.deb x)
		cp "$tmp/x/boot/vmlinuz-$version" "$DIR/vmlinuz-$version.part"
		mv "$DIR/vmlinuz-$version.part" "$DIR/vmlinuz-$version"
	fi
}

fetch '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$'
fetch '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$'
echo "$DIR"
