//! Adversarial guests: each is stopped or refused with its own error, and the engine (the same
//! loaded policy) keeps serving the next call.
//!
//! The misbehaving policy is a tiny Rust crate, `host/tests/data/adversarial/`, built with the
//! others by `cargo xtask build-policies` (its behaviour depends on the Cluster's name); the
//! ABI cases are `.wat` text fixtures in `host/tests/data/`.
//!
//! Bounds: a decision is stopped at its deadline (50 ms here, checked every 5 ms epoch tick);
//! memory at its cap (16 MiB here). The tests assert a loose wall-clock ceiling (2 s) only to
//! catch a sandbox that does not stop at all; the benchmark prints real figures.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{engine, module};
use pgwarden::policy::{Engine, EngineConfig, Limits, Policy, PolicyError};
use pgwarden_core::plan::{self, ClusterDecisions, GuardrailError};
use pgwarden_crds::Cluster;

const LIMITS: Limits = Limits {
    timeout: Duration::from_millis(50),
    memory_bytes: 16 << 20,
};
const CEILING: Duration = Duration::from_secs(2);

fn adversarial() -> Policy {
    engine().load(&module("adversarial"), LIMITS).unwrap()
}

fn cluster(name: &str) -> Cluster {
    let yaml = format!(
        r#"
apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Cluster
metadata: {{ name: {name}, namespace: default, uid: 00000000-0000-4000-8000-00000000000c }}
spec:
  instances: 1
  backup:
    destinationPath: s3://backups/pg
    s3Credentials:
      accessKeyId: {{ name: aws-creds, key: ACCESS_KEY_ID }}
      secretAccessKey: {{ name: aws-creds, key: ACCESS_SECRET_KEY }}
"#
    );
    serde_saphyr::from_str(&yaml).unwrap()
}

/// The policy still answers a well-behaved call.
fn still_serves(policy: &Policy) {
    let pod = policy
        .instance_pod(&cluster("fine"), 0, &[])
        .expect("the next call is served");
    assert_eq!(pod.spec.unwrap().containers[0].name, "postgres");
}

fn timed<T>(f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let elapsed = started.elapsed();
    eprintln!("stopped after {elapsed:?}");
    assert!(elapsed < CEILING, "took {elapsed:?}");
    out
}

#[test]
fn an_endless_loop_hits_the_deadline() {
    let policy = adversarial();
    let err = timed(|| policy.instance_pod(&cluster("loop"), 0, &[])).unwrap_err();
    assert!(matches!(err, PolicyError::Deadline { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the policy ran past its 50ms limit in instance-pod and was stopped"
    );
    still_serves(&policy);
}

#[test]
fn a_1gib_allocation_hits_the_memory_cap() {
    let policy = adversarial();
    let err = timed(|| policy.archive_settings(&cluster("alloc"))).unwrap_err();
    assert!(matches!(err, PolicyError::MemoryCap { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the policy tried to use more than 16 MiB of memory in archive-settings and was stopped"
    );
    still_serves(&policy);
}

#[test]
fn a_panic_is_a_trap() {
    let policy = adversarial();
    let err = timed(|| policy.instance_pod(&cluster("panic"), 0, &[])).unwrap_err();
    assert!(matches!(err, PolicyError::Trap { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("the policy crashed in instance-pod: it panicked"),
        "{err}"
    );
    still_serves(&policy);
}

#[test]
fn garbage_output_is_malformed() {
    let policy = adversarial();
    let err = policy
        .instance_pod(&cluster("garbage"), 0, &[])
        .unwrap_err();
    assert!(
        matches!(err, PolicyError::MalformedOutput { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("the policy answered a malformed instance-pod: not a PodTemplateSpec"),
        "{err}"
    );
    still_serves(&policy);
}

#[test]
fn unusable_settings_are_malformed() {
    let policy = adversarial();
    let err = policy
        .archive_settings(&cluster("bad-settings"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the policy answered a malformed archive-settings: destinationPath \"ftp://nowhere\" is not an s3:// URL"
    );
    still_serves(&policy);
}

/// Each WASI capability the guest's std would use is refused by name, not granted.
fn assert_capability_refused(name: &str, interface: &str) {
    let policy = adversarial();
    let err = timed(|| policy.instance_pod(&cluster(name), 0, &[])).unwrap_err();
    let PolicyError::Capability { decision, import } = &err else {
        panic!("{name}: expected a capability error, got {err:?}");
    };
    assert_eq!(decision, "instance-pod");
    assert!(import.contains(interface), "{name}: {import}");
    assert!(
        err.to_string().ends_with(
            "which the sandbox does not grant (no filesystem, network, clock or environment)"
        ),
        "{err}"
    );
    still_serves(&policy);
}

#[test]
fn reading_the_environment_is_refused() {
    assert_capability_refused("reads-env", "wasi:cli/environment");
}

#[test]
fn reading_a_file_is_refused() {
    assert_capability_refused("reads-file", "wasi:filesystem");
}

#[test]
fn reading_the_clock_is_refused() {
    assert_capability_refused("reads-clock", "wasi:clocks");
}

fn planned(name: &str) -> Result<(), GuardrailError> {
    let policy = adversarial();
    let cluster = cluster(name);
    let decisions = policy
        .cluster_decisions(&cluster, &[], &[])
        .expect("the policy answers");
    let actions = plan::plan_cluster(&cluster, &decisions)?;
    plan::guardrails::check(&plan::subject(&cluster), &actions)
}

#[test]
fn a_pod_in_another_namespace_is_refused() {
    let err = planned("other-namespace").unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused Pod kube-system/other-namespace-1: it is in namespace kube-system, outside Cluster default/other-namespace's namespace default"
    );
}

#[test]
fn a_credential_by_value_is_refused() {
    let err = planned("secret-value").unwrap_err();
    assert!(matches!(err, GuardrailError::SecretValue { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("AWS_SECRET_ACCESS_KEY carries a credential by value"),
        "{err}"
    );
}

#[test]
fn another_clusters_volume_is_refused() {
    let err = planned("foreign-claim").unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused Pod default/foreign-claim-1: it refers to PersistentVolumeClaim someone-else-1 (spec.volumes[0].persistentVolumeClaim), which does not belong to Cluster foreign-claim"
    );
}

#[test]
fn an_oversized_pod_template_is_malformed() {
    let err = adversarial()
        .instance_pod(&cluster("huge"), 0, &[])
        .unwrap_err();
    assert!(
        err.to_string().contains("over the 1048576-byte bound"),
        "{err}"
    );
}

#[test]
fn an_oversized_pod_is_refused() {
    let err = planned("large").unwrap_err();
    let GuardrailError::TooLarge { bytes, limit, .. } = &err else {
        panic!("{err:?}");
    };
    // A 700 KiB label and the rest of the pod: over the bound, under the policy's 1 MiB.
    assert!((700 << 10..1 << 20).contains(bytes), "{err}");
    assert_eq!(*limit, 512 << 10);
    assert_eq!(
        err.to_string(),
        format!("refused Pod default/large-1: {bytes} bytes, over the 524288-byte bound")
    );
}

#[test]
fn a_well_behaved_cluster_passes_the_guardrails() {
    planned("fine").unwrap();
}

fn load_wat(file: &str) -> PolicyError {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    let engine = Engine::new(EngineConfig::default()).unwrap();
    engine
        .load(text.as_bytes(), LIMITS)
        .err()
        .expect("the module must be refused")
}

#[test]
fn a_core_module_is_not_a_component() {
    let err = load_wat("core-module.wat");
    assert!(matches!(err, PolicyError::Load(_)), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "cannot load the policy module: it is a core WebAssembly module, not a component (build the policy for wasm32-wasip2)"
        ),
        "{err}"
    );
}

#[test]
fn a_component_without_the_exports_is_an_abi_mismatch() {
    let err = load_wat("empty-component.wat");
    assert!(matches!(err, PolicyError::AbiMismatch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("the policy module does not match ABI pgwarden:policy@0.4.0"),
        "{err}"
    );
}

#[test]
fn a_wrongly_typed_export_is_an_abi_mismatch() {
    let err = load_wat("wrong-abi.wat");
    assert!(matches!(err, PolicyError::AbiMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("the policy module does not match ABI pgwarden:policy@0.4.0: ")
            && text.contains("abi-version"),
        "{text}"
    );
}

/// On a single-threaded runtime, a timer keeps ticking while a looping policy runs: the call
/// is off the executor (inline, it would block the only thread for the whole deadline). With
/// one permit, two looping calls run one after the other: their time spans do not overlap.
#[test]
fn calls_run_off_the_executor_under_the_semaphore() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::new(EngineConfig {
        max_concurrent_calls: Some(1),
        cache_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policy-cache")),
        ..Default::default()
    })
    .unwrap();
    let policy = engine.load(&module("adversarial"), LIMITS).unwrap();
    // The call's own span on its blocking thread, and what the policy answered.
    let looping = || {
        let policy = policy.clone();
        async move {
            policy
                .run(|p| {
                    let start = Instant::now();
                    let answer = p.instance_pod(&cluster("loop"), 0, &[]);
                    Ok((start, Instant::now(), answer))
                })
                .await
                .unwrap()
        }
    };
    runtime.block_on(async {
        let started = Instant::now();
        let ticks = async {
            let mut ticks = 0u32;
            let mut interval = tokio::time::interval(Duration::from_millis(5));
            while started.elapsed() < LIMITS.timeout {
                interval.tick().await;
                ticks += 1;
            }
            ticks
        };
        let (first, second, ticks) = tokio::join!(looping(), looping(), ticks);
        for (_, _, answer) in [&first, &second] {
            assert!(
                matches!(answer, Err(PolicyError::Deadline { .. })),
                "{answer:?}"
            );
        }
        assert!(
            ticks >= 5,
            "the executor was blocked while the policy ran: {ticks} ticks in {:?}",
            LIMITS.timeout
        );
        let (a, b) = if first.0 <= second.0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        assert!(
            a.1 <= b.0,
            "two calls under one permit overlapped: {:?} and {:?} after the start",
            (a.0 - started, a.1 - started),
            (b.0 - started, b.1 - started)
        );
        let fine = policy
            .run(|p| p.instance_pod(&cluster("fine"), 0, &[]))
            .await;
        assert!(fine.is_ok(), "{fine:?}");
    });
}

/// The pod-template guardrail's cases (sdk/README.md, "What a policy may set in an instance
/// pod").
#[path = "policy_sandbox/pod_template.rs"]
mod pod_template;

// ---- Limits that add up (issue 11 item 7): the sum of a call's memories, the counts of its
// instances and memories, the size of a module, and limits changed without a new module.

const MIB: usize = 1 << 20;

/// `many-memories.wat` (32 core instances, each with a memory of `pages` 64 KiB pages),
/// loaded under `memoryMiB: 64`.
fn load_many_memories(pages: u32) -> std::result::Result<Policy, PolicyError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/many-memories.wat");
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.replace(" 960)", &format!(" {pages})"));
    let limits = Limits {
        memory_bytes: 64 * MIB,
        ..LIMITS
    };
    Engine::new(EngineConfig::default())
        .unwrap()
        .load(text.as_bytes(), limits)
}

#[test]
fn thirty_two_memories_of_60_mib_hit_the_64_mib_cap() {
    // Each memory is under the cap; the second one takes the call over it.
    let err = timed(|| load_many_memories(960)).err().expect("refused");
    assert!(matches!(err, PolicyError::MemoryCap { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the policy tried to use more than 64 MiB of memory in abi-version and was stopped"
    );
}

#[test]
fn thirty_two_small_memories_are_too_many() {
    let err = load_many_memories(1).err().expect("refused");
    let text = err.to_string();
    assert!(matches!(err, PolicyError::Trap { .. }), "{err:?}");
    assert!(
        text.contains("memory count too high")
            && text.ends_with("the sandbox allows 16 core instances, 4 memories and 8 tables"),
        "{text}"
    );
}

#[test]
fn a_module_over_the_size_limit_is_refused_before_it_compiles() {
    let engine = Engine::new(EngineConfig {
        max_module_bytes: Some(64 << 10),
        ..Default::default()
    })
    .unwrap();
    let bytes = module("adversarial");
    let err = engine.load(&bytes, LIMITS).err().expect("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot load the policy module: the module is too large: {} bytes, over the 65536-byte limit (--policy-max-module-bytes)",
            bytes.len()
        )
    );
    assert_eq!(engine.modules_compiled(), 0);
}

#[test]
fn dev_zero_as_a_module_file_is_too_large() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let limit = pgwarden::policy::DEFAULT_MAX_MODULE_BYTES;
    let err = timed(|| runtime.block_on(pgwarden::policy::fetch::read_file("/dev/zero", limit)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "/dev/zero (spec.module.file) is too large: more than {limit} bytes (the operator's module size limit, --policy-max-module-bytes)"
        )
    );
}

#[test]
fn compiled_modules_are_evicted_least_recently_used_first() {
    let engine = Engine::new(EngineConfig {
        cached_modules: Some(1),
        ..Default::default()
    })
    .unwrap();
    let wat = |version: &str| {
        format!(
            r#"(component (core module $m (func (export "v") (result i32) i32.const {version})))"#
        )
    };
    for version in ["1", "2", "3"] {
        // Not policies (no ABI): refused after compiling, and not kept.
        let _ = engine.load(wat(version).as_bytes(), LIMITS);
    }
    assert_eq!(engine.modules_compiled(), 0);
    let policy = engine.load(&module("adversarial"), LIMITS).unwrap();
    assert_eq!(engine.modules_compiled(), 1);
    let other = engine.load(&module("default"), LIMITS).unwrap();
    assert_eq!(
        engine.modules_compiled(),
        1,
        "one module kept, the older evicted"
    );
    // Policies in force keep their own compiled module.
    still_serves(&policy);
    assert_ne!(policy.digest(), other.digest());
}

#[test]
fn new_limits_need_no_new_module() {
    let slow = adversarial().with_limits(Limits {
        timeout: Duration::from_secs(60),
        ..LIMITS
    });
    let quick = slow.with_limits(LIMITS);
    assert_eq!(slow.digest(), quick.digest());
    let err = timed(|| quick.instance_pod(&cluster("loop"), 0, &[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the policy ran past its 50ms limit in instance-pod and was stopped"
    );
}
