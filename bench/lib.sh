# Shell helpers shared by bench/compare.sh and bench/soak.sh (sourced, not run).

# Stops one process started by the script: SIGTERM, up to WAIT_S seconds (default 5), SIGKILL.
stop_pid() {
  local pid=$1 wait_s=${2:-5}
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 $((wait_s * 10))); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# The compactor's lag and the disk budget from the node's /health/ready on $PORT:
# "lag_bytes lag_segments used_bytes budget_bytes full" (zeros when the node does not answer).
health() {
  curl -s -m 2 "http://127.0.0.1:$PORT/health/ready" 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    d = {}
c = [x for x in d.get("consumers", []) if x.get("name") == "compactor"] or [{}]
s = d.get("storage", {})
print(c[0].get("lag_bytes", 0), c[0].get("lag_segments", 0), s.get("used_bytes", 0), s.get("budget_bytes", 0), int(bool(s.get("full"))))' || true
}
