#!/usr/bin/env bash
# Where the SQLite relay's ingest time goes, under the load of bench/ingest.sh
# (server pinned to CPU 0 with one worker, wrk on CPU 1): CPU per thread
# (perf stat), the hottest symbols per thread (perf record), bytes written
# per webhook (/proc/<pid>/io), and the slowest fsync/pwrite calls
# (perf trace; it slows the server, so it runs in a second, separate pass).
# Needs perf (apt-get install linux-perf) and root.
# Usage: bench/profile-ingest.sh [connections=64] [seconds=12]   (writes bench/results/ingest-profile.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-64}
SECS=${2:-12}
SECRET=bench-secret
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release --quiet --bin attendance-relay
python3 bench/zoom_requests.py "$SECRET" 400000 "$WORK/requests.tsv"
binary=${CARGO_TARGET_DIR:-target}/release/attendance-relay

start_relay() {
  rm -f "$WORK"/relay.db*
  RELAY_LISTEN_ADDR=127.0.0.1:18180 RELAY_ADMIN_ADDR=127.0.0.1:19190 RELAY_WORKERS=1 RUST_LOG=warn \
    RELAY_DATABASE_URL="sqlite://$WORK/relay.db" ZOOM_WEBHOOK_SECRET_TOKEN=$SECRET \
    taskset -c 0 "$binary" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18180/healthz && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
load() { # seconds → wrk output file
  taskset -c 1 wrk -t1 -c"$CONNS" -d"$1s" --latency -s bench/zoom.lua \
    http://127.0.0.1:18180/webhooks/zoom -- "$WORK/requests.tsv" > "$WORK/wrk.txt"
}
io() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/io"; }

mkdir -p bench/results
{
  echo "# bench/profile-ingest.sh $(date -u +%FT%TZ), $CONNS connections, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"

  start_relay
  load "$SECS" & wrk_job=$!
  sleep 2
  w0=$(io wchar); d0=$(io write_bytes)
  perf stat -e task-clock -p "$PID" --per-thread -o "$WORK/stat.txt" -- sleep 4
  perf record -q -F 999 -g -p "$PID" -o "$WORK/perf.data" -- sleep 4 2>/dev/null
  w1=$(io wchar); d1=$(io write_bytes)
  wait $wrk_job
  served=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
  secs=$(awk '/requests in/ {sub("s,", "", $4); print $4}' "$WORK/wrk.txt")
  echo "## load: $(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt") req/s, p50 $(awk '$1 == "50%" {print $2}' "$WORK/wrk.txt"), p99 $(awk '$1 == "99%" {print $2}' "$WORK/wrk.txt")"
  # The byte counters cover the 8 s of profiling, about 8/secs of the requests.
  awk -v w=$((w1 - w0)) -v d=$((d1 - d0)) -v n="$served" -v s="$secs" \
    'BEGIN {r = n * 8 / s; printf "## written per webhook: %.0f bytes written (wchar), %.0f bytes to disk (write_bytes)\n", w / r, d / r}'
  echo "## CPU per thread over 4 s (task-clock ms; 4000 = one core)"
  awk '$3 == "msec" && $2 ~ /^[0-9.,]+$/ {printf "%-28s %10s ms\n", $1, $2}' "$WORK/stat.txt"
  echo "## time by thread and object (perf record, 4 s)"
  # head ends the reports early: their broken pipe is expected.
  perf report -i "$WORK/perf.data" --no-children --sort comm,dso -q -g none 2>/dev/null | head -12 || true
  for thread in sqlite-writer sqlite-checkpoi 'actix-rt|system'; do
    echo "## hottest symbols of $thread"
    perf report -i "$WORK/perf.data" --no-children --comm "$thread" --sort sym -q -g none 2>/dev/null | head -12 || true
  done
  kill $PID; wait $PID 2>/dev/null || true

  start_relay
  load 10 & wrk_job=$!
  sleep 2
  timeout 6 perf trace -e fsync,pwrite64 --duration 3 -p "$PID" -o "$WORK/trace.txt" 2>/dev/null || true
  wait $wrk_job
  echo "## calls over 3 ms in 6 s under perf trace (which slows the server to $(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt") req/s): thread, call, count, median, max ms"
  sed -E -n 's/.*\( *([0-9.]+) ms\): ([a-z-]+)\/[0-9]+ ([a-z0-9]+)\(.*/\2 \3 \1/p' "$WORK/trace.txt" |
    sort -k1,2 -k3n | awk '{k = $1 " " $2; v[k] = v[k] " " $3; n[k]++}
      END {for (k in n) {split(substr(v[k], 2), a, " "); printf "%-18s %5d %8s %8s\n", k, n[k], a[int((n[k] + 1) / 2)], a[n[k]]}}'
  kill $PID; wait $PID 2>/dev/null || true
} | tee bench/results/ingest-profile.txt
