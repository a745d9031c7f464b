#!/usr/bin/env bash
# Portkey's gateway for `make bench`, into bench/.portkey (not committed): npm `@portkey-ai/gateway` 1.15.2 with
# `@hono/node-server` held at 1.14.1 by an npm override, the version its stream reaches the client with (see
# Portkey's gateway issue 1389). Node and npm come from Debian when they are missing and this is root with
# apt-get. The Makefile runs this best-effort: a failure leaves a "not installed" row, never a failed bench.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-portkey: no npm and cannot apt-get here; the portkey row will say not installed" >&2
    exit 1
  fi
  echo "install-portkey: installing nodejs and npm" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

mkdir -p .portkey
cat > .portkey/package.json <<'JSON'
{
  "private": true,
  "description": "Portkey's gateway as a benchmark target (bench/install-portkey.sh writes this file)",
  "dependencies": {
    "@portkey-ai/gateway": "1.15.2",
    "@hono/node-server": "1.14.1"
  },
  "overrides": {
    "@hono/node-server": "1.14.1"
  }
}
JSON
# --ignore-scripts: the gateway's only install script is `patch-package`, and its package ships no patches.
(cd .portkey && npm install --no-audit --no-fund --ignore-scripts --loglevel=error)
# The Makefile's stamp: there, and newer than this script.
server=.portkey/node_modules/@portkey-ai/gateway/build/start-server.js
test -f "$server" && touch "$server"
