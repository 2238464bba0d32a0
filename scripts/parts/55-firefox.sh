#!/usr/bin/env bash
# Firefox and Chromium in one consultation, against a server started with the default
# media address.
#
# Firefox gathers no loopback ICE candidates, so an SFU advertising 127.0.0.1 gives a
# Firefox user on the same machine no media. `confide serve` therefore puts the SFU on
# the address its default route leaves from when --media-bind is not given. This part
# proves that default on a network the test makes and tears down: a namespace holding
# loopback and one veth pair (its default route points into the pair, whose far end has
# no address and lives in the same namespace, so nothing can leave it). The server and
# both browsers run inside; Debian's firefox-esr is driven over WebDriver BiDi by
# puppeteer-core, Chromium by playwright-core. Two consultations: a Chromium doctor with
# a Firefox patient, then a Firefox doctor with a Chromium patient.
#
# Environment: CHROMIUM, FIREFOX (default /usr/bin/firefox-esr), CONFIDE_BIN (as in
# 50-browser.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '\n--> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

export FIREFOX=${FIREFOX:-/usr/bin/firefox-esr}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
missing=()
[ -x "$FIREFOX" ] || missing+=(firefox-esr)
[ -x "$CHROMIUM" ] || missing+=(chromium)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" fonts-dejavu-core >/dev/null
fi

log "npm ci (crates/web/tests)"
(cd crates/web/tests && npm ci --no-audit --no-fund --loglevel=error)

# The same server build as the Chromium part (same features, so cargo has nothing to
# redo), and the wasm module that part built.
[ -f crates/web/static/pkg/confide_e2ee_wasm_bg.wasm ] || scripts/build-wasm
features=()
if grep -Eq '^[[:space:]]*tap[[:space:]]*=' crates/server/Cargo.toml; then features=(--features tap); fi
if [ -n "${CONFIDE_BIN:-}" ]; then
    bin=$CONFIDE_BIN
else
    cargo build -q -p confide-server "${features[@]}"
    bin="${CARGO_TARGET_DIR:-target}/debug/confide"
fi
bin=$(realpath "$bin")

ns="confide-ff-$$"
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        as_root kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    as_root ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

log "network namespace $ns: loopback and a veth pair, 10.77.0.1/24"
as_root ip netns add "$ns"
as_root ip -n "$ns" link set lo up
as_root ip -n "$ns" link add ffv0 type veth peer name ffv1
as_root ip -n "$ns" addr add 10.77.0.1/24 dev ffv0
as_root ip -n "$ns" link set ffv0 up
as_root ip -n "$ns" link set ffv1 up
as_root ip -n "$ns" route add default via 10.77.0.2 dev ffv0
inns() { as_root ip netns exec "$ns" env "PATH=$PATH" "HOME=${HOME:-/root}" "$@"; }

data="$work/data"
mkdir -p "$data" target/browser
export CONFIDE_DATA_DIR="$data"
log "seeding the demo clinic (two appointments)"
"$bin" demo --json > "$work/demo1.json"
"$bin" demo --json > "$work/demo2.json"

port=18443
log "starting confide in $ns on 127.0.0.1:$port, media address left to its default"
inns env CONFIDE_DATA_DIR="$data" RUST_LOG=info "$bin" serve --bind "127.0.0.1:$port" \
    --static-dir crates/web/static > target/browser/firefox-server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
    if inns curl -skf "https://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
    kill -0 "$server_pid" 2>/dev/null || { cat target/browser/firefox-server.log; exit 1; }
    sleep 0.5
done
inns curl -skf "https://127.0.0.1:$port/healthz" >/dev/null
# The default must have chosen the namespace's routable address, not loopback.
grep -q "media: SFU on the default route's address.*10.77.0.1" target/browser/firefox-server.log \
    || { echo "the SFU did not default to the routable address:"; cat target/browser/firefox-server.log; exit 1; }

log "node --test firefox.test.mjs (inside $ns)"
set +e
inns env CONFIDE_BASE_URL="https://127.0.0.1:$port" CONFIDE_DEMO_JSON="$work/demo1.json" \
    CONFIDE_DEMO2_JSON="$work/demo2.json" CHROMIUM="$CHROMIUM" FIREFOX="$FIREFOX" \
    bash -c 'cd crates/web/tests && node --test --test-concurrency=1 firefox.test.mjs' \
    2>&1 | tee target/browser/firefox-node-test.log
status=${PIPESTATUS[0]}
set -e
pass=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' target/browser/firefox-node-test.log | tail -n1)
fail=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' target/browser/firefox-node-test.log | tail -n1)
echo
echo "firefox: ${pass:-0} passed, ${fail:-1} failed"
[ "$status" = 0 ] || tail -n 30 target/browser/firefox-server.log
exit "$status"
