//! Fixture tests of a policy: `Testcase { request, expect }` files, run natively by
//! [`Native`] under `cargo test`, or through wasmtime by the host (`pgwarden policy test`),
//! with the same runner and the same report.
//!
//! A case is a YAML (or JSON) file:
//!
//! ```yaml
//! settings: { cpu: "2" }       # optional: the policy's settings (ReconcilePolicy.spec.settings)
//! request:                     # a Request: the decision and its inputs
//!   decision: archive-settings
//!   cluster: { apiVersion: postgresql.k8s.2ndq.io/v1alpha1, kind: Cluster, ... }
//! expect:
//!   allowed: { destinationPath: s3://backups/pg, ... }   # the decision as JSON
//!   # or: denied: "spec.backup.wal.encryption"          # a substring of the denial
//! ```
//!
//! A case may extend another file (`base: other.yaml`) and state only what differs: see
//! [`files`].

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crds::settings::{ArchiveSettings, BackupSettings};
use crate::glue::Exports;
use crate::policy::Policy;
use crate::types::{
    ClusterHealth, Decision, Denial, Expiry, Instance, Outcome, Promotion, Request,
    ScheduleDecision, Settings, Storage, Transition,
};
use crate::wit::{self, Guest};

pub mod files;
pub use files::{bless_dir, case_paths, load_case, load_dir};

/// Something that answers decisions: the native policy code, or a wasm module in the host.
pub trait Evaluator {
    /// The policy's outcome (a decision or a denial) under `settings`; `Err` when the policy
    /// itself failed (a trap, a deadline, malformed output...).
    fn evaluate(&self, settings: &Settings, request: &Request) -> Result<Outcome, String>;
}

impl Outcome {
    /// A decision or a denial as an outcome.
    pub fn from_decided(decided: Result<Decision, Denial>) -> Outcome {
        match decided {
            Ok(decision) => Outcome::Allowed(decision.to_json()),
            Err(denial) => Outcome::Denied(denial.message),
        }
    }
}

/// The object as the JSON text the host sends across the boundary.
pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Runs policy `P` natively through the very functions its component exports.
pub struct Native<P>(PhantomData<P>);

impl<P> Default for Native<P> {
    fn default() -> Self {
        Native(PhantomData)
    }
}

fn wit_instances(instances: &[Instance]) -> Vec<wit::Instance> {
    instances.iter().cloned().map(wit::Instance::from).collect()
}

impl<P: Policy> Native<P> {
    /// One decision under `settings`, natively, through the export glue, as the host asks
    /// it: the settings checked first (as at load), and the Cluster validated before the
    /// decisions about its objects (as the host's `cluster_decisions` does).
    pub fn decide(&self, settings: &Settings, request: &Request) -> Result<Decision, Denial> {
        let s = settings.to_json();
        Exports::<P>::validate_settings(s.clone()).map_err(Denial::from)?;
        if let Request::InstancePod { cluster, .. }
        | Request::Storage { cluster, .. }
        | Request::ArchiveSettings { cluster } = request
        {
            Exports::<P>::validate(s.clone(), json(cluster)).map_err(Denial::from)?;
        }
        match cluster_decision::<P>(&s, request) {
            Some(decided) => decided,
            None => backup_decision::<P>(s, request),
        }
    }
}

/// The decisions about a Cluster and its objects; `None` for another request.
fn cluster_decision<P: Policy>(s: &str, request: &Request) -> Option<Result<Decision, Denial>> {
    type E<P> = Exports<P>;
    let s = || s.to_string();
    let denied = Denial::from;
    let decided = (|| {
        Ok(match request {
            Request::ValidateSettings {} => Decision::Valid(true),
            Request::Validate { cluster } => {
                E::<P>::validate(s(), json(cluster)).map_err(denied)?;
                Decision::Valid(true)
            }
            Request::InstancePod {
                cluster,
                instance,
                instances,
            } => {
                let text =
                    E::<P>::instance_pod(s(), json(cluster), *instance, wit_instances(instances))
                        .map_err(denied)?;
                Decision::InstancePod(
                    serde_json::from_str(&text).map_err(|e| Denial::from(e.to_string()))?,
                )
            }
            Request::Storage {
                cluster,
                instance,
                current,
            } => {
                let current = current.clone().map(wit::ClaimFacts::from);
                Decision::Storage(Storage::from(
                    E::<P>::storage(s(), json(cluster), *instance, current).map_err(denied)?,
                ))
            }
            Request::ArchiveSettings { cluster } => Decision::ArchiveSettings(
                E::<P>::archive_settings(s(), json(cluster))
                    .map_err(denied)?
                    .map(ArchiveSettings::from),
            ),
            Request::ClusterStatus(facts) => Decision::ClusterStatus(ClusterHealth::from(
                E::<P>::cluster_status(s(), wit::ClusterFacts::from(&**facts)).map_err(denied)?,
            )),
            Request::Failover(facts) => Decision::Failover(
                E::<P>::failover(s(), wit::FailoverFacts::from(&**facts))
                    .map_err(denied)?
                    .map(Promotion::from),
            ),
            _ => return Err(None),
        })
    })();
    match decided {
        Ok(decision) => Some(Ok(decision)),
        Err(Some(denial)) => Some(Err(denial)),
        Err(None) => None,
    }
}

/// The decisions about Backups: how one is taken, its phases, schedules and retention.
fn backup_decision<P: Policy>(s: String, request: &Request) -> Result<Decision, Denial> {
    type E<P> = Exports<P>;
    let denied = Denial::from;
    Ok(match request {
        Request::BackupSettings {
            backup,
            cluster,
            instances,
        } => Decision::BackupSettings(BackupSettings::from(
            E::<P>::backup_settings(s, json(backup), json(cluster), wit_instances(instances))
                .map_err(denied)?,
        )),
        Request::BackupTransition(facts) => {
            let facts = wit::BackupFacts {
                backup: json(&facts.backup),
                cluster: facts.cluster.as_ref().map(json),
                pod: facts.pod.as_ref().map(wit::PodFacts::from),
                now: facts.now.timestamp(),
            };
            Decision::BackupTransition(Transition::from(
                E::<P>::backup_transition(s, facts).map_err(denied)?,
            ))
        }
        Request::Schedule {
            scheduled_backup,
            now,
        } => Decision::Schedule(ScheduleDecision::from(
            E::<P>::schedule(s, json(scheduled_backup), now.timestamp()).map_err(denied)?,
        )),
        Request::Retention {
            cluster,
            backups,
            now,
        } => Decision::Retention(
            E::<P>::retention(
                s,
                json(cluster),
                backups.iter().map(json).collect(),
                now.timestamp(),
            )
            .map_err(denied)?
            .into_iter()
            .map(Expiry::from)
            .collect(),
        ),
        other => {
            return Err(Denial::from(format!(
                "the native runner cannot answer {}",
                other.decision()
            )));
        }
    })
}

impl<P: Policy> Evaluator for Native<P> {
    fn evaluate(&self, settings: &Settings, request: &Request) -> Result<Outcome, String> {
        Ok(Outcome::from_decided(self.decide(settings, request)))
    }
}

/// What a case expects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Expectation {
    /// The decision, as JSON, exactly.
    Allowed(serde_json::Value),
    /// A denial whose message contains this text.
    Denied(String),
}

/// One fixture: a request and the expected outcome.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Testcase {
    /// The case's name (default: the file name).
    #[serde(default)]
    pub name: String,
    /// The policy's settings (`ReconcilePolicy.spec.settings`); none: `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
    pub request: Request,
    pub expect: Expectation,
}

impl Testcase {
    /// The case's settings (`{}` when it has none).
    pub fn settings(&self) -> Result<Settings, Denial> {
        Ok(self
            .settings
            .clone()
            .map_or_else(Settings::empty, Settings::from))
    }
}

/// The result of one case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// Why it failed: a diff of expected and actual, or the error.
    pub detail: String,
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

fn diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .header("expected", "actual")
        .to_string()
}

/// Runs one case and compares.
pub fn run_case(case: &Testcase, evaluator: &dyn Evaluator) -> CaseResult {
    let settings = case.settings().map_err(|d| d.message);
    let outcome = settings.and_then(|s| evaluator.evaluate(&s, &case.request));
    let (passed, detail) = match (outcome, &case.expect) {
        (Err(failure), _) => (false, format!("the policy failed: {failure}")),
        (Ok(Outcome::Allowed(actual)), Expectation::Allowed(expected)) => (
            &actual == expected,
            diff(&pretty(expected), &pretty(&actual)),
        ),
        (Ok(Outcome::Denied(message)), Expectation::Denied(part)) => (
            message.contains(part.as_str()),
            format!("denial {message:?} does not contain {part:?}"),
        ),
        (Ok(Outcome::Allowed(actual)), Expectation::Denied(part)) => (
            false,
            format!(
                "expected a denial containing {part:?}, got a decision:\n{}",
                pretty(&actual)
            ),
        ),
        (Ok(Outcome::Denied(message)), Expectation::Allowed(expected)) => (
            false,
            format!(
                "expected a decision:\n{}got a denial: {message}",
                pretty(expected)
            ),
        ),
    };
    let detail = if passed { String::new() } else { detail };
    CaseResult {
        name: case.name.clone(),
        passed,
        detail,
    }
}

/// Runs every case of `dir`; prints a line per case (and the diff of failures) into `out`.
pub fn run_dir(
    dir: &Path,
    evaluator: &dyn Evaluator,
    out: &mut String,
) -> Result<Vec<CaseResult>, String> {
    let results: Vec<CaseResult> = load_dir(dir)?
        .iter()
        .map(|c| run_case(c, evaluator))
        .collect();
    for r in &results {
        let _ = writeln!(out, "{} {}", if r.passed { "pass" } else { "FAIL" }, r.name);
        if !r.passed {
            for line in r.detail.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    let _ = writeln!(
        out,
        "{} cases: {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    Ok(results)
}

/// For a policy crate's `cargo test`: runs the fixtures of `dir` natively with policy `P`
/// and panics with the report if any case fails or there is none. With
/// `PGWARDEN_BLESS=1`, first rewrites the expectations with the current answers.
pub fn assert_fixtures<P: Policy>(dir: &Path) {
    if std::env::var_os("PGWARDEN_BLESS").is_some() {
        bless_dir(dir, &Native::<P>::default()).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut report = String::new();
    let results =
        run_dir(dir, &Native::<P>::default(), &mut report).unwrap_or_else(|e| panic!("{e}"));
    assert!(!results.is_empty(), "no fixture cases in {}", dir.display());
    assert!(
        results.iter().all(|r| r.passed),
        "fixture failures in {}:\n{report}",
        dir.display()
    );
}
