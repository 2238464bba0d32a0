# Shared by the browser parts (sourced, not run): installs what a browser test needs,
# builds the wasm E2EE module and the server once, and starts a throwaway server.
#
# After `browser_setup`: $bin is the `confide` binary, $CONFIDE_REQUIRE_TAP is 0 or 1.
# `browser_start_server LOG [ARGS...]` starts `confide serve` on 127.0.0.1 with a fresh
# data directory under $work and sets $port and $server_pid; the EXIT trap stops it and
# removes $work. Environment: CHROMIUM, CONFIDE_BIN, CONFIDE_REQUIRE_TAP (see 50-browser.sh).

log() { printf '\n--> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

browser_setup() {
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
    local want have
    want=$(sed -n 's/^wasm-bindgen = "=\([0-9.]*\)".*/\1/p' e2ee/wasm/Cargo.toml)
    have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
    if [ -n "$want" ] && [ "$have" != "$want" ]; then
        cargo install wasm-bindgen-cli --version "$want"
    fi
    scripts/build-wasm

    local features=()
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
    bin=$(realpath "$bin")
    export CONFIDE_BIN=$bin

    work=$(mktemp -d)
    server_pid=
    trap browser_cleanup EXIT
    mkdir -p "$work/data" target/browser
    export CONFIDE_DATA_DIR="$work/data"
}

browser_cleanup() {
    if [ -n "${server_pid:-}" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}

browser_start_server() {
    local server_log=$1
    shift
    port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
    log "starting confide on 127.0.0.1:$port"
    # The page's test hooks (`?test=1`) run only where the server allows them, and only a
    # test build (feature tap) can.
    local hooks=()
    if [ "$CONFIDE_REQUIRE_TAP" = 1 ]; then hooks=(--test-hooks); fi
    # No metrics listener: the browser tests do not read it, and its fixed port would
    # collide with another server running on this machine.
    "$bin" serve --bind "127.0.0.1:$port" --media-bind 127.0.0.1 --admin-bind off "${hooks[@]}" \
        --static-dir crates/web/static "$@" > "$server_log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 120); do
        if curl -skf "https://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "the server exited; its log:"; cat "$server_log"; exit 1
        fi
        sleep 0.5
    done
    curl -skf "https://127.0.0.1:$port/healthz" >/dev/null
}

# `browser_report NODE_LOG STATUS SERVER_LOG`: the pass/fail line scripts/test counts.
browser_report() {
    local node_log=$1 status=$2 server_log=$3 pass fail skip
    pass=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$node_log" | tail -n1)
    fail=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$node_log" | tail -n1)
    skip=$(sed -n 's/^# skipped \([0-9]*\)$/\1/p' "$node_log" | tail -n1)
    echo
    echo "browser: ${pass:-0} passed, ${fail:-1} failed, ${skip:-0} skipped"
    if [ "$status" != 0 ]; then
        echo "server log: $server_log (last lines below)"
        tail -n 30 "$server_log"
    fi
}

# `browser_scan_log LOG DEMO_JSON [TEXT...]`: fail if the server's log holds any secret
# or personal datum the tests used: the demo accounts' passwords, TOTP secrets, display
# names and dates of birth, each TEXT (chat lines and names the tests typed), or a bearer
# token. Usernames are not scanned: the demo's are common words ("doctor") that log
# targets and messages contain.
browser_scan_log() {
    local server_log=$1 demo_json=$2
    shift 2
    node -e '
const fs = require("fs");
const [logFile, demoFile, ...texts] = process.argv.slice(1);
const log = fs.readFileSync(logFile, "utf8");
const demo = JSON.parse(fs.readFileSync(demoFile, "utf8"));
const needles = [];
for (const a of demo.accounts) {
  for (const k of ["password", "totp_secret", "display_name", "date_of_birth"]) {
    if (a[k]) needles.push([`${a.username}.${k}`, a[k]]);
  }
}
for (const t of texts) needles.push(["typed text", t]);
needles.push(["a bearer token", "Bearer "]);
const found = needles.filter(([, v]) => log.includes(v)).map(([k]) => k);
const lines = log.split("\n").filter((l) => l.trim()).length;
if (found.length) {
  console.error(`the server log (${logFile}) holds: ${found.join(", ")}`);
  process.exit(1);
}
console.log(`server log scanned: ${lines} lines, none holds a password, TOTP secret, name, date of birth, typed text or token`);
' "$server_log" "$demo_json" "$@"
}
