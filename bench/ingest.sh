#!/usr/bin/env bash
# Signed Zoom ingest vs a no-op JSON handler, one server core each, same run,
# at each connection count, on the embedded SQLite store and on PostgreSQL
# (the local server, on 127.0.0.1:5432; PGURL names another; its own
# processes are not pinned). Server pinned to CPU 0 with one worker; wrk
# pinned to CPU 1. Every relay run starts on a fresh store. RSS: the server
# process's peak (VmHWM) over its run.
# Usage: bench/ingest.sh [connections="64 256"] [seconds=10]   (writes bench/results/ingest.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-64 256}
SECS=${2:-10}
REQS=${REQS:-400000}
SECRET=bench-secret
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d)
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}
PGDB=relay_bench_$$
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; psql "$PGURL" -qc "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)" 2>/dev/null || true' EXIT

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin attendance-relay --example noop_server
python3 bench/zoom_requests.py "$SECRET" "$REQS" "$WORK/requests.tsv"
target=${CARGO_TARGET_DIR:-target}

wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }

# label, connections, port, server pid: one result line
run_wrk() {
  taskset -c 1 wrk -t1 -c"$2" -d"${SECS}s" --latency -s bench/zoom.lua "http://127.0.0.1:$3/webhooks/zoom" -- "$WORK/requests.tsv" \
    > "$WORK/$1-$2.txt"
  local rps p50 p99 non2xx rss
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$1-$2.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$WORK/$1-$2.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$WORK/$1-$2.txt")
  non2xx=$(awk '/Non-2xx/ {print $4}' "$WORK/$1-$2.txt")
  rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$4/status")
  printf '%-15s %5s %10s %8s %8s %7s %8s\n' "$1" "$2" "$rps" "$p50" "$p99" "${non2xx:-0}" "$rss"
}

run_noop() { # connections
  NOOP_ADDR=127.0.0.1:18181 taskset -c 0 "$target/release/examples/noop_server" &
  local pid=$!
  wait_up http://127.0.0.1:18181/
  run_wrk noop "$1" 18181 $pid
  kill $pid; wait $pid 2>/dev/null || true
}

run_relay() { # label, connections, database url
  RELAY_LISTEN_ADDR=127.0.0.1:18180 RELAY_ADMIN_ADDR=127.0.0.1:19190 RELAY_WORKERS=1 RUST_LOG=warn \
    RELAY_DATABASE_URL="$3" ZOOM_WEBHOOK_SECRET_TOKEN=$SECRET \
    taskset -c 0 "$target/release/attendance-relay" &
  local pid=$!
  wait_up http://127.0.0.1:18180/healthz
  run_wrk "$1" "$2" 18180 $pid
  echo "records stored by $1 at $2 connections: $(curl -s http://127.0.0.1:19190/metrics | awk '/^relay_queue_records\{status="pending"\}/ {print $2}')" >> "$WORK/stored.txt"
  kill $pid; wait $pid 2>/dev/null || true
}

: > "$WORK/results.txt"
for c in $CONNS; do
  run_noop "$c" >> "$WORK/results.txt"
  rm -f "$WORK"/relay.db*
  run_relay relay "$c" "sqlite://$WORK/relay.db" >> "$WORK/results.txt"
  psql "$PGURL" -qc "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)"
  psql "$PGURL" -qc "CREATE DATABASE $PGDB"
  run_relay relay-postgres "$c" "${PGURL%/*}/$PGDB" >> "$WORK/results.txt"
done

mkdir -p bench/results
{
  echo "# bench/ingest.sh $(date -u +%FT%TZ), connections $CONNS, ${SECS}s each, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
  printf '%-15s %5s %10s %8s %8s %7s %8s\n' "# server" conns "req/s" p50 p99 non-2xx "RSS MiB"
  cat "$WORK/results.txt"
  awk '$1 == "noop" {noop[$2] = $3} $1 != "noop" {printf "ratio %s/noop at %s connections: %.2f\n", $1, $2, $3 / noop[$2]}' "$WORK/results.txt"
  cat "$WORK/stored.txt"
} | tee bench/results/ingest.txt
