//! The sandbox: one wasmtime engine per process, its epoch ticker, the limits applied to every
//! instance, and the caches of compiled plugins (in this process, and on disk across processes).
//!
//! Security model: a plugin gets nothing but `host.log`. No WASI is linked, so a plugin has no
//! files, sockets, environment, clock or randomness. Every call runs under a deadline enforced by
//! epoch interruption (a ticker thread bumps the engine's epoch; each call sets its deadline in
//! ticks), every store caps linear memory through `StoreLimits`, the engine caps the wasm stack,
//! and NaN canonicalization makes float results independent of the CPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, StoreLimits, StoreLimitsBuilder};

use super::bindings::{Host, Level, PluginKind};
use super::compiled_cache::CompiledCache;

/// How often the ticker advances the engine's epoch: the resolution of every deadline.
const TICK: Duration = Duration::from_millis(5);

/// Wasm stack cap for every instance: deep enough for real plugins, small enough that runaway
/// recursion is stopped quickly.
const MAX_WASM_STACK: usize = 512 * 1024;

/// Cap on the elements of each table of an instance. A table holds function references (a Rust
/// plugin's has its indirect-call targets, a few hundred), and its elements live outside linear
/// memory, so the memory cap does not bound them.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 16;

/// Limits applied to each plugin instance and call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Wall-clock budget of one call into the plugin.
    pub deadline: Duration,
    /// Cap on the instance's linear memory.
    pub memory_bytes: usize,
    /// Cap on the total size of the strings and arrays one call returns.
    pub max_output_bytes: usize,
    /// Largest number of records sent in one call; bigger batches are split.
    pub max_records_per_call: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(500),
            memory_bytes: 64 << 20,
            max_output_bytes: 16 << 20,
            max_records_per_call: 256,
        }
    }
}

impl Limits {
    /// The deadline expressed in epoch ticks (at least one).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        (self.deadline.as_micros() / TICK.as_micros()).max(1) as u64 + 1
    }
}

/// What each wasmtime `Store` carries: limits, the plugin's name for its log lines, and the last
/// error line it logged (a panic message arrives that way just before the trap).
pub(crate) struct StoreState {
    pub limits: StoreLimits,
    pub plugin: String,
    pub last_error: Option<String>,
    /// Lines this instance has logged, to cap them.
    logged: usize,
}

/// Log lines one instance may write: a plugin cannot flood the host's log.
pub const MAX_LOG_LINES: usize = 1000;

impl StoreState {
    pub fn new(plugin: &str, limits: &Limits) -> Self {
        StoreState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(MAX_TABLE_ELEMENTS)
                // Core instances hold no memory of their own (memories and tables are capped
                // below); a Python component made by componentize-py instantiates between 33 and
                // 64 of them (its libc, interpreter and adapter shims), a Rust plugin one or two.
                .instances(64)
                .tables(8)
                .memories(2)
                .trap_on_grow_failure(true)
                .build(),
            plugin: plugin.to_string(),
            last_error: None,
            logged: 0,
        }
    }
}

impl Host for StoreState {
    fn log(&mut self, level: Level, message: String) {
        // A plugin cannot flood the host's log, nor write to the terminal: lines are capped in
        // length and in number, control characters escaped.
        let message = super::error::printable(&message);
        if matches!(level, Level::Error) {
            self.last_error = Some(message.clone());
        }
        self.logged += 1;
        let plugin = &self.plugin;
        if self.logged > MAX_LOG_LINES {
            if self.logged == MAX_LOG_LINES + 1 {
                tracing::warn!(plugin, "logged {MAX_LOG_LINES} lines: its later lines are not shown");
            }
            return;
        }
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::debug!(plugin, "{message}"),
        }
    }
}

/// The process-wide wasmtime engine and compiled-component cache. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    on_disk: CompiledCache,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// The sandbox shared by the whole process, so each plugin compiles once.
    pub fn shared() -> Sandbox {
        static SHARED: OnceLock<Sandbox> = OnceLock::new();
        SHARED.get_or_init(|| Sandbox::new().expect("the wasmtime configuration is fixed and valid")).clone()
    }

    /// A new engine with the sandbox's fixed configuration and its own epoch ticker.
    pub fn new() -> wasmtime::Result<Sandbox> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .cranelift_nan_canonicalization(true)
            // Many small instances: reserve little address space per memory.
            .memory_reservation(1 << 30)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(16 << 20);
        let engine = Engine::new(&config)?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.weak(), stop_ticker.clone());
        let on_disk = CompiledCache::in_triad_cache(&engine);
        Ok(Sandbox { inner: Arc::new(Inner { engine, compiled: Mutex::new(HashMap::new()), on_disk, stop_ticker }) })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compile a component, or return the copy compiled earlier in this process, or read the
    /// one an earlier process compiled from triad's cache (see [`CompiledCache`]).
    pub(crate) fn compile(&self, component_bytes: &[u8]) -> wasmtime::Result<Component> {
        let key: [u8; 32] = Sha256::digest(component_bytes).into();
        if let Some(found) = self.lock_cache().get(&key) {
            return Ok(found.clone());
        }
        let started = std::time::Instant::now();
        let (component, outcome) = self.inner.on_disk.load_or_compile(&self.inner.engine, component_bytes)?;
        tracing::debug!(
            bytes = component_bytes.len(),
            ?outcome,
            seconds = started.elapsed().as_secs_f64(),
            "plugin component ready"
        );
        self.lock_cache().insert(key, component.clone());
        Ok(component)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Component>> {
        // A panic while holding this lock cannot leave the map half-updated: recover it.
        self.inner.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn spawn_ticker(engine: wasmtime::EngineWeak, stop: Arc<AtomicBool>) {
    thread::Builder::new()
        .name("triad-plugin-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// The kind a component implements, read from the names of its exports.
pub(crate) fn kind_of(component: &Component, engine: &Engine) -> Option<PluginKind> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    let has = |name: &str| exports.iter().any(|e| e == name);
    if has("filter") {
        Some(PluginKind::DataFilter)
    } else if has("score") {
        Some(PluginKind::Reward)
    } else if has("compute") {
        Some(PluginKind::Loss)
    } else if has("statistics") {
        Some(PluginKind::Metric)
    } else {
        None
    }
}
