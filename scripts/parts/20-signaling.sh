#!/usr/bin/env bash
# Signaling smoke test of the real binary: `confide demo --json` gives credentials,
# `confide serve --demo` answers on HTTPS (health, readiness, a patient login with the
# demo password, a doctor login with a TOTP code computed from the printed secret) and
# prints the clinicians' TOTP QR codes (never into the JSON); the demo patient has not
# consented yet (the browser demo shows the consent step).
#
# Environment: CONFIDE_BIN  use this `confide` binary instead of building a debug one
# (e.g. the release binary scripts/serve-demo built).
# The Rust test suites (store on SQLite and PostgreSQL, TLS WebSocket flows, refusals,
# malformed input) run in `cargo test`; this only checks the binary as shipped.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v curl >/dev/null || { echo "curl is required"; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }

# The store suite's PostgreSQL run needs this; say so plainly if it is missing.
url=${CONFIDE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
if command -v psql >/dev/null; then
    psql "$url" -Atc 'select 1' >/dev/null || { echo "PostgreSQL at $url does not answer"; exit 1; }
fi

if [ -n "${CONFIDE_BIN:-}" ]; then
    bin=$CONFIDE_BIN
else
    cargo build -q -p confide-server --bin confide
    bin=${CARGO_TARGET_DIR:-target}/debug/confide
fi
work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() {
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $*"; fi
}

"$bin" demo --json --data-dir "$work/data" > "$work/demo.json"
check python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["appointment_id"] and all(a["password"] for a in d["accounts"])' "$work/demo.json"
# Standard output is a file here: no QR code (and no colour codes) in the JSON.
check python3 -c 'import sys; t=open(sys.argv[1], encoding="utf-8").read(); assert "\u2588" not in t and "\x1b" not in t' "$work/demo.json"

"$bin" serve --demo --data-dir "$work/data" --bind 127.0.0.1:0 --media-bind 127.0.0.1 > "$work/serve.out" 2> "$work/serve.err" &
server_pid=$!
port=
for _ in $(seq 1 100); do
    port=$(sed -n 's#^Confide listening on https://127.0.0.1:\([0-9]*\)$#\1#p' "$work/serve.out" | head -n1)
    [ -n "$port" ] && break
    sleep 0.2
done
[ -n "$port" ] || { cat "$work/serve.err"; echo "server did not start"; exit 1; }
base="https://127.0.0.1:$port"
cert="$work/data/tls/cert.pem"

check test "$(curl -sS --cacert "$cert" "$base/healthz")" = ok
check test "$(curl -sS --cacert "$cert" "$base/readyz")" = ready
check grep -q "TLS certificate SHA-256 fingerprint" "$work/serve.out"
# `--demo` draws each clinician's TOTP enrolment as a QR code (half blocks), also when
# standard output is not a terminal (then without colour codes).
check test "$(grep -c 'scan with an authenticator app' "$work/serve.out")" -ge 1
check grep -qF $'\xe2\x96\x88' "$work/serve.out"
check test "$(grep -cF $'\x1b' "$work/serve.out")" = 0

login() {
    curl -sS --cacert "$cert" -H 'content-type: application/json' -d "$1" "$base/api/login"
}
out=$(login '{"username":"patient","password":"demo-patient-password"}')
check python3 -c 'import json,sys; assert json.loads(sys.argv[1])["role"] == "patient"' "$out"
# The demo patient has not consented: the first consultation asks.
ptoken=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["token"])' "$out")
consent=$(curl -sS --cacert "$cert" -H "authorization: Bearer $ptoken" "$base/api/consent")
check python3 -c 'import json,sys; assert json.loads(sys.argv[1])["accepted"] is False' "$consent"

# RFC 6238 from the printed secret, as a browser test would do it.
code=$(python3 - "$work/demo.json" <<'PY'
import base64, hashlib, hmac, json, struct, sys, time
d = json.load(open(sys.argv[1]))
secret = next(a["totp_secret"] for a in d["accounts"] if a["role"] == "doctor")
key = base64.b32decode(secret + "=" * (-len(secret) % 8))
mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
o = mac[-1] & 15
print("%06d" % ((struct.unpack(">I", mac[o:o + 4])[0] & 0x7FFFFFFF) % 1000000))
PY
)
out=$(login "{\"username\":\"doctor\",\"password\":\"demo-doctor-password\",\"totp\":\"$code\"}")
check python3 -c 'import json,sys; assert json.loads(sys.argv[1])["role"] == "doctor"' "$out"
out=$(login '{"username":"doctor","password":"wrong"}')
check python3 -c 'import json,sys; assert json.loads(sys.argv[1])["error"]["code"] == "invalid_credentials"' "$out"

echo "signaling smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
