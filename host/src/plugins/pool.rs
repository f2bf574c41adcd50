//! Instances of one plugin, one per worker thread, and the call path every kind shares:
//! lazy instantiation, the per-call deadline, trap classification, re-instantiation after a
//! trap, and splitting a batch across workers.
//!
//! A trap poisons only the instance that trapped: its `Store` is dropped and the next call
//! instantiates a fresh one from the pre-linked `InstancePre` (tens of microseconds) and
//! configures it again with the same config, so the other workers and later calls are unaffected.

use std::sync::{Mutex, MutexGuard};
use std::thread;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings::{self, GuestError, PluginInfo, PluginKind};
use super::error::{PluginError, Problem, printable};
use super::sandbox::{Limits, Sandbox, StoreState};

/// The generated bindings of one world, seen through what the pool needs.
pub(crate) trait World: Sized + Send + 'static {
    /// The kind of plugin this world is.
    const KIND: PluginKind;
    /// The pre-linked, pre-type-checked form, cheap to instantiate many times.
    type Pre: Send + Sync;

    fn pre(linker: &Linker<StoreState>, component: &Component) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<StoreState>) -> wasmtime::Result<Self>;
    fn call_info(&self, store: &mut Store<StoreState>) -> wasmtime::Result<PluginInfo>;
    fn call_configure(&self, store: &mut Store<StoreState>, config: &str) -> wasmtime::Result<Result<(), GuestError>>;
}

macro_rules! impl_world {
    ($world:ty, $pre:ty, $kind:expr) => {
        impl World for $world {
            const KIND: PluginKind = $kind;
            type Pre = $pre;

            fn pre(linker: &Linker<StoreState>, component: &Component) -> wasmtime::Result<$pre> {
                <$pre>::new(linker.instantiate_pre(component)?)
            }
            fn instantiate(pre: &$pre, store: &mut Store<StoreState>) -> wasmtime::Result<Self> {
                pre.instantiate(store)
            }
            fn call_info(&self, store: &mut Store<StoreState>) -> wasmtime::Result<PluginInfo> {
                self.call_info(store)
            }
            fn call_configure(
                &self,
                store: &mut Store<StoreState>,
                config: &str,
            ) -> wasmtime::Result<Result<(), GuestError>> {
                self.call_configure(store, config)
            }
        }
    };
}

impl_world!(bindings::filter::DataFilter, bindings::filter::DataFilterPre<StoreState>, PluginKind::DataFilter);
impl_world!(bindings::reward::Reward, bindings::reward::RewardPre<StoreState>, PluginKind::Reward);
impl_world!(bindings::loss::Loss, bindings::loss::LossPre<StoreState>, PluginKind::Loss);
impl_world!(bindings::metric::Metric, bindings::metric::MetricPre<StoreState>, PluginKind::Metric);

/// How one plugin is to run: its config (JSON), limits and number of instances.
pub(crate) struct Settings<'a> {
    pub config: &'a str,
    pub limits: Limits,
    /// `None`: one instance per core.
    pub workers: Option<usize>,
}

/// A live instance: its store and its typed exports.
pub(crate) struct Instance<W> {
    pub store: Store<StoreState>,
    pub world: W,
}

/// Every instance of one configured plugin.
pub(crate) struct Pool<W: World> {
    pub name: String,
    pub info: PluginInfo,
    pub sha256: String,
    config: String,
    pub limits: Limits,
    sandbox: Sandbox,
    pre: W::Pre,
    workers: Vec<Mutex<Option<Instance<W>>>>,
}

impl<W: World> Pool<W> {
    /// Link the component, check it against the world, read `info` and run `configure` once,
    /// so that a bad config fails at load time rather than at the first batch.
    pub fn new(
        sandbox: &Sandbox,
        name: &str,
        sha256: String,
        component: &Component,
        settings: &Settings<'_>,
    ) -> Result<Self, PluginError> {
        let pre = link::<W>(sandbox, name, component)?;
        let mut pool = Pool {
            name: name.to_string(),
            info: read_info::<W>(sandbox, name, &pre, &settings.limits)?,
            sha256,
            config: settings.config.to_string(),
            limits: settings.limits,
            sandbox: sandbox.clone(),
            pre,
            workers: vec![Mutex::new(None)],
        };
        // Configure one instance now, so that a bad config fails at load, not at the first batch.
        pool.with_instance(0, "configure", |_, _| Ok(()))?;
        // Stateful plugins keep their state in one instance, so they get exactly one worker.
        if !pool.info.stateful {
            let cores = || thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            let workers = settings.workers.unwrap_or_else(cores).max(1);
            pool.workers.extend((1..workers).map(|_| Mutex::new(None)));
        }
        Ok(pool)
    }

    /// An error of this plugin in `call`.
    pub fn error(&self, call: &'static str, problem: Problem) -> PluginError {
        PluginError::new(&self.name, Some(W::KIND), call, problem)
    }

    /// A guest's own error, with its record index shifted to the caller's batch.
    /// An error the plugin returned on purpose, blaming a record of the `len` it was given at
    /// `offset` of the caller's batch (a blame outside them is reported, not believed).
    pub fn guest_error(&self, call: &'static str, error: GuestError, offset: usize, len: usize) -> PluginError {
        let mut message = printable(&error.message);
        let record = error.record.map(|r| r as usize).filter(|&r| r < len);
        if let Some(claimed) = error.record.filter(|_| record.is_none()) {
            message.push_str(&format!(" (it blamed record {claimed} of a call of {len})"));
        }
        let err = self.error(call, Problem::Reported(message));
        match record {
            Some(record) => err.at_record(record + offset),
            None => err,
        }
    }

    /// Run `body` on worker `worker`'s instance, creating and configuring it if needed, under
    /// the call deadline. A trap discards the instance.
    pub fn with_instance<R>(
        &self,
        worker: usize,
        call: &'static str,
        body: impl FnOnce(&W, &mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let mut slot = lock(&self.workers[worker]);
        if slot.is_none() {
            *slot = Some(self.instantiate()?);
        }
        let Some(instance) = slot.as_mut() else { unreachable!("the slot was just filled") };
        instance.store.data_mut().last_error = None;
        instance.store.set_epoch_deadline(self.limits.deadline_ticks());
        match body(&instance.world, &mut instance.store) {
            Ok(result) => Ok(result),
            Err(trap) => {
                let last_error = instance.store.data_mut().last_error.take();
                *slot = None;
                Err(self.error(call, classify(&trap, last_error, &self.limits)))
            }
        }
    }

    fn instantiate(&self) -> Result<Instance<W>, PluginError> {
        let Instance { mut store, world } = new_instance::<W>(&self.sandbox, &self.name, &self.pre, &self.limits)?;
        store.set_epoch_deadline(self.limits.deadline_ticks());
        let configured = world.call_configure(&mut store, &self.config).map_err(|e| {
            let last_error = store.data_mut().last_error.take();
            self.error("configure", classify(&e, last_error, &self.limits))
        })?;
        configured.map_err(|e| self.guest_error("configure", e, 0, 0))?;
        Ok(Instance { store, world })
    }

    /// Split `items` into calls of at most `max_records_per_call`, and into at least one call
    /// per worker, spread them over the workers (all on worker 0, in order, for a stateful
    /// plugin), and return the per-chunk results in the order of the chunks. `body` gets the
    /// chunk and its offset in `items`.
    pub fn map_chunks<T: Sync, R: Send>(
        &self,
        items: &[T],
        body: impl Fn(&Self, usize, &[T], usize) -> Result<R, PluginError> + Sync,
    ) -> Result<Vec<R>, PluginError> {
        // A batch below the record cap (a GRPO step's answers) still spreads over every worker.
        let per_worker = items.len().div_ceil(self.workers.len()).max(1);
        let chunk_size = self.limits.max_records_per_call.max(1).min(per_worker);
        let chunks: Vec<(usize, &[T])> =
            items.chunks(chunk_size).enumerate().map(|(i, c)| (i * chunk_size, c)).collect();
        let workers = self.workers.len().min(chunks.len());
        // A batch call that traps or overruns names no record: run its records one by one to
        // find which.
        let body = |pool: &Self, worker: usize, chunk: &[T], offset: usize| {
            body(pool, worker, chunk, offset).map_err(|error| pool.blame(error, worker, chunk, offset, &body))
        };
        if workers <= 1 {
            return chunks.iter().map(|&(offset, chunk)| body(self, 0, chunk, offset)).collect();
        }
        let mut results: Vec<Option<Result<R, PluginError>>> = (0..chunks.len()).map(|_| None).collect();
        thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|worker| {
                    let chunks = &chunks;
                    let body = &body;
                    scope.spawn(move || {
                        chunks
                            .iter()
                            .enumerate()
                            .skip(worker)
                            .step_by(workers)
                            .map(|(index, &(offset, chunk))| (index, body(self, worker, chunk, offset)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for handle in handles {
                // A worker thread only runs `body`, which reports failures as values.
                let done = handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                for (index, result) in done {
                    results[index] = Some(result);
                }
            }
        });
        results.into_iter().map(|r| r.expect("every chunk was assigned to a worker")).collect()
    }

    /// The record to blame for a trap (a panic, an out-of-bounds access...) or an overrun
    /// deadline or memory limit in a batch call that did not say: the call's record when it had one, else the
    /// first record that fails alone, each on a fresh instance (a trap discards the instance it
    /// happened in). Other errors, and failures no single record repeats (a call whose records
    /// together overran the deadline), are returned as they were.
    fn blame<T, R>(
        &self,
        error: PluginError,
        worker: usize,
        chunk: &[T],
        offset: usize,
        body: &impl Fn(&Self, usize, &[T], usize) -> Result<R, PluginError>,
    ) -> PluginError {
        let stopped = matches!(
            error.problem,
            Problem::Panic(_) | Problem::Trap(_) | Problem::Stack | Problem::Deadline(_) | Problem::Memory { .. }
        );
        if error.record.is_some() || !stopped || chunk.is_empty() {
            return error;
        }
        if chunk.len() == 1 {
            return error.at_record(offset);
        }
        (0..chunk.len())
            .find_map(|i| body(self, worker, &chunk[i..=i], offset + i).err().map(|e| (i, e)))
            .map(|(i, single)| if single.record.is_some() { single } else { single.at_record(offset + i) })
            .unwrap_or(error)
    }
}

/// A fresh, unconfigured instance with the limits applied.
fn new_instance<W: World>(
    sandbox: &Sandbox,
    name: &str,
    pre: &W::Pre,
    limits: &Limits,
) -> Result<Instance<W>, PluginError> {
    let mut store = Store::new(sandbox.engine(), StoreState::new(name, limits));
    store.limiter(|state| &mut state.limits);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(limits.deadline_ticks());
    let world = W::instantiate(pre, &mut store).map_err(|e| {
        let last_error = store.data_mut().last_error.take();
        PluginError::new(name, Some(W::KIND), "instantiate", classify(&e, last_error, limits))
    })?;
    Ok(Instance { store, world })
}

/// What the plugin says it is. `info` needs no configuration, so listing plugins never fails on
/// a config they require.
pub(crate) fn read_info<W: World>(
    sandbox: &Sandbox,
    name: &str,
    pre: &W::Pre,
    limits: &Limits,
) -> Result<PluginInfo, PluginError> {
    let Instance { mut store, world } = new_instance::<W>(sandbox, name, pre, limits)?;
    store.set_epoch_deadline(limits.deadline_ticks());
    let info = world.call_info(&mut store).map_err(|e| {
        let last_error = store.data_mut().last_error.take();
        PluginError::new(name, Some(W::KIND), "info", classify(&e, last_error, limits))
    })?;
    if info.kind != W::KIND {
        let problem = Problem::InfoKind { exports: W::KIND, claims: info.kind };
        return Err(PluginError::new(name, Some(W::KIND), "info", problem));
    }
    Ok(info)
}

/// Link a component against one world: type-checks its imports and exports.
pub(crate) fn link<W: World>(sandbox: &Sandbox, name: &str, component: &Component) -> Result<W::Pre, PluginError> {
    let invalid =
        |e: wasmtime::Error| PluginError::new(name, Some(W::KIND), "load", Problem::Invalid(format!("{e:#}")));
    let mut linker = Linker::new(sandbox.engine());
    bindings::filter::triad::plugin::host::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |state| state)
        .map_err(invalid)?;
    W::pre(&linker, component).map_err(invalid)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The slot is reset on every trap, so a poisoned lock holds nothing inconsistent.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Turn a wasmtime error into what the user needs to hear.
fn classify(error: &wasmtime::Error, last_error: Option<String>, limits: &Limits) -> Problem {
    use wasmtime::Trap;
    let panic = last_error.filter(|line| line.starts_with("plugin panicked"));
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Problem::Deadline(limits.deadline),
        Some(Trap::StackOverflow) => Problem::Stack,
        _ if panic.is_some() => Problem::Panic(printable(&panic.unwrap_or_default())),
        Some(Trap::MemoryOutOfBounds) => Problem::Trap(
            "out of bounds memory access (deep recursion that overflows the plugin's own stack, 1 MiB in Rust, ends \
             this way too)"
                .into(),
        ),
        // Rust plugins abort on panic (reported above); Python and JavaScript plugins reach
        // `unreachable` where their runtime calls a stubbed-out system interface.
        Some(Trap::UnreachableCodeReached) => Problem::Trap(format!(
            "{} (a Python or JavaScript plugin ends this way when it asks for what the sandbox does not have: \
             files, the clock, randomness, standard input)",
            Trap::UnreachableCodeReached
        )),
        Some(trap) => Problem::Trap(trap.to_string()),
        None => {
            let text = format!("{error:#}");
            if text.contains("forcing trap when growing memory") {
                Problem::Memory { limit_mib: limits.memory_bytes >> 20 }
            } else if text.contains("forcing trap when growing table") {
                Problem::Table { limit: super::sandbox::MAX_TABLE_ELEMENTS }
            } else {
                Problem::Trap(text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function, FunctionSection, HeapType, Instruction, Module, RefType,
        TableSection, TableType, TypeSection, ValType,
    };

    /// A core module whose `grow(n)` grows its function table by `n` elements.
    fn table_grower() -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([ValType::I32], [ValType::I32]);
        let mut functions = FunctionSection::new();
        functions.function(0);
        let mut tables = TableSection::new();
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            table64: false,
            minimum: 1,
            maximum: None,
            shared: false,
        });
        let mut exports = ExportSection::new();
        exports.export("grow", ExportKind::Func, 0);
        let mut body = Function::new([]);
        body.instruction(&Instruction::RefNull(HeapType::FUNC))
            .instruction(&Instruction::LocalGet(0))
            .instruction(&Instruction::TableGrow(0))
            .instruction(&Instruction::End);
        let mut code = CodeSection::new();
        code.function(&body);
        let mut module = Module::new();
        module.section(&types).section(&functions).section(&tables).section(&exports).section(&code);
        module.finish()
    }

    /// Table elements live outside linear memory: the store's table cap stops a plugin that
    /// grows a table by 250 million entries at once, before the host allocates them.
    #[test]
    fn growing_a_table_past_its_cap_traps_with_a_table_error() {
        let sandbox = Sandbox::shared();
        let limits = Limits::default();
        let mut store = Store::new(sandbox.engine(), StoreState::new("grower", &limits));
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(limits.deadline_ticks());
        let module = wasmtime::Module::new(sandbox.engine(), table_grower()).expect("a valid module");
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiates");
        let grow = instance.get_typed_func::<i32, i32>(&mut store, "grow").expect("exported");
        assert_eq!(grow.call(&mut store, 10).expect("a small growth is fine"), 1, "returns the old size");
        let error = grow.call(&mut store, 250_000_000).expect_err("past the cap");
        let problem = classify(&error, None, &limits);
        assert!(
            matches!(problem, Problem::Table { limit } if limit == super::super::sandbox::MAX_TABLE_ELEMENTS),
            "{problem}"
        );
    }
}
