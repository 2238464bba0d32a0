// Loads the wasm build of confide-e2ee (crates/web/static/pkg/, built by
// scripts/build-wasm; its JS API is documented in e2ee/wasm/src/lib.rs).

import init, * as pkg from '../pkg/confide_e2ee_wasm.js';

let loaded = null;

/** Instantiate the module once; resolves to its exports. */
export function loadWasm() {
  if (!loaded) {
    loaded = init({ module_or_path: new URL('../pkg/confide_e2ee_wasm_bg.wasm', import.meta.url) })
      .then(() => pkg);
  }
  return loaded;
}
