#!/usr/bin/env bash
# System packages the suite and the benchmarks use: nginx (the SSE reverse-proxy baseline and the
# behind-nginx tests) and PostgreSQL (the ledger's fleet backend). Installs only what is missing, and only
# where it can (root with apt-get); elsewhere the tests that need them skip with a reason.
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # headless, for the live page's test

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: missing ${need[*]} and cannot apt-get here; the tests that need them will skip" >&2
  exit 0
fi
echo "install-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the services it installs; the suite and benchmarks run their own instances.
(systemctl stop nginx postgresql 2>/dev/null || service nginx stop 2>/dev/null || true) >/dev/null 2>&1
