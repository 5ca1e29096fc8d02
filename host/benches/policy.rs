//! Policy decision latency: the same decision through the wasm module (fresh sandboxed
//! instance per call, as the operator runs it) vs the native call of the same policy code
//! (the SDK's glue, JSON in and out, no wasm). Prints p50/p99 of each and the ratio, the
//! module size and the cold compile time, and writes them to `target/bench/policy.json`.
//!
//! `cargo xtask build-policies && cargo bench -p pgwarden --bench policy`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use pgwarden::policy::{Engine, EngineConfig, Limits, Policy};
use pgwarden_policy_default::DefaultPolicy;
use pgwarden_sdk::testing::Native;
use pgwarden_sdk::types::Request;
use pgwarden_sdk::types::Settings;

const CLUSTER: &str = r#"
apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Cluster
metadata:
  name: postgresql-bkp
  namespace: default
  uid: 6f1c2f9e-0000-4000-8000-000000000001
  generation: 3
  labels: { app.kubernetes.io/name: postgresql, team: payments }
spec:
  instances: 3
  imageName: 2ndquadrant/postgresql:13
  storage: { size: 20Gi, storageClass: fast-ssd }
  postgresql:
    parameters: { max_connections: "200", shared_buffers: 2GB, work_mem: 16MB, wal_level: replica }
  resources:
    requests: { cpu: "2", memory: 4Gi }
    limits: { memory: 4Gi }
  bootstrap: { initdb: { database: app, owner: app } }
  backup:
    destinationPath: s3://backups/payments/pg
    endpointURL: https://s3.eu-west-1.amazonaws.com
    serverName: payments-pg
    s3Credentials:
      accessKeyId: { name: aws-creds, key: ACCESS_KEY_ID }
      secretAccessKey: { name: aws-creds, key: ACCESS_SECRET_KEY }
      region: { name: aws-creds, key: REGION }
    wal: { compression: gzip, encryption: AES256, maxParallel: 4 }
    data: { compression: gzip, encryption: AES256, jobs: 4, immediateCheckpoint: true }
    retentionPolicy: 30d
"#;

fn module_path() -> PathBuf {
    std::env::var_os("PGWARDEN_POLICY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies"))
        .join("default.wasm")
}

fn requests() -> Vec<Request> {
    let cluster: Box<pgwarden_crds::Cluster> = Box::new(serde_saphyr::from_str(CLUSTER).unwrap());
    vec![
        Request::ArchiveSettings {
            cluster: cluster.clone(),
        },
        Request::InstancePod {
            cluster,
            instance: 1,
            instances: vec![],
        },
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sample(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The figures the design asks for, printed and written as JSON.
fn figures(policy: &Policy, bytes: &[u8], cold: &[Duration], calls: usize) {
    let native = Native::<DefaultPolicy>::default();
    let mut rows = Vec::new();
    for request in requests() {
        assert_eq!(
            policy.decide(&request).unwrap().to_json(),
            native
                .decide(&Settings::empty(), &request)
                .unwrap()
                .to_json()
        );
        let wasm = sample(calls, || drop(policy.decide(&request).unwrap()));
        let nat = sample(calls, || {
            drop(native.decide(&Settings::empty(), &request).unwrap())
        });
        let (w50, w99, n50, n99) = (
            percentile(&wasm, 0.5),
            percentile(&wasm, 0.99),
            percentile(&nat, 0.5),
            percentile(&nat, 0.99),
        );
        let ratio = micros(w50) / micros(n50);
        println!(
            "{:<17} wasm p50 {:>8.1} µs  p99 {:>8.1} µs | native p50 {:>7.1} µs  p99 {:>7.1} µs | ratio p50 {ratio:.1}x",
            request.decision(),
            micros(w50),
            micros(w99),
            micros(n50),
            micros(n99)
        );
        rows.push(serde_json::json!({
            "decision": request.decision(), "calls": calls,
            "wasmP50Micros": micros(w50), "wasmP99Micros": micros(w99),
            "nativeP50Micros": micros(n50), "nativeP99Micros": micros(n99), "ratioP50": ratio,
        }));
    }
    let cold_ms: Vec<f64> = cold.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    println!(
        "module default.wasm: {} bytes; cold compile + load: {:?} ms",
        bytes.len(),
        cold_ms
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let report = serde_json::json!({ "moduleBytes": bytes.len(), "coldCompileMillis": cold_ms, "decisions": rows });
    let _ = std::fs::write(
        out.join("policy.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );
}

fn bench(c: &mut Criterion) {
    let bytes = std::fs::read(module_path()).expect("run `cargo xtask build-policies` first");
    // Cold: a new engine without disk cache compiles the component from scratch.
    // `cargo bench` passes --bench; under `cargo test --all-targets` this is a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let cold: Vec<Duration> = (0..if full { 3 } else { 1 })
        .map(|_| {
            let t = Instant::now();
            Engine::new(EngineConfig::default())
                .unwrap()
                .load(&bytes, Limits::default())
                .unwrap();
            t.elapsed()
        })
        .collect();
    let policy = Engine::new(EngineConfig::default())
        .unwrap()
        .load(&bytes, Limits::default())
        .unwrap();
    figures(&policy, &bytes, &cold, if full { 2000 } else { 20 });
    if !full {
        return;
    }
    let native = Native::<DefaultPolicy>::default();
    for request in requests() {
        let mut group = c.benchmark_group(request.decision());
        group.bench_function("wasm", |b| b.iter(|| policy.decide(&request).unwrap()));
        group.bench_function("native", |b| {
            b.iter(|| native.decide(&Settings::empty(), &request).unwrap())
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
