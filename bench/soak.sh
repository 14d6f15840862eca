#!/usr/bin/env bash
# Soak: replay-ingest at saturation for minutes, its data directory's size sampled as it goes,
# against its disk budget.
#
#   bench/soak.sh [--minutes 10 | --seconds S | --quick] [--load wrk-64k|wrk-8k|mix]
#                 [--interval 10] [--budget 8GiB|default] [--durability os|fsync] [--keep DIR]
#
# Starts one node (default settings but the disk budget: --budget, 8 GiB unless told), loads it
# in closed loop for the whole time (wrk -t1 -c64 with a fixed 64 KiB body by default, or our
# generator's tracker mix, -c64), and every --interval seconds records `du -sb` of the data
# directory and /health/ready's storage and compactor lag. Then it stops the load and the node by
# their pids and prints: the largest size seen against the budget, the compactor's lag when the
# load ended, what the node's exit summary says (compactor bytes in and out, files expired,
# segment files forced out unconsumed), requests refused (503s), and the node's CPU per request
# split into the request path (worker-N threads) and the background.
#
# `--budget default` leaves the node's default (80% of the file system); the script refuses it
# when that is more than the file system has free, since a compactor slower than the load would
# then fill the disk before the budget binds. --quick: 60 s, sampled every 5 s.
# Bounded: the load stops after its time, the node gets 120 s to exit after SIGTERM, and every
# process started here is stopped by its pid on exit; the temporary directory is removed unless
# --keep is given (samples.tsv and the logs are saved there).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PEERS=${PEERS:-$(cd "$ROOT/.." && pwd)/shared/peers}
SECONDS_TOTAL=600
INTERVAL=10
LOAD=wrk-64k
BUDGET=8GiB
DURABILITY=os
KEEP=""
SECRET=bench-secret
PORT=18083
STOP_WAIT=120

while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) SECONDS_TOTAL=$(( $2 * 60 )); shift ;;
    --seconds) SECONDS_TOTAL=$2; shift ;;
    --quick) SECONDS_TOTAL=60; INTERVAL=5 ;;
    --load) LOAD=$2; shift ;;
    --interval) INTERVAL=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --durability) DURABILITY=$2; shift ;;
    --keep) KEEP=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$LOAD" in wrk-1k|wrk-8k|wrk-64k|mix) ;; *) echo "--load is wrk-1k, wrk-8k, wrk-64k or mix" >&2; exit 2 ;; esac

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

need_pkgs=()
[[ "$LOAD" == wrk-* ]] && ! command -v wrk >/dev/null && need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need_pkgs[@]}" >/dev/null
  else
    echo "missing tools; install them with: sudo apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

# --- clean-up: every started process by its pid --------------------------------------------
TMP=$(mktemp -d /tmp/replay-soak.XXXXXX)
PIDS=()
# stop_pid and health come from lib.sh.
source "$HERE/lib.sh"
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid" "$STOP_WAIT"; done
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP" && cp -r "$TMP"/samples.tsv "$TMP"/logs "$KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$TMP/logs"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- budget ---------------------------------------------------------------------------------------
free_bytes=$(( $(df -Pk "$TMP" | awk 'NR==2 {print $4}') * 1024 ))
size_bytes=$(( $(df -Pk "$TMP" | awk 'NR==2 {print $2}') * 1024 ))
BUDGET_ARGS=()
if [ "$BUDGET" = default ]; then
  if [ $((size_bytes / 5 * 4)) -gt "$free_bytes" ]; then
    echo "the node's default budget (80% of $((size_bytes >> 30)) GiB) is more than the $((free_bytes >> 30)) GiB free here; give --budget SIZE" >&2
    exit 1
  fi
else
  BUDGET_ARGS=(--disk-budget "$BUDGET")
fi

# --- builds -----------------------------------------------------------------------------------
log "building replay-ingest and replay-bench (release)"
(cd "$ROOT" && cargo build --release --locked -q)
(cd "$HERE" && cargo build --release --locked -q)
INGEST_BIN=$ROOT/target/release/replay-ingest
BENCH_BIN=$HERE/target/release/replay-bench
TOKEN=$(python3 "$PEERS/mktoken.py" "$SECRET" 4242)

kv() { local v; v=$(tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1); echo "${v:-0}"; }

threads_us() {
  local line
  line=$("$BENCH_BIN" threads --pid "$NODE_PID" 2>/dev/null || true)
  echo "$(echo "$line" | kv total_us) $(echo "$line" | kv worker_us)"
}

# --- the node ---------------------------------------------------------------------------------------
DATA=$TMP/data
TOKEN_SECRET=$SECRET "$INGEST_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" \
  --durability "$DURABILITY" "${BUDGET_ARGS[@]+"${BUDGET_ARGS[@]}"}" >"$TMP/logs/node.log" 2>&1 &
NODE_PID=$!; PIDS+=("$NODE_PID")
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$NODE_PID" 2>/dev/null || { cat "$TMP/logs/node.log" >&2; exit 1; }
  sleep 0.1
done
for _ in $(seq 1 50); do [ -s "$DATA/demo-project-key" ] && break; sleep 0.1; done
read -r -a h0 <<<"$(health)"
log "node pid $NODE_PID, durability $DURABILITY, budget ${h0[3]:-?} bytes ($BUDGET); load $LOAD for ${SECONDS_TOTAL}s, sampled every ${INTERVAL}s; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- the load, in the background; samples in the foreground -------------------------------------
read -r -a t0 <<<"$(threads_us)"
START=$(date +%s)
case "$LOAD" in
  wrk-*)
    size=${LOAD#wrk-}
    "$BENCH_BIN" body --size "$size" --out "$TMP/body.bin"
    BODY_FILE="$TMP/body.bin" TOKEN=$TOKEN wrk -t1 -c64 -d"${SECONDS_TOTAL}s" --latency \
      -s "$PEERS/wrk/post.lua" "http://127.0.0.1:$PORT/v1/web/i" >"$TMP/logs/load.out" 2>&1 &
    ;;
  mix)
    "$BENCH_BIN" mix --url "http://127.0.0.1:$PORT" -c 64 -t 1 -d "${SECONDS_TOTAL}s" \
      --project-key "$(cat "$DATA/demo-project-key")" >"$TMP/logs/load.out" 2>"$TMP/logs/load.err" &
    ;;
esac
LOAD_PID=$!; PIDS+=("$LOAD_PID")

echo -e "t_s\tdu_bytes\tused_bytes\tbudget_bytes\tfull\tlag_bytes\tlag_segments\tsegments_bytes\tspare_bytes\tcompacted_bytes" >"$TMP/samples.tsv"
dir_bytes() { du -sb "$1" 2>/dev/null | cut -f1 | grep . || echo 0; }
sample() {
  local t du h seg spare comp
  t=$(( $(date +%s) - START ))
  du=$(dir_bytes "$DATA"); seg=$(dir_bytes "$DATA/segments"); spare=$(dir_bytes "$DATA/segments/spare")
  comp=$(dir_bytes "$DATA/compacted")
  read -r -a h <<<"$(health)"
  echo -e "$t\t${du:-0}\t${h[2]:-0}\t${h[3]:-0}\t${h[4]:-0}\t${h[0]:-0}\t${h[1]:-0}\t$((seg - spare))\t$spare\t$comp" >>"$TMP/samples.tsv"
  log "t=${t}s data dir $(( ${du:-0} >> 20 )) MiB, node counts $(( ${h[2]:-0} >> 20 )) MiB of $(( ${h[3]:-0} >> 20 )) MiB$([ "${h[4]:-0}" = 1 ] && echo ' (full)'), compactor lag $(( ${h[0]:-0} >> 20 )) MiB in ${h[1]:-0} segments"
}
DEADLINE=$((START + SECONDS_TOTAL + 30))
sample
next=$((START + INTERVAL))
while kill -0 "$LOAD_PID" 2>/dev/null && [ "$(date +%s)" -lt "$DEADLINE" ]; do
  sleep 1
  if [ "$(date +%s)" -ge "$next" ]; then sample; next=$((next + INTERVAL)); fi
done
# The load's last sample: the compactor's lag when it ended.
sample
read -r -a t1 <<<"$(threads_us)"
stop_pid "$LOAD_PID"
PIDS=("$NODE_PID")
LOAD_END=$(date +%s)
read -r -a hend <<<"$(health)"

log "stopping the node (it compacts what is sealed before it exits)"
stop_pid "$NODE_PID" "$STOP_WAIT"
PIDS=()
EXIT_S=$(( $(date +%s) - LOAD_END ))

# --- report -----------------------------------------------------------------------------------------
if [[ "$LOAD" == wrk-* ]]; then
  line=$(grep '^WRKSTAT' "$TMP/logs/load.out" || true)
  req=$(echo "$line" | kv requests); dur=$(echo "$line" | kv duration_us)
  refused=$(echo "$line" | kv err_status); p99=$(echo "$line" | kv p99_us)
  body=$(stat -c %s "$TMP/body.bin")
else
  line=$(grep '^BENCHSTAT' "$TMP/logs/load.out" || true)
  req=$(echo "$line" | kv requests); dur=$(echo "$line" | kv duration_us)
  refused=$(( $(echo "$line" | kv err_status) + $(echo "$line" | kv err_io) )); p99=$(echo "$line" | kv p99_us)
  body=0
fi
python3 - "$TMP/samples.tsv" "$TMP/logs/node.log" "$req" "$dur" "$refused" "$p99" "$body" \
  "${t0[0]:-0}" "${t0[1]:-0}" "${t1[0]:-0}" "${t1[1]:-0}" "$EXIT_S" "$LOAD" "$SECONDS_TOTAL" "$INTERVAL" <<'EOF'
import csv, re, sys
(samples, node_log, req, dur, refused, p99, body, tot0, w0, tot1, w1, exit_s, load, secs, interval) = sys.argv[1:]
rows = list(csv.DictReader(open(samples), delimiter="\t"))
req, dur, refused, body = int(req), int(dur), int(refused), int(body)
mib = lambda b: int(b) / 2**20
du = [int(r["du_bytes"]) for r in rows]
budget = max(int(r["budget_bytes"]) for r in rows) if rows else 0
top = max(range(len(du)), key=lambda i: du[i]) if du else 0
text = open(node_log).read()
comp = re.search(r"compactor: (\d+) segments, (\d+) records, (\d+) bytes into (\d+) bytes(?: in [0-9.]+ s busy)?, (\d+) quarantined, (\d+) files expired", text)
segs = re.search(r"segment files: (\d+) created, (\d+) reused from \S+, (\d+) retired, (\d+) forced out unconsumed", text)
flush = re.findall(r"worker \d+: (\d+) group commits for (\d+) records", text)
print(f"\nSoak: {load} closed loop for {secs} s, `du -sb` every {interval} s ({len(rows)} samples)\n")
print(f"- answered {req} requests in {dur / 1e6:.0f} s: {req / (dur / 1e6) if dur else 0:.0f} req/s"
      + (f", {body * req / dur if dur else 0:.0f} MB/s" if body else "")
      + f"; non-2xx or failed {refused}; p99 {int(p99) / 1000:.1f} ms")
if rows:
    print(f"- data directory: max {mib(du[top]):.0f} MiB at t={rows[top]['t_s']} s, at the end {mib(du[-1]):.0f} MiB; "
          f"budget {mib(budget):.0f} MiB: {'within' if du[top] <= budget else 'OVER by ' + format(mib(du[top] - budget), '.0f') + ' MiB'} "
          f"(max {du[top] / budget * 100 if budget else 0:.0f}% of it)")
    last = rows[-1]
    print(f"- compactor lag when the load ended: {mib(last['lag_bytes']):.0f} MiB in {last['lag_segments']} sealed segments; "
          f"largest lag seen {max(mib(r['lag_bytes']) for r in rows):.0f} MiB; budget full in {sum(r['full'] == '1' for r in rows)} of {len(rows)} samples")
if comp:
    s, n, raw, out, q, exp = map(int, comp.groups())
    print(f"- compactor at exit: {s} segments, {n} records, {raw / 1e6:.0f} MB into {out / 1e6:.1f} MB ({raw / out if out else 0:.1f}x), "
          f"{q} quarantined, {exp} files expired; the node took {exit_s} s to exit after the load")
    if dur:
        print(f"- compactor {(raw / dur):.0f} MB/s of bytes in over the load's time (includes what it read after the load, before exit)")
if segs:
    c, r, ret, f = map(int, segs.groups())
    print(f"- segment files: {c} created, {r} reused, {ret} retired, {f} forced out unconsumed (records lost to the budget before compaction)")
if flush:
    fl = sum(int(a) for a, _ in flush); rec = sum(int(b) for _, b in flush)
    print(f"- group commits: {fl} for {rec} records ({rec / fl:.1f} records a flush)")
tot, w = int(tot1) - int(tot0), int(w1) - int(w0)
if req:
    print(f"- node CPU per request over the load: {tot / req:.1f} µs, request path (worker-N) {w / req:.1f} µs, background {(tot - w) / req:.1f} µs")
print("\n| t s | data dir MiB | segments MiB | spare MiB | compacted MiB | node's count MiB | compactor lag MiB | lag segments |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    print(f"| {r['t_s']} | {mib(r['du_bytes']):.0f} | {mib(r['segments_bytes']):.0f} | {mib(r['spare_bytes']):.0f} "
          f"| {mib(r['compacted_bytes']):.0f} | {mib(r['used_bytes']):.0f} | {mib(r['lag_bytes']):.0f} | {r['lag_segments']} |")
EOF
