#!/usr/bin/env bash
# Two builds of replay-ingest side by side: the request path's cost of a change.
#
#   bench/ab.sh --a OLD_BINARY --b NEW_BINARY [--sizes "1k 8k mix@12000"] [--rounds 3] [--seconds 10]
#
# Per round and load, A then B, each a fresh node with its defaults (a fresh data directory,
# TOKEN_SECRET) for --seconds. A size (1k, 8k, 64k) is `replay-bench fixed`: a valid player
# batch of that size, closed loop, 64 connections. `mix@RATE` is the tracker mix (starts, then
# batches of the tracker's sizes, gzip above 20,000 bytes) in open loop at RATE requests a
# second over 64 connections: its latencies are the tail a steady load sees. Reports req/s, the
# CPU time of the request path (the worker-N and prepare-N threads) per request, from
# /proc/<pid>/task/*/stat before and after the load, and p50/p99/p99.9; and the compactor's CPU
# time during the load per MB it compacted by its end (from /metrics); then the medians and B
# against A. Bounded: every load stops after its time; each node is stopped by its pid.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
A=""
B=""
SIZES="1k 8k"
ROUNDS=3
SECS=10
PORT=18086
ADMIN_PORT=18085
SECRET=bench-secret

while [ $# -gt 0 ]; do
  case "$1" in
    --a) A=$2; shift ;;
    --b) B=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --seconds) SECS=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$A" ] && [ -x "$B" ] || { echo "--a and --b must name replay-ingest binaries" >&2; exit 2; }

log() { printf '[ab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
TMP=$(mktemp -d /tmp/replay-ab.XXXXXX)
PIDS=()
source "$HERE/lib.sh"
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid" 60; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$HERE" && cargo build --release --locked -q)
BENCH=$HERE/target/release/replay-bench
kv() { local v; v=$(tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1); echo "${v:-0}"; }
# The request path's CPU time: the worker-N threads and the prepare-N threads they hand heavy
# requests to (builds before the preparation pool have none).
request_path_us() {
  local line; line=$("$BENCH" threads --pid "$1")
  echo $(( $(echo "$line" | kv worker_us) + $(echo "$line" | kv prepare_us) ))
}
compactor_us() { "$BENCH" threads --pid "$1" | kv compactor_us; }
compacted_bytes() {
  curl -s -m 2 "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk '/^replay_ingest_compactor_raw_bytes_total / {print $2; found=1} END {if (!found) print 0}'
}
TOKEN=$(python3 "$(cd "$ROOT/.." && pwd)/shared/peers/mktoken.py" "$SECRET" 4242)

printf 'round\tsize\tbuild\treq_s\tworker_us_per_req\tp50_us\tp99_us\tp999_us\tcompactor_ms_per_mb\n' > "$TMP/runs.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for size in $SIZES; do
    for build in a b; do
      bin=$A; [ "$build" = b ] && bin=$B
      DATA=$TMP/data
      # Builds with an admin listener get a port of their own for it (default: 127.0.0.1:8888).
      extra=()
      "$bin" serve --help | grep -q -- --admin-listen && extra=(--admin-listen 127.0.0.1:$ADMIN_PORT)
      TOKEN_SECRET=$SECRET "$bin" serve --listen 127.0.0.1:$PORT "${extra[@]}" \
        --data-dir "$DATA" > /dev/null 2> "$TMP/node.log" &
      NPID=$!; PIDS+=("$NPID")
      for _ in $(seq 1 100); do curl -s -m 1 "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
      log "round $round, $size, $build"
      w0=$(request_path_us "$NPID"); k0=$(compactor_us "$NPID")
      case "$size" in
        mix@*)
          STAT=$("$BENCH" mix --url "http://127.0.0.1:$PORT" -c 64 -t 1 -d "${SECS}s" \
                 --rate "${size#mix@}" --project-key "$(cat "$DATA/demo-project-key")" \
                 2>/dev/null | grep '^BENCHSTAT') ;;
        *)
          STAT=$("$BENCH" fixed --url "http://127.0.0.1:$PORT" -c 64 -d "${SECS}s" --size "$size" \
                 --token "$TOKEN" 2>/dev/null | grep '^BENCHSTAT') ;;
      esac
      w1=$(request_path_us "$NPID"); k1=$(compactor_us "$NPID"); kb=$(compacted_bytes)
      stop_pid "$NPID" 60; rm -rf "$DATA"
      python3 - "$round" "$size" "$build" "$STAT" "$w0" "$w1" "$k0" "$k1" "$kb" \
        >> "$TMP/runs.tsv" <<'EOF'
import sys
round_, size, build, stat, w0, w1, k0, k1, kb = sys.argv[1:]
mb = float(kb) / 1e6
s = dict(x.split("=", 1) for x in stat.split()[1:])
ok = int(s["ok"])
print("\t".join([round_, size, build, str(round(ok / (int(s["duration_us"]) / 1e6))),
                 str(round((int(w1) - int(w0)) / max(ok, 1), 2)),
                 s["p50_us"], s["p99_us"], s["p999_us"],
                 str(round((int(k1) - int(k0)) / 1e3 / mb, 3)) if mb else "0"]))
EOF
    done
  done
done

python3 - "$TMP/runs.tsv" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
print("| round | load | build | req/s | request path µs per request | p50 µs | p99 µs | p99.9 µs "
      "| compactor ms per MB |")
print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
print("| load | A req/s | B req/s | B/A | A µs/req | B µs/req | B/A | A p99 µs | B p99 µs | B/A "
      "| A compactor ms/MB | B compactor ms/MB | B/A |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for size in dict.fromkeys(r[1] for r in rows):
    med = lambda build, i: statistics.median(float(r[i]) for r in rows if r[1] == size and r[2] == build)
    ra, rb, ca, cb = med("a", 3), med("b", 3), med("a", 4), med("b", 4)
    pa, pb = med("a", 6), med("b", 6)
    ka, kb = med("a", 8), med("b", 8)
    kr = f"{kb / ka:.2f}" if ka else "-"
    print(f"| {size} | {ra:.0f} | {rb:.0f} | {rb / ra:.2f} | {ca:.2f} | {cb:.2f} | {cb / ca:.2f} "
          f"| {pa:.0f} | {pb:.0f} | {pb / pa:.2f} | {ka:.3f} | {kb:.3f} | {kr} |")
EOF
