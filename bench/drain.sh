#!/usr/bin/env bash
# Drain: stored records forwarded by the real gateway to the HubSpot
# simulator (20 ms per call) under the default rate limit, in three variants:
#   one     10,000 records of one webinar
#   many    20,000 records of 50 webinars, interleaved as concurrent joins arrive
#   faults  3,000 records of 6 webinars while HubSpot answers a third of the
#           calls 5xx, 5 % 429 and hangs 3 % past the gateway's timeout
#   replicas  the "many" backlog drained by three gateways sharing one
#           PostgreSQL (the local server; PGURL names another) and one limit
#   large   100,000 records of 100 webinars under a limit raised to 500
#           calls per 10 s on both sides (at the default limit it takes 17
#           minutes)
#   million 1,000,000 records of 1,000 webinars at the default limit
#           (about 35 minutes)
# Usage: bench/drain.sh [one|many|faults|replicas|large|million ...]   (default: all but large and million; writes bench/results/drain-<variant>.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin attendance-relay --example drain_bench
mkdir -p bench/results
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}
PGDB=relay_drain_$$
trap 'psql "$PGURL" -qc "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)" 2>/dev/null || true' EXIT
for variant in "${@:-one many faults replicas}"; do
  for v in $variant; do
    unset REPLICAS BENCH_DATABASE_URL
    case $v in
      one) args=(10000 100 20 1) ;;
      many) args=(20000 100 20 50) ;;
      faults) args=(3000 100 20 6 faults) ;;
      large) args=(100000 500 20 100) ;;
      million) args=(1000000 100 20 1000) ;;
      replicas)
        args=(20000 100 20 50)
        psql "$PGURL" -qc "CREATE DATABASE $PGDB"
        export REPLICAS=3 BENCH_DATABASE_URL="${PGURL%/*}/$PGDB" ;;
      *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
    {
      echo "# bench/drain.sh $v $(date -u +%FT%TZ), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
      "${CARGO_TARGET_DIR:-target}/release/examples/drain_bench" "${args[@]}"
    } | tee "bench/results/drain-$v.txt"
  done
done
