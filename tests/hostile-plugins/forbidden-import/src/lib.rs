//! A reward plugin that imports WASI's `random_get`, which the sandbox never offers: loading it
//! must fail with the import's name, before any of its code runs.

use triad_plugin_sdk::prelude::*;

#[derive(Default, Deserialize)]
struct ForbiddenImport {}

impl Plugin for ForbiddenImport {}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

#[cfg(target_arch = "wasm32")]
fn random_byte() -> u8 {
    let mut byte = 0u8;
    // SAFETY: the import would write one byte into `byte`; it never runs, since the host refuses
    // the module at load time.
    unsafe { random_get(&mut byte, 1) };
    byte
}

#[cfg(not(target_arch = "wasm32"))]
fn random_byte() -> u8 {
    4
}

impl Reward for ForbiddenImport {
    fn score(&mut self, _episode: &Episode) -> Result<f64, String> {
        Ok(random_byte() as f64)
    }
}

export_reward!(ForbiddenImport);
