#!/usr/bin/env bash
# test-kernels.sh fetches the other kernels the capture is tested on
# (test/kernels boots each under qemu): Debian's current 6.1 cloud kernel,
# which has no socket tracepoints (Linux 6.3+), so the agent runs on the
# syscall hooks there, and whose struct pid predates 6.5. It caches their
# images outside the repository and prints the folder that holds them:
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

# The newest 6.1 cloud image apt knows (the series is pinned: a newer
# Debian's default kernel would have the socket tracepoints).
pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' 2>/dev/null | awk '{print $1}' | sort -V | tail -1)
if [ -z "$pkg" ]; then
	echo "test-kernels: apt knows no linux-image-6.1.0-*-cloud-amd64 (run apt-get update; Debian 12's archive has them)" >&2
	exit 1
fi
version=${pkg#linux-image-}
if [ ! -f "$DIR/vmlinuz-$version" ]; then
	echo "test-kernels: fetching $pkg" >&2
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1 && dpkg-deb -x ./*.deb x)
	cp "$tmp/x/boot/vmlinuz-$version" "$DIR/vmlinuz-$version.part"
	mv "$DIR/vmlinuz-$version.part" "$DIR/vmlinuz-$version"
fi
echo "$DIR"
