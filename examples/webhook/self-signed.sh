#!/usr/bin/env bash
# self-signed.sh: the webhook's certificate without cert-manager.
#
#   kubectl apply -f examples/webhook/10-webhook.yaml
#   examples/webhook/self-signed.sh | kubectl apply -f -
#
# It makes a throw-away CA and a serving certificate for the webhook's
# Service (needs openssl), and prints two manifests: the Secret the webhook
# mounts, and the MutatingWebhookConfiguration from
# 30-mutatingwebhookconfiguration.yaml with the CA as its caBundle.
#
# To renew (after DAYS, default 365), run it again; the webhook picks up the
# new Secret by itself. Without CA_DIR the CA is thrown away and a new one
# made each time: the caBundle changes at once, the webhook's certificate a
# minute or two later (the kubelet's Secret refresh), and meanwhile the API
# server skips the webhook (failurePolicy: Ignore). With CA_DIR=/some/dir
# the CA is kept there (made on the first run, its key mode 0600) and
# reused, so that a renewal leaves the caBundle as it was.
#
# NAMESPACE, SERVICE and SECRET must match 10-webhook.yaml if you changed it.
set -euo pipefail

NAMESPACE=${NAMESPACE:-podtracer-system}
SERVICE=${SERVICE:-podtracer-webhook}
SECRET=${SECRET:-podtracer-webhook-tls}
DAYS=${DAYS:-365}
HERE=$(cd "$(dirname "$0")" && pwd)

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"

if [[ -n ${CA_DIR:-} && -f $CA_DIR/ca.key && -f $CA_DIR/ca.crt ]]; then
	cp "$CA_DIR/ca.key" "$CA_DIR/ca.crt" .
else
	# A kept CA outlives the certificates it signs: ten years.
	ca_days=$DAYS
	[[ -n ${CA_DIR:-} ]] && ca_days=3650
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout ca.key -out ca.crt -days "$ca_days" -subj "/CN=podtracer-webhook-ca" 2>/dev/null
	if [[ -n ${CA_DIR:-} ]]; then
		mkdir -p "$CA_DIR"
		(umask 077 && cp ca.key "$CA_DIR/ca.key")
		cp ca.crt "$CA_DIR/ca.crt"
	fi
fi
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
	-keyout tls.key -out tls.csr -subj "/CN=$SERVICE.$NAMESPACE.svc" 2>/dev/null
cat >ext.cnf <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:$SERVICE.$NAMESPACE.svc, DNS:$SERVICE.$NAMESPACE.svc.cluster.local
EXT
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
	-out tls.crt -days "$DAYS" -extfile ext.cnf 2>/dev/null

b64() { base64 <"$1" | tr -d '\n'; }

cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: $SECRET
  namespace: $NAMESPACE
  labels:
    app.kubernetes.io/part-of: podtracer
type: kubernetes.io/tls
data:
  tls.crt: $(b64 tls.crt)
  tls.key: $(b64 tls.key)
  ca.crt: $(b64 ca.crt)
---
YAML
# The configuration, without the cert-manager annotation, with caBundle
# under clientConfig, and pointing at SERVICE in NAMESPACE.
awk -v ca="$(b64 ca.crt)" -v ns="$NAMESPACE" -v svc="$SERVICE" '
	/^  annotations:$/ { skip = 1; next }
	skip && /^    / { next }
	{ skip = 0; gsub(/podtracer-system/, ns) }
	/^    service:$/ { inservice = 1 }
	inservice && /^      name:/ { sub(/name: .*/, "name: " svc) }
	inservice && /^  [a-z]/ { inservice = 0 }
	{ print }
	/^  clientConfig:$/ { print "    caBundle: " ca }
' "$HERE/30-mutatingwebhookconfiguration.yaml"
