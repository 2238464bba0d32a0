#!/usr/bin/env bash
# Browser tests of the clinic around the call: account activation and the person's own
# account, the front desk (schedule, patients, waiting rooms) and administration
# (accounts, sessions, audit trail, break-glass, settings), each page scanned for
# accessibility and photographed at desktop and phone size.
#
# Runs crates/web/tests/clinic-*.test.mjs in headless Chromium against its own throwaway
# server seeded with the demo clinic (its admin and staff accounts start the flows; the
# tests create every other account through the pages). Same environment as
# 50-browser.sh (CHROMIUM, CONFIDE_BIN, CONFIDE_REQUIRE_TAP); CONFIDE_BIN is passed on to
# the tests, which run `confide audit check` on the package they download.
# Screenshots, scan results and logs go to target/browser/ (clinic-*).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=lib/browser.sh
. scripts/parts/lib/browser.sh
browser_setup

log "seeding the demo clinic"
"$bin" demo --json > "$work/demo.json"
browser_start_server target/browser/clinic-server.log

tests=()
for t in crates/web/tests/clinic-*.test.mjs; do
    [ -e "$t" ] && tests+=("$(basename "$t")")
done
if [ ${#tests[@]} -eq 0 ]; then
    echo "no clinic browser tests found"
    exit 1
fi

log "node --test ${tests[*]}"
set +e
(
    cd crates/web/tests
    # One file at a time: they share the demo admin, whose TOTP codes work once each.
    CONFIDE_BASE_URL="https://127.0.0.1:$port" CONFIDE_DEMO_JSON="$work/demo.json" \
        CONFIDE_DATA_DIR="$CONFIDE_DATA_DIR" \
        node --test --test-concurrency=1 "${tests[@]}"
) 2>&1 | tee target/browser/clinic-node-test.log
status=${PIPESTATUS[0]}
set -e
browser_report target/browser/clinic-node-test.log "$status" target/browser/clinic-server.log
if [ "$status" = 0 ]; then
    # Names the front desk test gives the doctor and the patient it creates.
    browser_scan_log target/browser/clinic-server.log "$work/demo.json" \
        "Nadia Okafor" "Brontë-Lindqvist" || status=1
fi
exit "$status"
