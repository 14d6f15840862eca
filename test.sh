#!/usr/bin/env bash
# The README's test command: installs what the test suite needs beyond the Rust toolchain when it
# is missing, then runs `cargo test --locked` with any arguments given (`./test.sh --test http`).
#
# - apt packages, only when one is missing (apt-get update runs once, first): Chromium for the
#   end-to-end suite (tests/e2e_browser.rs; or point CHROMIUM at another build), Node.js and npm
#   when there is no npm, redis-server, postgresql and haproxy for tests that start real
#   servers, and systemd for the unit and socket-activation tests. As root it installs them;
#   otherwise it stops and prints the apt-get line to run.
# - the npm packages pinned in e2e/package-lock.json (the real tracker and playwright-core), when
#   e2e/node_modules is missing or older than the lock file, so that reruns stay quick.
set -euo pipefail
cd "$(dirname "$0")"

command -v cargo >/dev/null || {
  echo "test.sh: needs the Rust toolchain (cargo), e.g. from https://rustup.rs" >&2
  exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

wanted=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || wanted+=(chromium)
have npm || wanted+=(nodejs npm)
have redis-server || wanted+=(redis-server)
# Debian keeps the server binaries out of PATH, in /usr/lib/postgresql/<version>/bin.
have postgres || compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || wanted+=(postgresql)
have haproxy || wanted+=(haproxy)
# systemd-analyze verify and systemd-socket-activate, for tests/systemd.rs.
have systemd-analyze && have systemd-socket-activate || wanted+=(systemd)

if [ "${#wanted[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: the tests need ${wanted[*]}; install them as root, then run ./test.sh again:" >&2
    echo "  apt-get update && apt-get install -y ${wanted[*]}" >&2
    exit 1
  fi
  echo "test.sh: installing ${wanted[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${wanted[@]}" >/dev/null
fi

# playwright-core needs Node.js 20 or later (Debian 12's own nodejs is 18: use NodeSource's).
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "test.sh: the end-to-end tests need Node.js 20 or later, found $(node --version)" >&2
  exit 1
fi

# npm writes node_modules/.package-lock.json last, so an interrupted install is redone too.
installed=e2e/node_modules/.package-lock.json
if [ ! -e "$installed" ] || [ e2e/package-lock.json -nt "$installed" ]; then
  echo "test.sh: npm ci in e2e/" >&2
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
fi

exec cargo test --locked "$@"
