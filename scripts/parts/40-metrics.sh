#!/usr/bin/env bash
# Metrics: scripts/test installs Debian's `prometheus` (prometheus + promtool) before
# `cargo test`, where crates/server/tests/metrics.rs uses them. This part only confirms
# both are there, so a machine set up by hand fails loudly instead of skipping.
set -euo pipefail
promtool --version >/dev/null
prometheus --version >/dev/null 2>&1
echo "metrics tools: 2 passed, 0 failed"
