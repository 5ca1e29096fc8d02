//! The control plane the demo talks to, and how each demo step is announced.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use pgwarden_tests::controlplane::{Isolated, run_kubectl};
use serde_json::Value;

/// The control plane the demo talks to.
pub struct Plane {
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
    pub _own: Option<Isolated>,
}

impl Plane {
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        run_kubectl(&self.kubectl, &self.kubeconfig, args, input)
            .into_result()
            .map_err(|e| anyhow::anyhow!("kubectl {}: {e}", args.join(" ")))
    }

    /// `kubectl <args> -o json`, each request bounded: a wedged API server makes the step
    /// fail with its deadline instead of hanging the demo.
    pub fn json(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["--request-timeout=20s"];
        all.extend(args);
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all, None).ok()?).ok()
    }
}

/// Runs one step of the demo, saying what it does and how long it took.
pub fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    println!("demo: {what} ...");
    let out = f().with_context(|| format!("demo step failed: {what}"))?;
    println!("demo: {what}: done in {:.1?}", t.elapsed());
    Ok(out)
}
