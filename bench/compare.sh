#!/usr/bin/env bash
# Side-by-side comparison: replay-ingest ("os" durability) against nginx (the HTTP near-limit)
# and the Go reference (what OpenReplay users run today), on this machine, in one invocation.
#
#   bench/compare.sh [--quick] [--rounds N] [--duration SECONDS] [--targets "ingest nginx refgo"]
#                    [--no-extras] [--keep DIR]
#
# Each round starts every target in turn (A B C A B C ...), runs the same scenarios against it
# (wrk -t1 -c64 with fixed 1/8/64 KiB bodies through ../shared/peers/wrk/post.lua, then our
# generator's tracker mix at -c64), and stops it. The server's CPU time (utime+stime of its
# process tree, from /proc) is sampled around every run. At the end: a table of medians with
# ratios against nginx and against the Go reference, then replay-ingest's own goals (open loop
# at half its saturation rate, 10,000 idle connections, peak RSS against run length).
#
# Loopback only. Every process this script starts is stopped by its pid on exit; the temporary
# directory (server data, bodies, logs) is removed unless --keep is given.
# Missing tools (wrk, nginx and its echo/lua modules, Go) are installed with apt-get when run as
# root; otherwise the script says which packages to install.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PEERS=${PEERS:-$(cd "$ROOT/.." && pwd)/shared/peers}
ROUNDS=3
DURATION=10
TARGETS="ingest nginx refgo"
EXTRAS=1
KEEP=""
SECRET=bench-secret
PORT_NGINX=18080   # fixed by ../shared/peers/nginx/nginx.conf
PORT_REFGO=18081
PORT_INGEST=18082

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROUNDS=1; DURATION=3 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --no-extras) EXTRAS=0 ;;
    --keep) KEEP=$2; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
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
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
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

start_target() {
  local target=$1 round=$2
  case "$target" in
    ingest)
      local data=$TMP/ingest-data-$round
      # A retention limit like ref-go's -rotate 512MB, so that a 64 KiB run cannot fill the disk;
      # the node reuses the files it retires.
      TOKEN_SECRET=$SECRET "$INGEST_BIN" serve --listen "127.0.0.1:$PORT_INGEST" --data-dir "$data" \
        --retain-bytes $((512 << 20)) >"$TMP/logs/ingest-$round.log" 2>&1 &
      SERVER_PID=$!; PIDS+=("$SERVER_PID"); PORT=$PORT_INGEST
      wait_port "$PORT"
      for _ in $(seq 1 50); do [ -s "$data/demo-project-key" ] && break; sleep 0.1; done
      PROJECT_KEY=$(cat "$data/demo-project-key"); MIX_TOKEN_ARGS=()
      ;;
    nginx)
      local dir=$TMP/nginx-$round
      mkdir -p "$dir/logs" "$dir/run" "$dir/tmp"
      # The peer config plus a canned start answer, so that the tracker mix can run against it
      # (nginx still checks no token and stores nothing).
      awk '/location \/ \{/ && !done {
             print "        location = /v1/web/start {";
             print "            default_type application/json;";
             print "            return 200 '"'"'{\"token\":\"nginx\",\"sessionID\":\"1\",\"userUUID\":\"u\",\"delay\":0,\"beaconSizeLimit\":1000000}'"'"';";
             print "        }"; done = 1 }
           { print }' "$PEERS/nginx/nginx.conf" >"$dir/nginx.conf"
      nginx -p "$dir/" -c nginx.conf -e logs/error.log -g 'daemon off;' >"$TMP/logs/nginx-$round.log" 2>&1 &
      SERVER_PID=$!; PIDS+=("$SERVER_PID"); PORT=$PORT_NGINX
      wait_port "$PORT"; PROJECT_KEY=bench; MIX_TOKEN_ARGS=()
      ;;
    refgo)
      mkdir -p "$TMP/refgo-$round"
      "$TMP/ref-go" -addr "127.0.0.1:$PORT_REFGO" -secret "$SECRET" -out "$TMP/refgo-$round/refgo.log" \
        >"$TMP/logs/refgo-$round.log" 2>&1 &
      SERVER_PID=$!; PIDS+=("$SERVER_PID"); PORT=$PORT_REFGO
      wait_port "$PORT"; PROJECT_KEY=bench; MIX_TOKEN_ARGS=()
      ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
}

stop_target() {
  stop_pid "$SERVER_PID"
  local keep=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" != "$SERVER_PID" ] && keep+=("$pid"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
  rm -rf "$TMP"/ingest-data-* "$TMP"/refgo-*/refgo.log
}

# The value of KEY in a "WRKSTAT/BENCHSTAT/PROCSTAT k=v ..." line; 0 when absent.
kv() { local v; v=$(tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1); echo "${v:-0}"; }

proc_cpu_us() { "$BENCH_BIN" proc --pid "$SERVER_PID" | kv cpu_us; }

# results.tsv: round target scenario requests duration_us body_bytes server_cpu_us p50_us p99_us errors hwm_kib
echo -e "round\ttarget\tscenario\trequests\tduration_us\tbody_bytes\tserver_cpu_us\tp50_us\tp99_us\terrors\thwm_kib" >"$TMP/results.tsv"

run_wrk() {
  local round=$1 target=$2 size=$3 bytes
  bytes=$(stat -c %s "$TMP/body-$size.bin")
  local cpu0 cpu1 out
  cpu0=$(proc_cpu_us)
  out=$(BODY_FILE="$TMP/body-$size.bin" TOKEN=$TOKEN wrk -t1 -c64 -d"${DURATION}s" --latency \
        -s "$PEERS/wrk/post.lua" "http://127.0.0.1:$PORT/v1/web/i" 2>&1 | grep '^WRKSTAT' || true)
  cpu1=$(proc_cpu_us)
  local hwm; hwm=$("$BENCH_BIN" proc --pid "$SERVER_PID" | kv hwm_kib)
  local n dur errs
  n=$(echo "$out" | kv requests); dur=$(echo "$out" | kv duration_us)
  errs=$(( $(echo "$out" | kv err_status) + $(echo "$out" | kv err_connect) + $(echo "$out" | kv err_read) \
         + $(echo "$out" | kv err_write) + $(echo "$out" | kv err_timeout) ))
  echo -e "$round\t$target\twrk-$size\t$n\t$dur\t$((n * bytes))\t$((cpu1 - cpu0))\t$(echo "$out" | kv p50_us)\t$(echo "$out" | kv p99_us)\t$errs\t$hwm" >>"$TMP/results.tsv"
  log "round $round $target wrk-$size: $(awk -v n="$n" -v d="$dur" 'BEGIN{printf "%.0f req/s", n/d*1e6}'), errors $errs"
}

run_mix() {
  local round=$1 target=$2 out
  out=$("$BENCH_BIN" mix --url "http://127.0.0.1:$PORT" -c 64 -t 1 -d "${DURATION}s" \
        --server-pid "$SERVER_PID" --project-key "$PROJECT_KEY" "${MIX_TOKEN_ARGS[@]+"${MIX_TOKEN_ARGS[@]}"}" \
        2>>"$TMP/logs/mix-$target-$round.log" | grep '^BENCHSTAT')
  local n; n=$(echo "$out" | kv requests)
  local errs=$(( $(echo "$out" | kv err_status) + $(echo "$out" | kv err_io) ))
  echo -e "$round\t$target\tmix\t$n\t$(echo "$out" | kv duration_us)\t$(echo "$out" | kv body_bytes)\t$(echo "$out" | kv server_cpu_us)\t$(echo "$out" | kv p50_us)\t$(echo "$out" | kv p99_us)\t$errs\t$(echo "$out" | kv server_hwm_kib)" >>"$TMP/results.tsv"
  log "round $round $target mix: $(awk -v n="$n" -v d="$(echo "$out" | kv duration_us)" 'BEGIN{printf "%.0f req/s", n/d*1e6}'), errors $errs"
}

# --- rounds ---------------------------------------------------------------------------------------
log "$ROUNDS round(s) of ${DURATION}s runs; targets: $TARGETS; machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)"
for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do
    start_target "$target" "$round"
    for size in 1k 8k 64k; do run_wrk "$round" "$target" "$size"; done
    run_mix "$round" "$target"
    stop_target
  done
done

# --- table of medians -------------------------------------------------------------------------------
python3 - "$TMP/results.tsv" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def num(r, k):
    try: return float(r[k])
    except (ValueError, KeyError): return 0.0
agg = {}
for r in rows:
    n, dur = num(r, "requests"), num(r, "duration_us")
    if n <= 0 or dur <= 0:
        continue
    m = agg.setdefault((r["target"], r["scenario"]), {"rps": [], "mbs": [], "cpu": [], "p99": [], "err": [], "hwm": []})
    m["rps"].append(n / dur * 1e6)
    m["mbs"].append(num(r, "body_bytes") / dur)
    m["cpu"].append(num(r, "server_cpu_us") / n)
    m["p99"].append(num(r, "p99_us"))
    m["err"].append(num(r, "errors"))
    m["hwm"].append(num(r, "hwm_kib") / 1024)
med = {k: {f: statistics.median(v) for f, v in m.items()} | {"n": len(m["rps"])} for k, m in agg.items()}
targets = []
for r in rows:
    if r["target"] not in targets: targets.append(r["target"])
scenarios = ["wrk-1k", "wrk-8k", "wrk-64k", "mix"]
print("\nMedians (n = rounds); CPU = server utime+stime per answered request; ratios are replay-ingest / peer.\n")
print("| scenario | target | req/s | MB/s | server CPU µs/req | p99 µs | errors | peak RSS MiB | n |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for s in scenarios:
    for t in targets:
        m = med.get((t, s))
        if m:
            print(f"| {s} | {t} | {m['rps']:.0f} | {m['mbs']:.1f} | {m['cpu']:.1f} | {m['p99']:.0f} | {m['err']:.0f} | {m['hwm']:.1f} | {m['n']} |")
if "ingest" in targets:
    print("\n| scenario | req/s vs nginx | CPU/req vs nginx | MB/s vs nginx | req/s vs ref-go | CPU/req vs ref-go |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in scenarios:
        a = med.get(("ingest", s))
        if not a: continue
        def ratio(peer, f):
            b = med.get((peer, s))
            return f"{a[f] / b[f]:.2f}x" if b and b[f] else "-"
        print(f"| {s} | {ratio('nginx','rps')} | {ratio('nginx','cpu')} | {ratio('nginx','mbs')} | {ratio('refgo','rps')} | {ratio('refgo','cpu')} |")
    with open(sys.argv[1] + ".ingest-mix-rps", "w") as f:
        m = med.get(("ingest", "mix"))
        f.write(f"{m['rps']:.0f}\n" if m else "0\n")
EOF

# --- replay-ingest's own goals ----------------------------------------------------------------
if [ "$EXTRAS" = 1 ] && [[ " $TARGETS " == *" ingest "* ]]; then
  SAT=$(cat "$TMP/results.tsv.ingest-mix-rps" 2>/dev/null || echo 0)
  echo
  echo "replay-ingest goals (one run each, fresh server):"
  if [ "${SAT:-0}" -gt 0 ]; then
    start_target ingest open
    HALF=$((SAT / 2))
    out=$("$BENCH_BIN" mix --url "http://127.0.0.1:$PORT" -c 64 -t 1 -d "${DURATION}s" --rate "$HALF" \
          --server-pid "$SERVER_PID" --project-key "$PROJECT_KEY" 2>"$TMP/logs/open-loop.log" | grep '^BENCHSTAT')
    echo "- open loop, tracker mix at $HALF req/s (half of the closed-loop median $SAT): p50 $(echo "$out" | kv p50_us) µs, p99 $(echo "$out" | kv p99_us) µs, p99.9 $(echo "$out" | kv p999_us) µs, max $(echo "$out" | kv max_us) µs, answered $(echo "$out" | kv requests), errors $(( $(echo "$out" | kv err_status) + $(echo "$out" | kv err_io) )), backlog at end $(echo "$out" | kv backlog) (goal: p99 <= 1000 µs)"
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
