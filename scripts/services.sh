#!/usr/bin/env bash
# Make PostgreSQL, Redis, Docker engines and a Kubernetes test cluster answer on this machine, and build the
# local test images.
# Idempotent: what already answers is left alone. Needs root for apt and dockerd.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
images=${CODEHUB_IMAGE_BUILDER:-$here/../shared/images/build-images.sh}
log() { printf '==> %s\n' "$*"; }
apt_updated=0
apt_install() {
  [ "$apt_updated" = 1 ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL on 127.0.0.1:5432, trust auth, database "test"
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test' >/dev/null
log "PostgreSQL: $(psql -h 127.0.0.1 -U postgres -d test -tAc 'SHOW server_version')"

# Redis on 127.0.0.1:6379
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.5; done
fi
log "Redis: $(redis-cli -h 127.0.0.1 ping)"

# Docker engine (Debian's docker.io); the client alone is not enough
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || apt_install docker.io
  log "starting dockerd"
  (nohup dockerd >/var/log/dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info --format 'Docker: {{.ServerVersion}}'

# Local images (no registry can be reached): the small test image always, code-server unless skipped
need_images=()
docker image inspect codehub/workspace:test >/dev/null 2>&1 || need_images+=(prereqs wsimage)
if [ "${CODEHUB_SKIP_CODE_SERVER_IMAGE:-0}" != 1 ] && ! docker image inspect codehub/code-server:local >/dev/null 2>&1; then
  need_images+=(prereqs node install csimage)
fi
if ! command -v chromium >/dev/null; then need_images+=(browser); fi
if [ ${#need_images[@]} -gt 0 ]; then
  log "building images: ${need_images[*]}"
  bash "$images" $(printf '%s\n' "${need_images[@]}" | awk '!seen[$0]++') cleanup
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^codehub/' || true
command -v git >/dev/null || apt_install git
command -v ip >/dev/null || apt_install iproute2  # the isolation tests build an "outside" network namespace
# Node.js and the packages of the test OpenID provider (tests/oidc_provider, run by the single sign-on tests);
# `npm ci` runs again only when package-lock.json changed since the last install
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
  || log "WARNING: node $(node --version) is older than 20.19, which oidc-provider needs"
provider_dir=$here/tests/oidc_provider
lock_sum=$(sha256sum "$provider_dir/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$provider_dir/node_modules/.codehub-lock-sha256" 2>/dev/null)" != "$lock_sum" ]; then
  log "installing the test OpenID provider's packages (npm ci)"
  (cd "$provider_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$provider_dir/node_modules/.codehub-lock-sha256"
fi
log "Node.js $(node --version), oidc-provider $(node -p "require('$provider_dir/node_modules/oidc-provider/package.json').version")"
# the bench's load generators and reference proxy (`just bench`; CI runs `just bench --quick`)
for tool in wrk hey nginx; do command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || apt_install "$tool"; done
# the dashboard's terminal (xterm.js) from the npm registry, pinned in web/package-lock.json
if [ ! -d "$here/web/node_modules/@xterm/xterm" ]; then
  command -v npm >/dev/null || apt_install npm
  log "installing the dashboard's browser assets (npm ci in web/)"
  (cd "$here/web" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
fi
# A second, independent Docker engine (tcp://127.0.0.2:2375) that cannot see this disk, standing in for a
# remote host: the storage tests run workspaces on both engines
if bash "$(dirname "$0")/second-docker-engine.sh" start codehub/workspace:test >/dev/null 2>&1; then
  log "second Docker engine: tcp://127.0.0.2:2375"
else
  log "second Docker engine did not start (the tests that need it skip; see /var/log/docker-b.log)"
fi
# A real single-node Kubernetes (v1.20.2, built once from Debian's source into /var/cache/codehub-k8s, ~6 min on
# 2 cores; ~15 s to start once built) with the local workspace images imported: the Kubernetes runtime's and
# the servers' tests run on it, and the deploy/kubernetes manifests are checked against it (server-side dry run)
k8s_images=()
for img in codehub/workspace:test codehub/code-server:local; do
  docker image inspect "$img" >/dev/null 2>&1 && k8s_images+=("$img")
done
mkdir -p /var/log/codehub-k8s
if kubeconfig=$(bash "$(dirname "$0")/kubernetes-node.sh" start "${k8s_images[@]}" 2>>/var/log/codehub-k8s/services.log | tail -1); then
  log "Kubernetes test cluster: $kubeconfig"
else
  log "the Kubernetes test cluster did not start (its tests skip or fail; see /var/log/codehub-k8s/services.log)"
fi
log "services ready"
