#!/usr/bin/env bash
# Forwarding to Redis Streams: edge-to-queue latency under moderate load, and the forwarder's
# throughput at saturation, against a real redis-server.
#
#   bench/forward.sh [--rate 2000] [--latency-seconds 20] [--saturation-seconds 10]
#                    [--size 8k] [--rounds 3] [--keep DIR]
#
# Per round: a fresh redis-server (loopback, no persistence) and a fresh node with its defaults
# and REDIS_STRING pointing at it. Then
#   1. latency: `replay-bench forward-latency`, batches of --size at --rate req/s (open loop, 8
#      connections), each one's time from the node's 200 to its entry seen by an XREAD BLOCK
#      reader;
#   0. the same saturation on a node without a forwarder (the cost of forwarding);
#   2. saturation: `replay-bench fixed` closed loop (64 connections) for --saturation-seconds;
#      the entries Redis took (XINFO STREAM's entries-added) at the start and the end of the load
#      and once every batch answered 200 is there, against the batches answered 200.
# Prints a table per round and the medians. Bounded: every load stops after its time, the node
# and redis are stopped by their pids on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
RATE=2000
LAT_S=20
SAT_S=10
SIZE=8k
ROUNDS=3
KEEP=""
PORT=18084
SECRET=bench-secret

while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift ;;
    --latency-seconds) LAT_S=$2; shift ;;
    --saturation-seconds) SAT_S=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --keep) KEEP=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[forward %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for tool in redis-server curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install -y redis-server curl python3" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/replay-forward.XXXXXX)
PIDS=()
source "$HERE/lib.sh"
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid" 60; done
  if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp -r "$TMP"/logs "$TMP"/rounds.tsv "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$TMP/logs"

log "building replay-ingest and replay-bench (release)"
(cd "$ROOT" && cargo build --release --locked -q)
(cd "$HERE" && cargo build --release --locked -q)
INGEST=$ROOT/target/release/replay-ingest
BENCH=$HERE/target/release/replay-bench

kv() { local v; v=$(tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1); echo "${v:-0}"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Entries ever added to the `raw` stream (XINFO's entries-added: trimming does not lower it).
added() {
  redis-cli -p "$RPORT" XINFO STREAM raw 2>/dev/null | awk 'prev == "entries-added" && !found { print; found=1 } { prev = $0 } END { if (!found) print 0 }'
}

printf 'round\tsent\tseen\tp50_us\tp99_us\tp999_us\tmax_us\tbase_req_s\tsat_req_s\tfwd_rec_s_during\tfwd_rec_s_overall\tcatch_up_s\n' > "$TMP/rounds.tsv"
TOKEN=$(python3 "$(cd "$ROOT/.." && pwd)/shared/peers/mktoken.py" "$SECRET" 4242)
for round in $(seq 1 "$ROUNDS"); do
  # The same saturation without a forwarder: what forwarding costs the request path.
  DATA=$TMP/base-$round
  TOKEN_SECRET=$SECRET "$INGEST" serve --listen 127.0.0.1:$PORT --data-dir "$DATA" > /dev/null 2> "$TMP/logs/base-$round.log" &
  BPID=$!; PIDS+=("$BPID")
  for _ in $(seq 1 100); do curl -s -m 1 "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
  log "round $round: saturation without a forwarder for ${SAT_S}s"
  BASE=$("$BENCH" fixed --url "http://127.0.0.1:$PORT" -c 64 -d "${SAT_S}s" --size "$SIZE" --token "$TOKEN" \
        2>>"$TMP/logs/bench-$round.log" | grep '^BENCHSTAT')
  stop_pid "$BPID" 60; rm -rf "$DATA"

  RPORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no \
    --dir "$TMP" --logfile "$TMP/logs/redis-$round.log" &
  RPID=$!; PIDS+=("$RPID")
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$RPORT") 2>/dev/null && break; sleep 0.05; done
  DATA=$TMP/data-$round
  REDIS_STRING=redis://127.0.0.1:$RPORT TOKEN_SECRET=$SECRET RUST_LOG=info \
    "$INGEST" serve --listen 127.0.0.1:$PORT --data-dir "$DATA" > "$TMP/logs/node-$round.out" 2> "$TMP/logs/node-$round.log" &
  NPID=$!; PIDS+=("$NPID")
  for _ in $(seq 1 100); do [ -s "$DATA/demo-project-key" ] && curl -s -m 1 "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
  KEY=$(cat "$DATA/demo-project-key")

  log "round $round: latency at $RATE req/s for ${LAT_S}s"
  LAT=$("$BENCH" forward-latency --url "http://127.0.0.1:$PORT" --project-key "$KEY" \
        --redis "redis://127.0.0.1:$RPORT" --rate "$RATE" -d "${LAT_S}s" --size "$SIZE" \
        2>>"$TMP/logs/bench-$round.log" | grep '^FWDLATSTAT')

  log "round $round: saturation for ${SAT_S}s"
  before=$(added)
  t0=$(date +%s.%N)
  SAT=$("$BENCH" fixed --url "http://127.0.0.1:$PORT" -c 64 -d "${SAT_S}s" --size "$SIZE" --token "$TOKEN" \
        2>>"$TMP/logs/bench-$round.log" | grep '^BENCHSTAT')
  during=$(added)
  t1=$(date +%s.%N)
  ok=$(echo "$SAT" | kv ok)
  want=$((before + ok))
  # Caught up: everything answered 200 is in Redis (bounded wait).
  for _ in $(seq 1 3000); do [ "$(added)" -ge "$want" ] && break; sleep 0.02; done
  t2=$(date +%s.%N)
  after=$(added)
  stop_pid "$NPID" 60; stop_pid "$RPID" 10
  python3 - "$round" "$LAT" "$BASE" "$SAT" "$before" "$during" "$after" "$t0" "$t1" "$t2" >> "$TMP/rounds.tsv" <<'EOF'
import sys
round_, lat, base, sat, before, during, after, t0, t1, t2 = sys.argv[1:]
kv = lambda line: dict(x.split("=", 1) for x in line.split()[1:])
l, b, s = kv(lat), kv(base), kv(sat)
t0, t1, t2 = float(t0), float(t1), float(t2)
before, during, after = int(before), int(during), int(after)
dur = float(s["duration_us"]) / 1e6
print("\t".join(str(x) for x in [
    round_, l["sent"], l["seen"], l["p50_us"], l["p99_us"], l["p999_us"], l["max_us"],
    round(float(b["ok"]) / (float(b["duration_us"]) / 1e6)), round(float(s["ok"]) / dur), round((during - before) / (t1 - t0)),
    round((after - before) / (t2 - t0)), round(t2 - t1, 1)]))
EOF
done

python3 - "$TMP/rounds.tsv" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
head, rows = rows[0], rows[1:]
print("| " + " | ".join(head) + " |")
print("| " + " | ".join("---:" for _ in head) + " |")
for r in rows:
    print("| " + " | ".join(r) + " |")
med = ["median"] + [str(statistics.median(float(r[i]) for r in rows)) for i in range(1, len(head))]
print("| " + " | ".join(med) + " |")
EOF
