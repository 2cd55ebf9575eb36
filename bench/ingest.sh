#!/usr/bin/env bash
# Signed Zoom ingest vs a no-op JSON handler, one server core each, same run,
# on the embedded SQLite store and on PostgreSQL (the local server, on
# 127.0.0.1:5432; PGURL names another; its own processes are not pinned).
# Server pinned to CPU 0 with one worker; wrk pinned to CPU 1.
# Usage: bench/ingest.sh [connections] [seconds]   (writes bench/results/ingest.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-64}
SECS=${2:-15}
REQS=${REQS:-400000}
SECRET=bench-secret
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin attendance-relay --example noop_server
python3 bench/zoom_requests.py "$SECRET" "$REQS" "$WORK/requests.tsv"

run_wrk() { # label, port
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s bench/zoom.lua "http://127.0.0.1:$2/webhooks/zoom" -- "$WORK/requests.tsv" \
    > "$WORK/$1.txt"
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$1.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$WORK/$1.txt")
  local non2xx
  non2xx=$(awk '/Non-2xx/ {print $4}' "$WORK/$1.txt")
  echo "$1 $rps $p99 ${non2xx:-0}"
}

wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }

NOOP_ADDR=127.0.0.1:18181 taskset -c 0 target/release/examples/noop_server &
wait_up http://127.0.0.1:18181/
noop=$(run_wrk noop 18181)
kill %1; wait %1 2>/dev/null || true

PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}
PGDB=relay_bench_$$
psql "$PGURL" -qc "CREATE DATABASE $PGDB"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; psql "$PGURL" -qc "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)"' EXIT

run_relay() { # label, database url
  RELAY_LISTEN_ADDR=127.0.0.1:18180 RELAY_ADMIN_ADDR=127.0.0.1:19190 RELAY_WORKERS=1 RUST_LOG=warn \
    RELAY_DATABASE_URL="$2" ZOOM_WEBHOOK_SECRET_TOKEN=$SECRET \
    taskset -c 0 target/release/attendance-relay &
  local pid=$!
  wait_up http://127.0.0.1:18180/healthz
  run_wrk "$1" 18180
  echo "records stored by $1: $(curl -s http://127.0.0.1:19190/metrics | awk '/^relay_queue_records\{status="pending"\}/ {print $2}')" >> "$WORK/stored.txt"
  kill $pid; wait $pid 2>/dev/null || true
}
relay=$(run_relay relay "sqlite://$WORK/relay.db")
relay_pg=$(run_relay relay-postgres "${PGURL%/*}/$PGDB")

mkdir -p bench/results
{
  echo "# bench/ingest.sh $(date -u +%FT%TZ), $CONNS connections, ${SECS}s each, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "# server   req/s   p99   non-2xx"
  echo "$noop"
  echo "$relay"
  echo "$relay_pg"
  for r in "$relay" "$relay_pg"; do
    awk -v l="$(echo "$r" | cut -d' ' -f1)" -v a="$(echo "$r" | cut -d' ' -f2)" -v b="$(echo "$noop" | cut -d' ' -f2)" 'BEGIN {printf "ratio %s/noop: %.2f\n", l, a / b}'
  done
  cat "$WORK/stored.txt"
} | tee bench/results/ingest.txt
