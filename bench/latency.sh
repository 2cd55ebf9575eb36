#!/usr/bin/env bash
# End-to-end latency below the rate limit: signed Zoom joins posted at a
# steady, modest rate to the gateway (SQLite, default settings), each timed
# from its 200 to the HubSpot simulator's receipt of the create carrying it.
# Usage: bench/latency.sh [joins per second=3] [seconds=40] [webinars=3]   (writes bench/results/latency.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin attendance-relay --example latency_bench
mkdir -p bench/results
{
  echo "# bench/latency.sh $* $(date -u +%FT%TZ), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  "${CARGO_TARGET_DIR:-target}/release/examples/latency_bench" "$@"
} | tee bench/results/latency.txt
