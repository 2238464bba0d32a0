#!/usr/bin/env bash
# Browser end-to-end test: the browser client (crates/web) in headless Chromium against
# a real `confide` server, with fake camera and microphone.
#
# Steps: install Chromium and Node when missing, `npm ci` the pinned playwright-core,
# build the wasm E2EE module and the server, start the server on 127.0.0.1 with a
# throwaway data directory and the demo clinic (plus a second patient for the refusal
# check), run `node --test` in crates/web/tests (the helpers, the consultation, then
# every page of a consultation scanned for accessibility and photographed at 1280x800
# and 390x844), stop the server.
#
# Screenshots (`<page>-desktop.png`, `<page>-phone.png`), the accessibility findings
# (a11y-*.json), console logs, the tap summary and the MLS timings measured in Chromium
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
# shellcheck source=lib/browser.sh
. scripts/parts/lib/browser.sh
browser_setup

log "seeding the demo clinic"
"$bin" demo --json > "$work/demo.json"
other_password="second patient $(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
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

export CONFIDE_TAP_FILE="$work/tap.jsonl"
# Test-only network impairment (same feature as the tap): the test writes a participant
# id here to cut that participant's media path at the SFU.
export CONFIDE_IMPAIR_FILE="$work/impair"
: > "$CONFIDE_IMPAIR_FILE"
browser_start_server target/browser/server.log
if [ "$CONFIDE_REQUIRE_TAP" = 1 ] && ! grep -q 'forwarding tap ON' target/browser/server.log; then
    echo "the server records no forwarded payloads: $bin was built without --features tap"
    exit 1
fi

log "node --test (crates/web/tests)"
set +e
(
    cd crates/web/tests
    CONFIDE_BASE_URL="https://127.0.0.1:$port" CONFIDE_DEMO_JSON="$work/demo.json" \
        node --test --test-concurrency=1 lib.test.mjs ui.test.mjs consultation.test.mjs pages.test.mjs
) 2>&1 | tee target/browser/node-test.log
status=${PIPESTATUS[0]}
set -e
browser_report target/browser/node-test.log "$status" target/browser/server.log
if [ "$status" = 0 ]; then
    # The chat lines the test sends start with these words.
    browser_scan_log target/browser/server.log "$work/demo.json" \
        "Hello, can you hear me?" "the rash is better" "are you there?" || status=1
fi
exit "$status"
