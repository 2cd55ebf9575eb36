#!/usr/bin/env bash
# Drain: 10,000 stored records of one webinar forwarded by the real gateway to
# the HubSpot simulator (20 ms per call) under the default rate limit.
# Usage: bench/drain.sh [records] [limit per 10 s] [latency ms]   (writes bench/results/drain.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example drain_bench
mkdir -p bench/results
{
  echo "# bench/drain.sh $(date -u +%FT%TZ), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  target/release/examples/drain_bench "$@"
} | tee bench/results/drain.txt
