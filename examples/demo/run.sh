#!/usr/bin/env bash
# The podtracer demo: a sample Go web app and a curl client in a "pod" (a new
# PID and network namespace, as Kubernetes makes one), with the podtracer agent beside
# them printing one line per span on stdout. Needs root (eBPF).
#   make demo              # about 15 seconds
#   DEMO_SECONDS=60 make demo
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root (the agent loads eBPF programs): sudo make demo" >&2
	exit 1
fi
for tool in unshare nsenter curl ip; do
	command -v "$tool" >/dev/null || { echo "demo: $tool is not installed" >&2; exit 1; }
done

bin=$(mktemp -d)
pod_init=""
unshare_pid=""
cleanup() {
	[ -n "$pod_init" ] && kill -KILL "$pod_init" 2>/dev/null || true
	[ -n "$unshare_pid" ] && kill -KILL "$unshare_pid" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$bin"
}
trap cleanup EXIT INT TERM

echo "demo: building podtracer and the sample app"
CGO_ENABLED=0 go build -tags grpcnotrace -o "$bin/podtracer" . # as the image's (Dockerfile)
go build -o "$bin/shop" ./test/fixtures/httpapp

# The pod: a PID and a network namespace (its own loopback: no clash with
# the host's ports) held open by a sleeping init process.
unshare --pid --net --fork --mount-proc sh -c 'ip link set lo up && exec sleep infinity' 2> "$bin/pod.log" &
unshare_pid=$!
for _ in $(seq 50); do
	pod_init=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null | awk '{print $1}') || true
	[ -n "$pod_init" ] && [ "$(readlink "/proc/$pod_init/exe" 2>/dev/null)" != "$(readlink -f "$(command -v sh)")" ] && break
	sleep 0.1
done
if [ -z "$pod_init" ] || ! kill -0 "$pod_init" 2>/dev/null; then
	echo "demo: the pod did not start:" >&2
	cat "$bin/pod.log" >&2
	exit 1
fi
in_pod() { nsenter --target "$pod_init" --pid --mount --net -- "$@"; }

port=18080
in_pod "$bin/shop" -server "127.0.0.1:$port" 2> "$bin/shop.log" &
for _ in $(seq 50); do
	in_pod curl -s -o /dev/null "http://127.0.0.1:$port/" && break
	sleep 0.1
done
in_pod curl -s -o /dev/null "http://127.0.0.1:$port/" || { echo "demo: the shop app did not start:" >&2; cat "$bin/shop.log" >&2; exit 1; }
echo "demo: the agent prints a line per span (SERVER: the shop app, CLIENT: curl)"
in_pod env OTEL_SERVICE_NAME= PODTRACER_TRACE_PRINTER=text POD_NAME=shop-demo POD_NAMESPACE=demo \
	"$bin/podtracer" 2> "$bin/agent.log" &
agent=$!
for _ in $(seq 100); do
	grep -q "podtracer agent running" "$bin/agent.log" 2>/dev/null && break
	sleep 0.1
done

end=$((SECONDS + ${DEMO_SECONDS:-10}))
i=0
while [ $SECONDS -lt $end ]; do
	i=$((i + 1))
	in_pod curl -s -o /dev/null "http://127.0.0.1:$port/users/$i" || true
	in_pod curl -s -o /dev/null -X POST --data "item=$i" "http://127.0.0.1:$port/orders" || true
	[ $((i % 3)) -eq 0 ] && in_pod curl -s -o /dev/null "http://127.0.0.1:$port/fail" || true
	sleep 1
done
# SIGTERM to the agent itself (nsenter, which started it, does not pass
# signals on): it flushes what it holds and logs its final stats.
pkill -TERM -x -f "$bin/podtracer" 2>/dev/null || true
wait "$agent" 2>/dev/null || true
echo "demo: agent log:"
grep -E "attached|neighbour found|final stats" "$bin/agent.log" || cat "$bin/agent.log"
