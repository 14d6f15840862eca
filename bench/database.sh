#!/usr/bin/env bash
# The database writer's cost: web starts per second with it on against off, rows per insert at
# saturation, and the extra edge-to-queue latency of forwarding behind it, against a real
# PostgreSQL and a real redis-server.
#
#   bench/database.sh [--seconds 10] [--rate 2000] [--latency-seconds 10] [--rounds 3]
#                     [--keep DIR]
#
# Once: a fresh PostgreSQL cluster (initdb in a temporary directory, as nobody when run as root;
# loopback, default settings but fsync off, as the test clusters), with the node's schema.sql
# and one web project. Per round, alternating:
#   1. starts, off: a node with its defaults and a projects file holding the same project;
#      `replay-bench starts` closed loop (64 connections) for --seconds;
#   2. starts, on: a node with POSTGRES_STRING; the same load; then the wait until every start
#      answered 200 has its row, and the writer's rows per statement from its exit summary;
#      for both, the CPU time of the node's worker threads per start (the request path's cost,
#      apart from PostgreSQL and the writer, which share the machine's cores with it);
#   3. forwarding latency, off and on: a node with REDIS_STRING (and POSTGRES_STRING for "on"),
#      `replay-bench forward-latency` at --rate batches/s for --latency-seconds, each batch's
#      time from its 200 to its entry seen by an XREAD BLOCK reader.
# Prints a table per round and the medians. Bounded: every load stops after its time; the nodes,
# redis and PostgreSQL are stopped by their pids on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SECONDS_=10
RATE=2000
LAT_S=10
ROUNDS=3
KEEP=""
PORT=18085
SECRET=bench-secret
KEY=benchproject00000001

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --latency-seconds) LAT_S=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --keep) KEEP=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[database %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$PGBIN/initdb" ] || { echo "needs PostgreSQL: apt-get install -y postgresql" >&2; exit 1; }
for tool in redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install -y redis-server curl python3" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/replay-database.XXXXXX)
chmod 755 "$TMP"
PIDS=()
source "$HERE/lib.sh"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid" 60; done
  [ -s "$TMP/pg/data/postmaster.pid" ] && kill -INT "$(head -n1 "$TMP/pg/data/postmaster.pid")" 2>/dev/null || true
  sleep 1
  if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp -r "$TMP"/logs "$TMP"/rounds.tsv "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$TMP/logs" "$TMP/pg"
[ "$(id -u)" -eq 0 ] && chown nobody "$TMP/pg"

log "building replay-ingest and replay-bench (release)"
(cd "$ROOT" && cargo build --release --locked -q)
(cd "$HERE" && cargo build --release --locked -q)
INGEST=$ROOT/target/release/replay-ingest
BENCH=$HERE/target/release/replay-bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kv() { local v; v=$(tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1); echo "${v:-0}"; }

PGPORT=$(free_port)
log "PostgreSQL on 127.0.0.1:$PGPORT"
as_pg "$PGBIN/initdb" -D "$TMP/pg/data" -U postgres -A trust -E UTF8 --locale=C --no-sync > "$TMP/logs/initdb.log"
as_pg "$PGBIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/postgres.log" -w \
  -o "-p $PGPORT -k $TMP/pg -c listen_addresses=127.0.0.1 -c fsync=off" start > /dev/null
PGURL="postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable"
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$PGURL" "$@"; }
psql -f "$ROOT/src/db/schema.sql" > /dev/null
PROJECT_ID=$(psql -At -c "INSERT INTO projects (project_key, name, platform, active) VALUES ('$KEY', 'bench', 'web', true) RETURNING project_id" | head -n1)
printf '[{"projectKey":"%s","projectID":%s,"platform":"web"}]' "$KEY" "$PROJECT_ID" > "$TMP/projects.json"

# start_node NAME [ENV=VALUE...]: a node with its defaults and the given environment.
start_node() {
  local name=$1; shift
  DATA=$TMP/data-$name
  env TOKEN_SECRET=$SECRET RUST_LOG=info "$@" "$INGEST" serve --listen 127.0.0.1:$PORT --data-dir "$DATA" \
    > "$TMP/logs/$name.out" 2> "$TMP/logs/$name.log" &
  NPID=$!; PIDS+=("$NPID")
  for _ in $(seq 1 100); do
    curl -s -m 1 "http://127.0.0.1:$PORT/health/ready" | grep -q '"ready"' && return 0
    sleep 0.1
  done
  echo "node $name did not get ready: $(tail -n 5 "$TMP/logs/$name.log")" >&2; exit 1
}
rows() { psql -At -c "SELECT count(*) FROM sessions"; }
# CPU time of the node's worker threads (the request path), microseconds.
workers_us() { "$BENCH" threads --pid "$NPID" 2>/dev/null | kv worker_us; }

printf 'round\toff_starts_s\ton_starts_s\tratio\toff_worker_us_per_start\ton_worker_us_per_start\trows_per_insert\tmax_rows_per_insert\trows_catch_up_s\toff_fwd_p50_us\toff_fwd_p99_us\ton_fwd_p50_us\ton_fwd_p99_us\n' > "$TMP/rounds.tsv"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round: starts without the database for ${SECONDS_}s"
  DATA=$TMP/data-off-$round
  TOKEN_SECRET=$SECRET "$INGEST" serve --listen 127.0.0.1:$PORT --data-dir "$DATA" --projects "$TMP/projects.json" \
    > /dev/null 2> "$TMP/logs/off-$round.log" &
  NPID=$!; PIDS+=("$NPID")
  for _ in $(seq 1 100); do curl -s -m 1 "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
  W0=$(workers_us)
  OFF=$("$BENCH" starts --url "http://127.0.0.1:$PORT" -c 64 -d "${SECONDS_}s" --project-key "$KEY" \
        2>>"$TMP/logs/bench-$round.log" | grep '^BENCHSTAT')
  OFF_W=$(( $(workers_us) - W0 ))
  stop_pid "$NPID" 60; rm -rf "$DATA"

  log "round $round: starts with the database writer for ${SECONDS_}s"
  before=$(rows)
  start_node "on-$round" POSTGRES_STRING="$PGURL"
  W0=$(workers_us)
  ON=$("$BENCH" starts --url "http://127.0.0.1:$PORT" -c 64 -d "${SECONDS_}s" --project-key "$KEY" \
       2>>"$TMP/logs/bench-$round.log" | grep '^BENCHSTAT')
  ON_W=$(( $(workers_us) - W0 ))
  t1=$(date +%s.%N)
  want=$((before + $(echo "$ON" | kv ok)))
  for _ in $(seq 1 3000); do [ "$(rows)" -ge "$want" ] && break; sleep 0.02; done
  t2=$(date +%s.%N)
  stop_pid "$NPID" 60; rm -rf "$DATA"
  SUMMARY=$(grep -o 'database writer: [0-9]* rows inserted ([0-9]* were there already) in [0-9]* statements (at most [0-9]* rows in one)' "$TMP/logs/on-$round.log" | tail -n1)

  LAT=()
  for mode in off on; do
    RPORT=$(free_port)
    redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no \
      --dir "$TMP" --logfile "$TMP/logs/redis-$mode-$round.log" &
    RPID=$!; PIDS+=("$RPID")
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$RPORT") 2>/dev/null && break; sleep 0.05; done
    log "round $round: forwarding latency, database $mode, $RATE req/s for ${LAT_S}s"
    if [ "$mode" = on ]; then
      start_node "fwd-$mode-$round" REDIS_STRING="redis://127.0.0.1:$RPORT" POSTGRES_STRING="$PGURL"
    else
      DATA=$TMP/data-fwd-off-$round
      REDIS_STRING="redis://127.0.0.1:$RPORT" TOKEN_SECRET=$SECRET "$INGEST" serve --listen 127.0.0.1:$PORT \
        --data-dir "$DATA" --projects "$TMP/projects.json" > /dev/null 2> "$TMP/logs/fwd-off-$round.log" &
      NPID=$!; PIDS+=("$NPID")
      for _ in $(seq 1 100); do curl -s -m 1 "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
    fi
    LAT+=("$("$BENCH" forward-latency --url "http://127.0.0.1:$PORT" --project-key "$KEY" \
          --redis "redis://127.0.0.1:$RPORT" --rate "$RATE" -d "${LAT_S}s" \
          2>>"$TMP/logs/bench-$round.log" | grep '^FWDLATSTAT')")
    stop_pid "$NPID" 60; stop_pid "$RPID" 10; rm -rf "$DATA"
  done

  python3 - "$round" "$OFF" "$ON" "$SUMMARY" "$t1" "$t2" "${LAT[0]}" "${LAT[1]}" "$OFF_W" "$ON_W" >> "$TMP/rounds.tsv" <<'EOF'
import re, sys
round_, off, on, summary, t1, t2, lat_off, lat_on, off_w, on_w = sys.argv[1:]
kv = lambda line: dict(x.split("=", 1) for x in line.split()[1:])
o, n, lo, ln = kv(off), kv(on), kv(lat_off), kv(lat_on)
rate = lambda s: float(s["ok"]) / (float(s["duration_us"]) / 1e6)
m = re.search(r"(\d+) rows inserted \((\d+) were there already\) in (\d+) statements \(at most (\d+)", summary)
rows, existing, statements, most = (int(x) for x in m.groups()) if m else (0, 0, 0, 0)
print("\t".join(str(x) for x in [
    round_, round(rate(o)), round(rate(n)), round(rate(n) / rate(o), 2),
    round(int(off_w) / max(1, int(o["ok"])), 1), round(int(on_w) / max(1, int(n["ok"])), 1),
    round((rows + existing) / statements, 1) if statements else 0, most,
    round(float(t2) - float(t1), 2),
    lo["p50_us"], lo["p99_us"], ln["p50_us"], ln["p99_us"]]))
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
def med(i):
    try:
        return str(statistics.median(float(r[i]) for r in rows))
    except ValueError:
        return "-"
print("| " + " | ".join(["median"] + [med(i) for i in range(1, len(head))]) + " |")
EOF
