#!/usr/bin/env bash
# The delivery check: the Helm chart (lint, render, schema validation, the
# assertions that matter, alert rules against the live gateway's /metrics,
# checkov) and the Dockerfile (hadolint). Needs the tools scripts/test.sh
# installs and the gateway built by cargo test (target/debug/attendance-relay,
# or RELAY_BIN). A missing tool fails the check; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

export HELM=${HELM:-$PWD/.tools/bin/helm}
export HADOLINT=${HADOLINT:-$PWD/.tools/venv/bin/hadolint}
export CHECKOV=${CHECKOV:-$PWD/.tools/venv/bin/checkov}
export PROMTOOL=${PROMTOOL:-$(command -v promtool || echo promtool)}
export NODE=${NODE:-$(command -v node || echo node)}
export RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/attendance-relay}
python=.tools/venv/bin/python

missing=0
for tool in "$HELM" "$HADOLINT" "$CHECKOV" "$PROMTOOL" "$NODE" "$python"; do
  if ! [ -x "$tool" ] && ! command -v "$tool" >/dev/null 2>&1; then
    echo "delivery check: missing tool $tool (scripts/test.sh installs it)" >&2
    missing=1
  fi
done
[ -d node_modules/@kubernetes-models/prometheus-operator ] || { echo "delivery check: run npm ci first" >&2; missing=1; }
[ "$missing" = 0 ] || exit 1

"$HELM" version --short
exec "$python" scripts/delivery/check_delivery.py
