#!/usr/bin/env bash
# E2EE in the browser: build the wasm module on a fresh machine and run its Node smoke
# test (the MLS key layer end to end with three devices: groups, Add and Remove, frames
# under the epoch keys, chat, pins, safety codes, and the refusals a malicious server
# runs into).
set -euo pipefail
cd "$(dirname "$0")/../.."

rustup target add wasm32-unknown-unknown >/dev/null

# The CLI must match the wasm-bindgen crate version exactly; read it from the manifest.
want=$(sed -n 's/^wasm-bindgen = "=\([0-9.]*\)".*/\1/p' e2ee/wasm/Cargo.toml)
[ -n "$want" ] || { echo "cannot read the pinned wasm-bindgen version"; exit 1; }
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    echo "installing wasm-bindgen-cli $want (found: ${have:-none}); takes a few minutes"
    cargo install wasm-bindgen-cli --version "$want"
fi

command -v node >/dev/null 2>&1 || { echo "node is required for the wasm smoke test"; exit 1; }

scripts/build-wasm
node e2ee/wasm/tests/smoke.mjs crates/web/static/pkg
