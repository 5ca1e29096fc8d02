//! The wasmtime engine: compile once per module digest, a fresh sandboxed instance per call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{CacheConfig, Config, ResourceLimiter, Store, Trap};

use super::bindings::{Policy as Bindings, PolicyPre, wit};
use super::errors::{PolicyError, Result};
use super::sandbox::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, Sandbox};
use pgwarden_crds::PolicyLimits;
use pgwarden_sdk::types::ABI_VERSION;

/// The longest message or reason a policy may answer.
pub const MAX_MESSAGE_BYTES: usize = 32 << 10;

/// The wasmtime version compiled in: part of the on-disk cache key, with the module digest.
pub const WASMTIME_VERSION: &str = "48.0.8";
/// Granularity of the wall-clock deadline: the epoch ticks this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Limits of each policy call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline of one decision (rounded up to [`EPOCH_TICK`]).
    pub timeout: Duration,
    /// Cap of the guest's linear memories, all together, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    /// 200 ms and 64 MiB, as `ReconcilePolicy.spec.limits` documents.
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(200),
            memory_bytes: 64 << 20,
        }
    }
}

impl From<Option<&PolicyLimits>> for Limits {
    fn from(limits: Option<&PolicyLimits>) -> Self {
        let default = Limits::default();
        let limits = limits.cloned().unwrap_or_default();
        Limits {
            timeout: limits
                .timeout_millis
                .map_or(default.timeout, |ms| Duration::from_millis(ms.into())),
            memory_bytes: limits
                .memory_mib
                .map_or(default.memory_bytes, |mib| (mib as usize) << 20),
        }
    }
}

/// How the engine is set up.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// Folder of wasmtime's on-disk cache of compiled modules (keyed by module hash, compiler
    /// settings and wasmtime version). `None`: compile in memory only.
    pub cache_dir: Option<PathBuf>,
    /// How many policy calls and compilations may run at once on blocking threads (default: 4).
    pub max_concurrent_calls: Option<usize>,
    /// The largest module compiled, in bytes (default: [`DEFAULT_MAX_MODULE_BYTES`]).
    pub max_module_bytes: Option<usize>,
    /// How long [`Engine::load_bounded`] waits for a compilation (default: [`COMPILE_TIMEOUT`]).
    pub compile_timeout: Option<Duration>,
    /// How many compiled modules stay in memory, least recently loaded evicted first
    /// (default: [`CACHED_MODULES`]). Policies in force keep their own module.
    pub cached_modules: Option<usize>,
}

/// The largest module compiled (or downloaded) when not told otherwise.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 32 << 20;
/// How long a compilation may take before the load is given up (a release build compiles the
/// default policy in about a second; a debug build in tens of seconds).
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
/// Compiled modules kept in memory by digest.
pub const CACHED_MODULES: usize = 16;

/// The policy engine: one per operator. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(super) wasmtime: wasmtime::Engine,
    loaded: Arc<Mutex<Cache<Compiled>>>,
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    max_module_bytes: usize,
    compile_timeout: Duration,
}

#[derive(Clone)]
struct Compiled {
    pre: PolicyPre<Sandbox>,
    abi_version: String,
}

/// Compiled modules by digest, at most `capacity`, the least recently used evicted first:
/// every ReconcilePolicy edit may bring a new digest, and a compiled module is megabytes.
struct Cache<T> {
    capacity: usize,
    clock: u64,
    entries: HashMap<String, Entry<T>>,
}

/// A cached value and the clock of its last use.
struct Entry<T> {
    used: u64,
    value: T,
}

impl<T: Clone> Cache<T> {
    fn new(capacity: usize) -> Self {
        Cache {
            capacity: capacity.max(1),
            clock: 0,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, digest: &str) -> Option<T> {
        self.clock += 1;
        let entry = self.entries.get_mut(digest)?;
        entry.used = self.clock;
        Some(entry.value.clone())
    }

    fn insert(&mut self, digest: String, value: T) {
        self.clock += 1;
        let used = self.clock;
        self.entries.insert(digest, Entry { used, value });
        while self.entries.len() > self.capacity {
            let oldest = self.entries.iter().min_by_key(|(_, entry)| entry.used);
            let Some(oldest) = oldest.map(|(digest, _)| digest.clone()) else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

/// A loaded policy module with its limits. Cheap to clone; calls are independent.
#[derive(Clone)]
pub struct Policy {
    pub(super) engine: Engine,
    pre: PolicyPre<Sandbox>,
    digest: String,
    abi_version: String,
    pub(super) limits: Limits,
    /// `ReconcilePolicy.spec.settings` as JSON text, passed to every decision.
    pub(super) settings: Arc<str>,
}

fn wasmtime_config(config: &EngineConfig) -> Result<Config> {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(1 << 20);
    if let Some(dir) = &config.cache_dir {
        let mut cache = CacheConfig::new();
        cache.with_directory(dir.join(format!("wasmtime-{WASMTIME_VERSION}")));
        let cache = wasmtime::Cache::new(cache).map_err(|e| {
            PolicyError::Engine(format!(
                "cannot open the module cache {}: {e}",
                dir.display()
            ))
        })?;
        wasm.cache(Some(cache));
    }
    Ok(wasm)
}

/// The settings of a policy whose ReconcilePolicy has none.
pub const NO_SETTINGS: &str = "{}";

/// The sha256 of a module, as 64 lowercase hex digits.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Engine {
    /// A new engine; starts the thread that ticks the deadline clock (it stops with the
    /// last clone of the engine).
    pub fn new(config: EngineConfig) -> Result<Engine> {
        let wasmtime = wasmtime::Engine::new(&wasmtime_config(&config)?)
            .map_err(|e| PolicyError::Engine(format!("cannot configure wasmtime: {e}")))?;
        let weak = wasmtime.weak();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PolicyError::Engine(format!("cannot start the deadline thread: {e}")))?;
        let permits = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_calls.unwrap_or(4).max(1),
        ));
        Ok(Engine {
            wasmtime,
            loaded: Arc::new(Mutex::new(Cache::new(
                config.cached_modules.unwrap_or(CACHED_MODULES),
            ))),
            permits,
            max_module_bytes: config.max_module_bytes.unwrap_or(DEFAULT_MAX_MODULE_BYTES),
            compile_timeout: config.compile_timeout.unwrap_or(COMPILE_TIMEOUT),
        })
    }

    /// [`Engine::load`] off the async executor, under the call semaphore (a compilation takes
    /// a core as a call does) and given up after the compile timeout. A compilation cannot be
    /// interrupted: one given up finishes on its thread, still holding its permit, so at most
    /// `max_concurrent_calls` compilations and calls ever run at once.
    pub async fn load_bounded(&self, bytes: Vec<u8>, limits: Limits) -> Result<Policy> {
        self.check_size(bytes.len())?;
        let permit = self.permits.clone().acquire_owned().await;
        let permit =
            permit.map_err(|e| PolicyError::Engine(format!("the call queue is closed: {e}")))?;
        let engine = self.clone();
        let compiling = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            engine.load(&bytes, limits)
        });
        match tokio::time::timeout(self.compile_timeout, compiling).await {
            Ok(joined) => joined
                .map_err(|e| PolicyError::Engine(format!("the compiler thread failed: {e}")))?,
            Err(_) => Err(PolicyError::Load(format!(
                "compiling the module took longer than {} s and was given up",
                self.compile_timeout.as_secs()
            ))),
        }
    }

    /// Refuses a module above the size limit before anything parses it.
    fn check_size(&self, size: usize) -> Result<()> {
        if size > self.max_module_bytes {
            return Err(PolicyError::Load(format!(
                "the module is too large: {size} bytes, over the {}-byte limit (--policy-max-module-bytes)",
                self.max_module_bytes
            )));
        }
        Ok(())
    }

    /// Loads a module: compiled once per digest (and cached on disk when configured), its
    /// exports checked against the ABI, its `abi-version` asked once.
    #[tracing::instrument(skip_all, fields(digest, size = bytes.len()))]
    pub fn load(&self, bytes: &[u8], limits: Limits) -> Result<Policy> {
        self.check_size(bytes.len())?;
        let digest = digest(bytes);
        tracing::Span::current().record("digest", digest.as_str());
        let known = self
            .loaded
            .lock()
            .map_err(|_| PolicyError::Engine("module table poisoned".into()))?
            .get(&digest);
        let compiled = match known {
            Some(compiled) => compiled,
            None => {
                let compiled = self.compile(bytes, limits)?;
                let mut loaded = self
                    .loaded
                    .lock()
                    .map_err(|_| PolicyError::Engine("module table poisoned".into()))?;
                loaded.insert(digest.clone(), compiled.clone());
                compiled
            }
        };
        Ok(Policy {
            engine: self.clone(),
            pre: compiled.pre,
            digest,
            abi_version: compiled.abi_version,
            limits,
            settings: Arc::from(NO_SETTINGS),
        })
    }

    /// How many compiled modules (by digest) this engine keeps in memory.
    pub fn modules_compiled(&self) -> usize {
        self.loaded.lock().map_or(0, |l| l.entries.len())
    }

    fn compile(&self, bytes: &[u8], limits: Limits) -> Result<Compiled> {
        let component = Component::new(&self.wasmtime, bytes)
            .map_err(|e| PolicyError::Load(load_message(&e)))?;
        let mut linker = Linker::<Sandbox>::new(&self.wasmtime);
        // Whatever the module imports (WASI's stdio, environment...) traps when called.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        let abi = |detail: String| PolicyError::AbiMismatch {
            expected: ABI_VERSION.into(),
            detail,
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| abi(format!("{e:#}")))?;
        let pre = match PolicyPre::new(pre.clone()) {
            Ok(pre) => pre,
            Err(e) => {
                return Err(abi(match exported_version(&self.wasmtime, &pre, limits) {
                    Some(v) if v != ABI_VERSION => format!(
                        "the module was built for ABI {v}: rebuild it with the pgwarden SDK of ABI {ABI_VERSION} (since 0.3 every decision takes the settings first and denials carry a reason; since 0.4 the archive settings say where new standbys are cloned from)"
                    ),
                    _ => format!("{e:#}"),
                }));
            }
        };
        let probe = Policy {
            engine: self.clone(),
            pre: pre.clone(),
            digest: String::new(),
            abi_version: String::new(),
            limits,
            settings: Arc::from(NO_SETTINGS),
        };
        let version = probe.call("abi-version", |p, s| p.call_abi_version(s).map(Ok))?;
        if !compatible(&version) {
            return Err(abi(format!("the module was built for ABI {version}")));
        }
        Ok(Compiled {
            pre,
            abi_version: version,
        })
    }
}

/// Same major (or, before 1.0, same minor) version as the host's ABI.
fn compatible(version: &str) -> bool {
    let parts = |v: &str| v.split('.').map(str::to_owned).collect::<Vec<_>>();
    let (ours, theirs) = (parts(ABI_VERSION), parts(version));
    theirs.len() == 3
        && if ours[0] == "0" {
            ours[..2] == theirs[..2]
        } else {
            ours[0] == theirs[0]
        }
}

fn load_message(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    // wasmtime 48 says "attempted to parse a wasm module with a component parser".
    let core = [
        "expected a WebAssembly component",
        "core module",
        "parse a wasm module with a component parser",
    ];
    if core.iter().any(|c| text.contains(c)) {
        return format!(
            "it is a core WebAssembly module, not a component (build the policy for wasm32-wasip2): {text}"
        );
    }
    text
}

impl Policy {
    /// sha256 of the module.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The ABI version the module exports.
    pub fn abi_version(&self) -> &str {
        &self.abi_version
    }

    /// The settings (JSON text) every decision is given.
    pub fn settings(&self) -> &str {
        &self.settings
    }

    /// The same module given other settings (JSON text), unchecked: see
    /// [`Policy::with_settings`], which asks the policy first.
    pub(super) fn with_settings_text(&self, settings: String) -> Policy {
        Policy {
            settings: Arc::from(settings),
            ..self.clone()
        }
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The same module under other limits: nothing compiles again.
    pub fn with_limits(&self, limits: Limits) -> Policy {
        Policy {
            limits,
            ..self.clone()
        }
    }

    /// One sandboxed call: a fresh store and instance, the deadline and memory cap armed;
    /// every failure classified. Blocking: at most the timeout.
    pub(super) fn call<R>(
        &self,
        decision: &str,
        f: impl FnOnce(
            &Bindings,
            &mut Store<Sandbox>,
        ) -> wasmtime::Result<std::result::Result<R, wit::Denial>>,
    ) -> Result<R> {
        let mut store = sandboxed_store(&self.engine.wasmtime, self.limits);
        let outcome = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| f(&instance, &mut store));
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(denial)) => Err(denied(decision, denial)),
            Err(e) => Err(self.classify(decision, &e, store.data())),
        }
    }

    fn classify(&self, decision: &str, e: &wasmtime::Error, sandbox: &Sandbox) -> PolicyError {
        let decision = decision.to_string();
        if sandbox.memory_cap_hit {
            return PolicyError::MemoryCap {
                decision,
                limit_bytes: sandbox.memory_cap,
            };
        }
        let text = format!("{e:#}");
        match e.downcast_ref::<Trap>() {
            // The deadline is the epoch interruption (fuel is not metered: no OutOfFuel).
            Some(Trap::Interrupt) => PolicyError::Deadline {
                decision,
                timeout: self.limits.timeout,
            },
            Some(Trap::UnreachableCodeReached) => PolicyError::Trap {
                decision,
                detail: "it panicked or aborted (wasm `unreachable`)".into(),
            },
            Some(Trap::StackOverflow) => PolicyError::Trap {
                decision,
                detail: "stack overflow (too deep a recursion)".into(),
            },
            Some(trap) => PolicyError::Trap {
                decision,
                detail: trap.to_string(),
            },
            None if text.contains("resource limit exceeded") => PolicyError::Trap {
                decision,
                detail: format!(
                    "{}: the sandbox allows {MAX_INSTANCES} core instances, {MAX_MEMORIES} memories and {MAX_TABLES} tables",
                    first_line(&text)
                ),
            },
            None if text.contains("unknown import") || text.contains("has not been defined") => {
                let import = text.split('`').nth(1).unwrap_or("an import").to_string();
                PolicyError::Capability { decision, import }
            }
            None => PolicyError::MalformedOutput {
                decision,
                detail: first_line(&text),
            },
        }
    }
}

/// A fresh store under `limits`: the memory cap and the epoch deadline armed.
fn sandboxed_store(engine: &wasmtime::Engine, limits: Limits) -> Store<Sandbox> {
    let mut store = Store::new(engine, Sandbox::new(limits.memory_bytes));
    store.limiter(|s| s as &mut dyn ResourceLimiter);
    let ticks = limits
        .timeout
        .as_micros()
        .div_ceil(EPOCH_TICK.as_micros())
        .max(1) as u64;
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_trap();
    store
}

/// A policy's denial, its reason held to one CamelCase word and its message to
/// [`MAX_MESSAGE_BYTES`]: both reach a condition and an Event.
fn denied(decision: &str, denial: wit::Denial) -> PolicyError {
    let reason_ok = !denial.reason.is_empty()
        && denial.reason.len() <= 64
        && denial.reason.chars().all(|c| c.is_ascii_alphanumeric());
    if !reason_ok {
        return PolicyError::MalformedOutput {
            decision: decision.into(),
            detail: format!(
                "denial reason {:?} is not one CamelCase word",
                denial.reason
            ),
        };
    }
    if denial.message.len() > MAX_MESSAGE_BYTES {
        return PolicyError::MalformedOutput {
            decision: decision.into(),
            detail: format!("the denial's message is over {MAX_MESSAGE_BYTES} bytes"),
        };
    }
    PolicyError::Denied {
        decision: decision.into(),
        reason: denial.reason,
        message: denial.message,
    }
}

/// The ABI version a module that does not match the host's world says it was built for, if
/// it exports a callable `abi-version` at all (asked untyped, in the sandbox).
fn exported_version(
    engine: &wasmtime::Engine,
    pre: &wasmtime::component::InstancePre<Sandbox>,
    limits: Limits,
) -> Option<String> {
    let mut store = sandboxed_store(engine, limits);
    let instance = pre.instantiate(&mut store).ok()?;
    let func = instance
        .get_typed_func::<(), (String,)>(&mut store, "abi-version")
        .ok()?;
    func.call(&mut store, ()).ok().map(|(version,)| version)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_1_0_the_minor_version_must_match() {
        // The host speaks 0.4.x: a module built for 0.3 or 0.5 is refused at load.
        assert_eq!(
            ABI_VERSION.split('.').take(2).collect::<Vec<_>>(),
            ["0", "4"]
        );
        assert!(compatible("0.4.0"));
        assert!(compatible("0.4.7"));
        for refused in ["0.3.0", "0.5.0", "1.4.0", "0.4", "", "zero.four.one"] {
            assert!(!compatible(refused), "{refused:?} must be refused");
        }
    }

    #[test]
    fn limits_default_and_follow_the_policy_spec() {
        assert_eq!(Limits::from(None), Limits::default());
        let spec = PolicyLimits {
            timeout_millis: Some(30),
            memory_mib: Some(8),
        };
        assert_eq!(
            Limits::from(Some(&spec)),
            Limits {
                timeout: Duration::from_millis(30),
                memory_bytes: 8 << 20,
            }
        );
    }
}
