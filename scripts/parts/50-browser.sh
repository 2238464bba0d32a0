#!/usr/bin/env bash
# Browser end-to-end test: the browser client (crates/web) in headless Chromium against
# a real `confide` server, with fake camera and microphone.
#
# Steps: install Chromium and Node when missing, `npm ci` the pinned playwright-core,
# build the wasm E2EE module and the server, start the server on 127.0.0.1 with a
# throwaway data directory and the demo clinic (plus a second patient for the refusal
# check), run `node --test` in crates/web/tests, stop the server.
#
# Screenshots, console logs, the tap summary and the MLS timings measured in Chromium
# (mls-timings.json) go to target/browser/.
#
# Environment:
#   CHROMIUM             browser binary (default /usr/bin/chromium, Debian's package)
#   CONFIDE_BIN          use this `confide` binary instead of building one
#   CONFIDE_REQUIRE_TAP  1: fail if the server cannot record forwarded payloads;
#                        0: skip that check (and the media-path cut, same feature).
#                        Default: required when the server crate has a `tap` feature
#                        (the SFU forwarding path).
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '\n--> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
    log "installing Debian's chromium"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
    log "installing node"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

log "npm ci (crates/web/tests)"
(cd crates/web/tests && npm ci --no-audit --no-fund --loglevel=error)

log "building the wasm E2EE module"
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
    || rustup target add wasm32-unknown-unknown >/dev/null
want=$(sed -n 's/^wasm-bindgen = "=\([0-9.]*\)".*/\1/p' e2ee/wasm/Cargo.toml)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ -n "$want" ] && [ "$have" != "$want" ]; then
    cargo install wasm-bindgen-cli --version "$want"
fi
scripts/build-wasm

features=()
if [ -z "${CONFIDE_REQUIRE_TAP:-}" ]; then
    if grep -Eq '^[[:space:]]*tap[[:space:]]*=' crates/server/Cargo.toml; then
        CONFIDE_REQUIRE_TAP=1
    else
        CONFIDE_REQUIRE_TAP=0
    fi
fi
export CONFIDE_REQUIRE_TAP
if [ "$CONFIDE_REQUIRE_TAP" = 1 ]; then features=(--features tap); fi

if [ -n "${CONFIDE_BIN:-}" ]; then
    bin=$CONFIDE_BIN
else
    log "building the server ${features[*]}"
    cargo build -p confide-server "${features[@]}"
    bin="${CARGO_TARGET_DIR:-target}/debug/confide"
fi

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

data="$work/data"
mkdir -p "$data" target/browser
export CONFIDE_DATA_DIR="$data"

log "seeding the demo clinic"
"$bin" demo --json > "$work/demo.json"
other_password="other-patient-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
CONFIDE_NEW_PASSWORD="$other_password" "$bin" admin create-account \
    --username other-patient --role patient --display-name "Other Patient" >/dev/null
# The second patient is not part of the demo appointment: add it to the test's data.
node -e '
const fs = require("fs");
const [file, password] = process.argv.slice(1);
const d = JSON.parse(fs.readFileSync(file, "utf8"));
d.accounts.push({ key: "other_patient", username: "other-patient", password, role: "patient" });
fs.writeFileSync(file, JSON.stringify(d));
' "$work/demo.json" "$other_password"

port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
export CONFIDE_TAP_FILE="$work/tap.jsonl"
# Test-only network impairment (same feature as the tap): the test writes a participant
# id here to cut that participant's media path at the SFU.
export CONFIDE_IMPAIR_FILE="$work/impair"
: > "$CONFIDE_IMPAIR_FILE"
log "starting confide on 127.0.0.1:$port"
# The page's test hooks (`?test=1`) run only where the server allows them, and only a
# test build (feature tap) can.
hooks=()
if [ "$CONFIDE_REQUIRE_TAP" = 1 ]; then hooks=(--test-hooks); fi
"$bin" serve --bind "127.0.0.1:$port" --media-bind 127.0.0.1 "${hooks[@]}" --static-dir crates/web/static \
    > target/browser/server.log 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
    if curl -skf "https://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "the server exited; its log:"; cat target/browser/server.log; exit 1
    fi
    sleep 0.5
done
curl -skf "https://127.0.0.1:$port/healthz" >/dev/null
if [ "$CONFIDE_REQUIRE_TAP" = 1 ] && ! grep -q 'forwarding tap ON' target/browser/server.log; then
    echo "the server records no forwarded payloads: $bin was built without --features tap"
    exit 1
fi

log "node --test (crates/web/tests)"
set +e
(
    cd crates/web/tests
    CONFIDE_BASE_URL="https://127.0.0.1:$port" CONFIDE_DEMO_JSON="$work/demo.json" \
        node --test --test-concurrency=1 lib.test.mjs consultation.test.mjs
) 2>&1 | tee target/browser/node-test.log
status=${PIPESTATUS[0]}
set -e

pass=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' target/browser/node-test.log | tail -n1)
fail=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' target/browser/node-test.log | tail -n1)
skip=$(sed -n 's/^# skipped \([0-9]*\)$/\1/p' target/browser/node-test.log | tail -n1)
echo
echo "browser: ${pass:-0} passed, ${fail:-1} failed, ${skip:-0} skipped"
if [ "$status" != 0 ]; then
    echo "server log: target/browser/server.log (last lines below)"
    tail -n 30 target/browser/server.log
fi
exit "$status"
