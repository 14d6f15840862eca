#!/usr/bin/env bash
# Side-by-side comparison: replay-ingest (default settings: "os" durability, the default disk
# budget, the compactor on) and replay-ingest with --durability fsync, against nginx (the HTTP
# near-limit) and the Go reference (what OpenReplay users run today), on this machine, in one
# invocation.
#
#   bench/compare.sh [--quick] [--rounds N] [--duration SECONDS]
#                    [--targets "ingest ingest-fsync nginx refgo"] [--fsync-scenarios "wrk-8k"]
#                    [--catch-up SECONDS] [--no-extras] [--keep DIR]
#
# Each round runs every target in turn (A B C A B C ...) over the same scenarios (wrk -t1 -c64
# with fixed 1/8/64 KiB bodies through ../shared/peers/wrk/post.lua, then our generator's
# tracker mix at -c64; ingest-fsync only the --fsync-scenarios), each scenario against a freshly
# started server. The server's CPU time (utime+stime of its process tree, from /proc) is sampled
# around every run; for replay-ingest also per thread name (worker-N and prepare-N: the request
# path; the compactor, the segment service and the rest: the background), then the script waits
# for the compactor to catch up (its lag in /health/ready back to 0, at most --catch-up seconds),
# samples again, stops the node and reads its exit summary (compactor bytes in and out,
# segment files, group commits). At the end: a table of medians with ratios against nginx and
# the Go reference, the CPU split, fsync against os, the compactor against ingest, the goal
# checks, then replay-ingest's other goals (open loop at half its saturation rate, 10,000 idle
# connections, peak RSS against run length).
#
# Loopback only. Every process this script starts is stopped by its pid on exit; the temporary
# directory (server data, bodies, logs) is removed unless --keep is given.
# Missing tools (wrk, nginx and its echo/lua modules, Go, curl) are installed with apt-get when
# run as root; otherwise the script says which packages to install.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PEERS=${PEERS:-$(cd "$ROOT/.." && pwd)/shared/peers}
ROUNDS=3
DURATION=10
TARGETS="ingest ingest-fsync nginx refgo"
SCENARIOS="wrk-1k wrk-8k wrk-64k mix"
FSYNC_SCENARIOS="wrk-8k"
CATCH_UP=60        # seconds a replay-ingest run may take to compact its backlog after the load
STOP_WAIT=120      # seconds replay-ingest may take to exit after SIGTERM (it compacts what is sealed)
MIN_FREE_GIB=${MIN_FREE_GIB:-16}    # a 10 s 64 KiB run can leave several GB of segments the compactor has not read
EXTRAS=1
KEEP=""
SECRET=bench-secret
PORT_NGINX=18080   # fixed by ../shared/peers/nginx/nginx.conf
PORT_REFGO=18081
PORT_INGEST=18082
ADMIN_PORT_INGEST=18089

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROUNDS=1; DURATION=3 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --fsync-scenarios) FSYNC_SCENARIOS=$2; shift ;;
    --catch-up) CATCH_UP=$2; shift ;;
    --no-extras) EXTRAS=0 ;;
    --keep) KEEP=$2; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- tools --------------------------------------------------------------------------------
need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v go >/dev/null || need_pkgs+=(golang-go)
if ! command -v nginx >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] \
   || [ ! -e /usr/lib/nginx/modules/ngx_http_lua_module.so ]; then
  need_pkgs+=(nginx libnginx-mod-http-echo libnginx-mod-http-lua)
fi
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v curl >/dev/null || need_pkgs+=(curl)
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
[ -d "$PEERS" ] || { echo "peers not found at $PEERS (set PEERS=...)" >&2; exit 1; }

# --- clean-up: every started process by its pid --------------------------------------------
TMP=$(mktemp -d /tmp/replay-compare.XXXXXX)
PIDS=()
# stop_pid and health come from lib.sh.
source "$HERE/lib.sh"
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP" && cp -r "$TMP"/results.tsv "$TMP"/logs "$KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$TMP/logs"

# replay-ingest runs with its default disk budget (80% of the file system), so nothing but free
# space bounds what a run leaves before the compactor reads it.
free_gib=$(( $(df -Pk "$TMP" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
if [ "$free_gib" -lt "$MIN_FREE_GIB" ]; then
  echo "only $free_gib GiB free under $TMP; a 64 KiB run needs about $MIN_FREE_GIB (set MIN_FREE_GIB to override)" >&2
  exit 1
fi

# Many idle connections need many descriptors, in the servers (started from here) and the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- builds -----------------------------------------------------------------------------------
log "building replay-ingest and replay-bench (release)"
(cd "$ROOT" && cargo build --release --locked -q)
(cd "$HERE" && cargo build --release --locked -q)
INGEST_BIN=$ROOT/target/release/replay-ingest
BENCH_BIN=$HERE/target/release/replay-bench
if [[ " $TARGETS " == *" refgo "* ]]; then
  log "building the Go reference into $TMP (its source stays in shared/)"
  cp -r "$PEERS/ref-go" "$TMP/ref-go-src"
  (cd "$TMP/ref-go-src" && GOFLAGS=-mod=mod GOCACHE="$TMP/gocache" go build -o "$TMP/ref-go" .)
fi

for size in 1k 8k 64k; do "$BENCH_BIN" body --size "$size" --out "$TMP/body-$size.bin"; done
# A token signed with the secret both replay-ingest and ref-go are started with.
TOKEN=$(python3 "$PEERS/mktoken.py" "$SECRET" 4242)

# --- targets ------------------------------------------------------------------------------------
SERVER_PID=""
SERVER_LOG=""
PROJECT_KEY=bench
MIX_TOKEN_ARGS=()

wait_port() {
  local port=$1
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited; see $TMP/logs" >&2; return 1; }
    sleep 0.1
  done
  echo "port $port never opened" >&2
  return 1
}

is_ingest() { [ "$1" = ingest ] || [ "$1" = ingest-fsync ]; }

# node_tail BEFORE AFTER: from two /metrics scrapes, the share of requests the node took over
# 1 ms, and the histogram bucket its p99 falls in.
node_tail() {
  python3 - "$1" "$2" <<'PY'
import sys
def buckets(path):
    out = {}
    try:
        for line in open(path):
            if line.startswith("replay_ingest_request_duration_seconds_bucket{le="):
                le = line.split('"')[1]
                out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    except OSError:
        pass
    return out
a, b = buckets(sys.argv[1]), buckets(sys.argv[2])
d = sorted((le, b[le] - a.get(le, 0.0)) for le in b)
total = d[-1][1] if d else 0
if not total:
    print("no histogram")
    sys.exit()
over_1ms = total - dict(d).get(0.001, total)
p99 = next(le for le, n in d if n >= 0.99 * total)
bound = "above 5 s" if p99 == float("inf") else f"<= {p99 * 1e6:.0f} µs"
print(f"{100 * over_1ms / total:.2f}% over 1 ms, p99 {bound}")
PY
}

# start_target TARGET LABEL: a fresh server (replay-ingest: a fresh data directory).
start_target() {
  local target=$1 label=$2
  SERVER_LOG=$TMP/logs/$target-$label.log
  case "$target" in
    ingest|ingest-fsync)
      local data=$TMP/ingest-data-$label durability=os
      [ "$target" = ingest-fsync ] && durability=fsync
      # Default settings otherwise: the disk budget (80% of the file system), the compactor.
      TOKEN_SECRET=$SECRET "$INGEST_BIN" serve --listen "127.0.0.1:$PORT_INGEST" --data-dir "$data" \
        --admin-listen "127.0.0.1:$ADMIN_PORT_INGEST" --durability "$durability" >"$SERVER_LOG" 2>&1 &
      SERVER_PID=$!; PIDS+=("$SERVER_PID"); PORT=$PORT_INGEST; DATA_DIR=$data
      wait_port "$PORT"
      for _ in $(seq 1 50); do [ -s "$data/demo-project-key" ] && break; sleep 0.1; done
      PROJECT_KEY=$(cat "$data/demo-project-key"); MIX_TOKEN_ARGS=()
      ;;
    nginx)
      local dir=$TMP/nginx-$label
      mkdir -p "$dir/logs" "$dir/run" "$dir/tmp"
      # The peer config plus a canned start answer, so that the tracker mix can run against it
      # (nginx still checks no token and stores nothing).
      awk '/location \/ \{/ && !done {
             print "        location = /v1/web/start {";
             print "            default_type application/json;";
             print "            return 200 '"'"'{\"token\":\"nginx\",\"sessionID\":\"1\",\"userUUID\":\"u\",\"delay\":0,\"beaconSizeLimit\":1000000}'"'"';";
             print "        }"; done = 1 }
           { print }' "$PEERS/nginx/nginx.conf" >"$dir/nginx.conf"
      nginx -p "$dir/" -c nginx.conf -e logs/error.log -g 'daemon off;' >"$SERVER_LOG" 2>&1 &
      SERVER_PID=$!; PIDS+=("$SERVER_PID"); PORT=$PORT_NGINX
      wait_port "$PORT"; PROJECT_KEY=bench; MIX_TOKEN_ARGS=()
      ;;
    refgo)
      mkdir -p "$TMP/refgo-$label"
      "$TMP/ref-go" -addr "127.0.0.1:$PORT_REFGO" -secret "$SECRET" -out "$TMP/refgo-$label/refgo.log" \
        >"$SERVER_LOG" 2>&1 &
      SERVER_PID=$!; PIDS+=("$SERVER_PID"); PORT=$PORT_REFGO
      wait_port "$PORT"; PROJECT_KEY=bench; MIX_TOKEN_ARGS=()
      ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
}

# Stops the server by its pid (replay-ingest gets STOP_WAIT seconds: it compacts what is sealed
# before it exits) and removes its data.
stop_target() {
  local wait_s=5
  [ -n "${DATA_DIR:-}" ] && wait_s=$STOP_WAIT
  stop_pid "$SERVER_PID" "$wait_s"
  local keep=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" != "$SERVER_PID" ] && keep+=("$pid"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
  rm -rf "$TMP"/ingest-data-* "$TMP"/refgo-*/refgo.log
  DATA_DIR=""
}
DATA_DIR=""

# The value of KEY in a "WRKSTAT/BENCHSTAT/PROCSTAT/THREADSTAT k=v ..." line; 0 when absent.
kv() { local v; v=$(tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1); echo "${v:-0}"; }

proc_cpu_us() { "$BENCH_BIN" proc --pid "$SERVER_PID" | kv cpu_us; }

# replay-ingest's CPU by thread name: "total request-path compactor segment-service" in µs; the
# request path is the worker-N threads and the prepare-N threads they hand gzip bodies to.
threads_us() {
  local line
  line=$("$BENCH_BIN" threads --pid "$SERVER_PID" 2>/dev/null || true)
  echo "$(echo "$line" | kv total_us) $(( $(echo "$line" | kv worker_us) + $(echo "$line" | kv prepare_us) )) $(echo "$line" | kv compactor_us) $(echo "$line" | kv segment-service_us)"
}

# results.tsv, one line per run. For replay-ingest also: CPU during the run by thread group
# (cpu_worker/compactor/segsvc/otherbg), background CPU while the compactor caught up after it
# (cu_compactor, cu_otherbg), how long that took, the compactor's lag when the load ended, what
# the exit summary says it compacted (raw_bytes into file_bytes), segment files forced out
# unconsumed, records per group commit (fsync), the data directory's size when the load ended.
COLS="round target scenario requests duration_us body_bytes server_cpu_us p50_us p99_us errors hwm_kib"
COLS+=" cpu_worker_us cpu_compactor_us cpu_segsvc_us cpu_otherbg_us cu_compactor_us cu_otherbg_us"
COLS+=" catchup_ms lag_end_bytes raw_bytes file_bytes forced_out recs_per_flush du_end_bytes"
echo "$COLS" | tr ' ' '\t' >"$TMP/results.tsv"

# Per run: LOAD_N LOAD_DUR LOAD_BYTES LOAD_CPU LOAD_P50 LOAD_P99 LOAD_ERRS LOAD_HWM.
run_load() {
  local scenario=$1 out
  case "$scenario" in
    wrk-*)
      local size=${scenario#wrk-} cpu0 cpu1
      cpu0=$(proc_cpu_us)
      out=$(BODY_FILE="$TMP/body-$size.bin" TOKEN=$TOKEN wrk -t1 -c64 -d"${DURATION}s" --latency \
            -s "$PEERS/wrk/post.lua" "http://127.0.0.1:$PORT/v1/web/i" 2>&1 | grep '^WRKSTAT' || true)
      cpu1=$(proc_cpu_us)
      LOAD_N=$(echo "$out" | kv requests); LOAD_DUR=$(echo "$out" | kv duration_us)
      LOAD_BYTES=$((LOAD_N * $(stat -c %s "$TMP/body-$size.bin"))); LOAD_CPU=$((cpu1 - cpu0))
      LOAD_P50=$(echo "$out" | kv p50_us); LOAD_P99=$(echo "$out" | kv p99_us)
      LOAD_ERRS=$(( $(echo "$out" | kv err_status) + $(echo "$out" | kv err_connect) + $(echo "$out" | kv err_read) \
                  + $(echo "$out" | kv err_write) + $(echo "$out" | kv err_timeout) ))
      LOAD_HWM=$("$BENCH_BIN" proc --pid "$SERVER_PID" | kv hwm_kib)
      ;;
    mix)
      out=$("$BENCH_BIN" mix --url "http://127.0.0.1:$PORT" -c 64 -t 1 -d "${DURATION}s" \
            --server-pid "$SERVER_PID" --project-key "$PROJECT_KEY" "${MIX_TOKEN_ARGS[@]+"${MIX_TOKEN_ARGS[@]}"}" \
            2>>"${SERVER_LOG%.log}.client.log" | grep '^BENCHSTAT' || true)
      LOAD_N=$(echo "$out" | kv requests); LOAD_DUR=$(echo "$out" | kv duration_us)
      LOAD_BYTES=$(echo "$out" | kv body_bytes); LOAD_CPU=$(echo "$out" | kv server_cpu_us)
      LOAD_P50=$(echo "$out" | kv p50_us); LOAD_P99=$(echo "$out" | kv p99_us)
      LOAD_ERRS=$(( $(echo "$out" | kv err_status) + $(echo "$out" | kv err_io) ))
      LOAD_HWM=$(echo "$out" | kv server_hwm_kib)
      ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
}

# The first number after PREFIX on the first log line that has it; 0 when there is none.
log_num() { sed -n "s/.*$1\([0-9][0-9]*\).*/\1/p" "$2" | head -n1 | grep . || echo 0; }

run_scenario() {
  local round=$1 target=$2 scenario=$3
  LABEL=$round-$scenario
  start_target "$target" "$LABEL"
  local extra="0 0 0 0 0 0 0 0 0 0 0 0 0"
  if is_ingest "$target"; then
    local t0 t1 t2 h1 h catchup_ms=0 du_end start_ms
    read -r -a t0 <<<"$(threads_us)"
    run_load "$scenario"
    read -r -a t1 <<<"$(threads_us)"
    read -r -a h1 <<<"$(health)"
    du_end=$(du -sb "$DATA_DIR" 2>/dev/null | cut -f1 || true)
    # Let the compactor read what the load left (sealed segments only: the open ones seal at
    # shutdown and are compacted then, outside these figures).
    start_ms=$(date +%s%3N)
    h=("${h1[@]}")
    while [ "${h[1]:-0}" -gt 0 ] && [ $(( $(date +%s%3N) - start_ms )) -lt $((CATCH_UP * 1000)) ]; do
      sleep 0.5
      read -r -a h <<<"$(health)"
    done
    catchup_ms=$(( $(date +%s%3N) - start_ms ))
    [ "${h[1]:-0}" -gt 0 ] && log "round $round $target $scenario: compactor still ${h[1]} segments behind after ${CATCH_UP}s"
    read -r -a t2 <<<"$(threads_us)"
    stop_target
    local w=$((t1[1] - t0[1])) c=$((t1[2] - t0[2])) s=$((t1[3] - t0[3]))
    local o=$(( (t1[0] - t0[0]) - w - c - s ))
    local cu_c=$((t2[2] - t1[2])) cu_o=$(( (t2[0] - t1[0]) - (t2[1] - t1[1]) - (t2[2] - t1[2]) ))
    local raw file forced flushes flushed rpf
    raw=$(sed -n 's/.*compactor: [0-9]* segments, [0-9]* records, \([0-9]*\) bytes into [0-9]* bytes.*/\1/p' "$SERVER_LOG" | head -n1)
    file=$(sed -n 's/.*compactor: [0-9]* segments, [0-9]* records, [0-9]* bytes into \([0-9]*\) bytes.*/\1/p' "$SERVER_LOG" | head -n1)
    forced=$(log_num 'retired, ' "$SERVER_LOG")
    flushes=$(sed -n 's/.*worker [0-9]*: \([0-9]*\) group commits for [0-9]* records.*/\1/p' "$SERVER_LOG" | awk '{s+=$1} END {print s+0}')
    flushed=$(sed -n 's/.*worker [0-9]*: [0-9]* group commits for \([0-9]*\) records.*/\1/p' "$SERVER_LOG" | awk '{s+=$1} END {print s+0}')
    rpf=$(awk -v f="$flushes" -v r="$flushed" 'BEGIN { if (f > 0) printf "%.2f", r / f; else print 0 }')
    [ -n "$raw" ] || log "round $round $target $scenario: no compactor summary in $SERVER_LOG"
    extra="$w $c $s $o $cu_c $cu_o $catchup_ms ${h1[0]:-0} ${raw:-0} ${file:-0} $forced $rpf ${du_end:-0}"
  else
    run_load "$scenario"
    stop_target
  fi
  echo "$round $target $scenario $LOAD_N $LOAD_DUR $LOAD_BYTES $LOAD_CPU $LOAD_P50 $LOAD_P99 $LOAD_ERRS $LOAD_HWM $extra" \
    | tr ' ' '\t' >>"$TMP/results.tsv"
  log "round $round $target $scenario: $(awk -v n="$LOAD_N" -v d="$LOAD_DUR" 'BEGIN { r = 0; if (d > 0) r = n / d * 1e6; printf "%.0f req/s", r }'), errors $LOAD_ERRS$(is_ingest "$target" && echo ", compactor lag at the end $((${h1[0]:-0} >> 20)) MiB, caught up in ${catchup_ms} ms")"
}

scenarios_of() {
  if [ "$1" = ingest-fsync ]; then echo "$FSYNC_SCENARIOS"; else echo "$SCENARIOS"; fi
}

# --- rounds ---------------------------------------------------------------------------------------
log "$ROUNDS round(s) of ${DURATION}s runs; targets: $TARGETS; machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do
    for scenario in $(scenarios_of "$target"); do
      run_scenario "$round" "$target" "$scenario"
    done
  done
done

# --- tables of medians, goal checks ---------------------------------------------------------------
python3 "$HERE/compare-report.py" "$TMP/results.tsv"

# --- replay-ingest's own goals ----------------------------------------------------------------
if [ "$EXTRAS" = 1 ] && [[ " $TARGETS " == *" ingest "* ]]; then
  SAT=$(cat "$TMP/results.tsv.ingest-mix-rps" 2>/dev/null || echo 0)
  echo
  echo "replay-ingest goals (one run each, fresh server):"
  if [ "${SAT:-0}" -gt 0 ]; then
    start_target ingest open
    HALF=$((SAT / 2))
    curl -s "http://127.0.0.1:$ADMIN_PORT_INGEST/metrics" >"$TMP/open-loop.metrics.before" || true
    out=$("$BENCH_BIN" mix --url "http://127.0.0.1:$PORT" -c 64 -t 1 -d "${DURATION}s" --rate "$HALF" \
          --server-pid "$SERVER_PID" --project-key "$PROJECT_KEY" 2>"$TMP/logs/open-loop.log" | grep '^BENCHSTAT')
    curl -s "http://127.0.0.1:$ADMIN_PORT_INGEST/metrics" >"$TMP/open-loop.metrics.after" || true
    echo "- open loop, tracker mix at $HALF req/s (half of the closed-loop median $SAT): p50 $(echo "$out" | kv p50_us) µs, p99 $(echo "$out" | kv p99_us) µs, p99.9 $(echo "$out" | kv p999_us) µs, max $(echo "$out" | kv max_us) µs, answered $(echo "$out" | kv requests), errors $(( $(echo "$out" | kv err_status) + $(echo "$out" | kv err_io) )), backlog at end $(echo "$out" | kv backlog) (goal: p99 <= 1000 µs)"
    # What of that tail is the client's and what the node's: the client's lateness (intended
    # send to its send) is inside every latency above; the node's histogram times head to answer.
    echo "  the client sent 1% of its requests $(echo "$out" | kv late_p99_us) µs or more late (p99.9 $(echo "$out" | kv late_p999_us) µs); the node's own time, head to answer: $(node_tail "$TMP/open-loop.metrics.before" "$TMP/open-loop.metrics.after")"
    stop_target
  fi
  start_target ingest idle
  out=$("$BENCH_BIN" idle --url "http://127.0.0.1:$PORT" -c 10000 --hold 5s --server-pid "$SERVER_PID" \
        --token "$TOKEN" 2>"$TMP/logs/idle.log" | grep '^BENCHSTAT')
  echo "- idle: $(echo "$out" | kv idle_alive) of $(echo "$out" | kv idle_opened) keep-alive connections held, server RSS $(( $(echo "$out" | kv server_rss_kib) / 1024 )) MiB (before: $(( $(echo "$out" | kv server_rss_before_kib) / 1024 )) MiB) (goal: 10,000 in <= 64 MiB)"
  stop_target
  if [ "$ROUNDS" -gt 1 ]; then
    start_target ingest long
    out=$("$BENCH_BIN" fixed --size 8k --token "$TOKEN" --url "http://127.0.0.1:$PORT" -c 64 -d "$((DURATION * 3))s" \
          --server-pid "$SERVER_PID" 2>"$TMP/logs/long.log" | grep '^BENCHSTAT')
    short=$(awk -F'\t' '$2=="ingest" && $3=="wrk-8k" {print $11}' "$TMP/results.tsv" | sort -n | tail -n1)
    echo "- peak RSS, fixed 8 KiB closed loop: $(( $(echo "$out" | kv server_hwm_kib) / 1024 )) MiB after $((DURATION * 3)) s vs $(( ${short:-0} / 1024 )) MiB (largest) after ${DURATION} s runs (goal: no growth with run length)"
    stop_target
  fi
fi
