//! `pgwarden policy eval|test`: a dry run of a module on objects (the operator's plans, minus
//! the writes), and its fixture tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use kube::ResourceExt;
use pgwarden_sdk::testing::Evaluator;
use pgwarden_sdk::types::{BackupFacts, DECISIONS, Outcome, Request};
use serde_json::{Value, json};

use super::{Engine, EngineConfig, Limits, Policy, PolicyError};
use crate::operator::dry::Dry;
use crate::operator::snapshot::{Observe, Snapshot};
use pgwarden_core::plan;

/// Evaluate and test policy modules.
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(clap::Subcommand, Debug)]
enum PolicyCommand {
    /// Print what the operator would do with a module on objects, as JSON (dry run): per
    /// object (`Kind/name`), the actions it plans (each with the change it needs against the
    /// observed object: `nothing` once settled), its status, Events and requeue.
    Eval {
        #[command(flatten)]
        module: ModuleArgs,
        #[command(flatten)]
        source: Source,
        /// The namespace read with `--from-cluster`.
        #[arg(long, default_value = "default", requires = "from_cluster")]
        namespace: String,
        /// Only this decision's raw answers (instance-pod, archive-settings, backup-settings,
        /// backup-transition, schedule, retention), not the plans.
        #[arg(long)]
        decision: Option<String>,
        /// The time the decisions are made at (RFC 3339). Default: now.
        #[arg(long)]
        now: Option<DateTime<Utc>>,
    },
    /// Run fixture cases (request + expected decision) against a module; report each case.
    Test {
        #[command(flatten)]
        module: ModuleArgs,
        /// Folder of `*.yaml` cases.
        dir: PathBuf,
    },
}

/// Where the observed objects come from.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct Source {
    /// YAML file of Kubernetes objects (Cluster, Backup, ScheduledBackup, Pod, Secret, and the
    /// Cluster's claims, Services, ConfigMaps, ServiceAccounts, Roles, RoleBindings), `---`
    /// separated. Without any Secret, every Secret reference is taken as resolved.
    #[arg(long)]
    input: Option<PathBuf>,
    /// A kubeconfig: read the objects of `--namespace` from its API server (list and get
    /// only; nothing is written).
    #[arg(long)]
    from_cluster: Option<PathBuf>,
}

impl Source {
    fn read(&self, namespace: &str) -> Result<Snapshot> {
        match (&self.input, &self.from_cluster) {
            (Some(path), _) => Snapshot::read(path),
            (None, Some(kubeconfig)) => list(kubeconfig, namespace),
            (None, None) => bail!("give --input or --from-cluster"),
        }
    }
}

/// Lists the namespace through the kubeconfig's API server, read-only.
fn list(kubeconfig: &Path, namespace: &str) -> Result<Snapshot> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = kube::config::Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("cannot read kubeconfig {}", kubeconfig.display()))?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(config, &options).await?;
        let client = kube::Client::try_from(config)?;
        Snapshot::list(&client, namespace).await
    })
}

#[derive(clap::Args, Debug)]
struct ModuleArgs {
    /// The policy component (`.wasm`).
    #[arg(long)]
    module: PathBuf,
    /// Deadline of one decision, in milliseconds.
    #[arg(long, default_value_t = 200)]
    timeout_ms: u64,
    /// Memory cap of one decision, in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: usize,
    /// The policy's settings (as `ReconcilePolicy.spec.settings`), a YAML or JSON file.
    #[arg(long)]
    settings: Option<PathBuf>,
}

impl ModuleArgs {
    fn load(&self) -> Result<Policy> {
        let bytes = std::fs::read(&self.module)
            .with_context(|| format!("cannot read {}", self.module.display()))?;
        let engine = Engine::new(EngineConfig::default())?;
        let limits = Limits {
            timeout: Duration::from_millis(self.timeout_ms),
            memory_bytes: self.memory_mib << 20,
        };
        let policy = engine
            .load(&bytes, limits)
            .with_context(|| format!("cannot load {}", self.module.display()))?;
        let Some(path) = &self.settings else {
            return Ok(policy);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let settings: Value = serde_saphyr::from_str(&text)
            .with_context(|| format!("{} is not YAML", path.display()))?;
        policy
            .with_settings(Some(&settings))
            .with_context(|| format!("the policy refuses the settings of {}", path.display()))
    }
}

/// Runs `pgwarden policy ...`.
pub fn run(args: PolicyArgs) -> Result<()> {
    match args.command {
        PolicyCommand::Eval {
            module,
            source,
            namespace,
            decision,
            now,
        } => {
            if let Some(d) = decision.as_deref().filter(|d| !DECISIONS.contains(d)) {
                bail!(
                    "unknown decision {d:?}: expected one of {}",
                    DECISIONS.join(", ")
                );
            }
            let policy = module.load()?;
            let snapshot = source.read(&namespace)?;
            let now = now.unwrap_or_else(Utc::now);
            let report = match decision.as_deref() {
                Some(decision) => decisions(&policy, &snapshot, decision, now),
                None => Dry::new(&policy, &snapshot.clusters).eval(&snapshot, now),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        PolicyCommand::Test { module, dir } => {
            let policy = module.load()?;
            let mut out = String::new();
            let results = pgwarden_sdk::testing::run_dir(&dir, &policy, &mut out)
                .map_err(anyhow::Error::msg)?;
            print!("{out}");
            let failed = results.iter().filter(|r| !r.passed).count();
            if failed > 0 || results.is_empty() {
                bail!(
                    "{failed} of {} cases failed in {}",
                    results.len(),
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// Each answer of one decision on the snapshot's objects, as the policy gave it.
pub fn decisions(policy: &Policy, snap: &Snapshot, decision: &str, now: DateTime<Utc>) -> Value {
    let answers: Vec<Value> = requests(snap, decision, now)
        .into_iter()
        .map(|(subject, request)| entry(decision, &subject, policy.decide(&request)))
        .collect();
    json!({ "decisions": answers })
}

/// The requests of `decision` the objects make, each with its subject (`Kind/name`).
fn requests(snap: &Snapshot, decision: &str, now: DateTime<Utc>) -> Vec<(String, Request)> {
    let mut out = Vec::new();
    for cluster in &snap.clusters {
        let subject = format!("Cluster/{}", cluster.name_any());
        let boxed = || Box::new((**cluster).clone());
        match decision {
            "archive-settings" => {
                out.push((subject, Request::ArchiveSettings { cluster: boxed() }));
            }
            "instance-pod" => {
                let pods = snap.cluster_pods(cluster);
                let instances: Vec<_> = pods.iter().map(|p| plan::instance(p)).collect();
                out.extend((0..plan::planned_instances(cluster)).map(|instance| {
                    let request = Request::InstancePod {
                        cluster: boxed(),
                        instance,
                        instances: instances.clone(),
                    };
                    (subject.clone(), request)
                }))
            }
            "retention" => {
                let backups = snap
                    .backups_of(cluster)
                    .iter()
                    .map(|b| (**b).clone())
                    .collect();
                let request = Request::Retention {
                    cluster: boxed(),
                    backups,
                    now,
                };
                out.push((subject, request));
            }
            _ => {}
        }
    }
    for backup in &snap.backups {
        let subject = format!("Backup/{}", backup.name_any());
        let ns = backup.namespace().unwrap_or_default();
        let cluster = snap.cluster(&ns, &backup.spec.cluster.name);
        match (decision, cluster) {
            ("backup-settings", Some(cluster)) => {
                let pods = snap.cluster_pods(&cluster);
                let request = Request::BackupSettings {
                    backup: Box::new((**backup).clone()),
                    cluster: Box::new((*cluster).clone()),
                    instances: pods.iter().map(|p| plan::instance(p)).collect(),
                };
                out.push((subject, request));
            }
            ("backup-transition", cluster) => {
                let pod = (backup.status.as_ref())
                    .and_then(|s| s.instance_id.as_ref()?.pod_name.clone())
                    .and_then(|name| snap.pod(&ns, &name));
                let facts = BackupFacts {
                    backup: (**backup).clone(),
                    cluster: cluster.map(|c| (*c).clone()),
                    pod: pod.map(|p| plan::pod_facts(&p)),
                    now,
                };
                out.push((subject, Request::BackupTransition(Box::new(facts))));
            }
            _ => {}
        }
    }
    if decision == "schedule" {
        out.extend(snap.scheduled.iter().map(|s| {
            let request = Request::Schedule {
                scheduled_backup: Box::new((**s).clone()),
                now,
            };
            (format!("ScheduledBackup/{}", s.name_any()), request)
        }));
    }
    out
}

/// One decision's entry in the report.
fn entry<T: serde::Serialize>(
    decision: &str,
    subject: &str,
    result: Result<T, PolicyError>,
) -> Value {
    match result {
        Ok(value) => json!({ "decision": decision, "subject": subject, "allowed": value }),
        Err(PolicyError::Denied {
            reason, message, ..
        }) => {
            json!({ "decision": decision, "subject": subject, "denied": { "reason": reason, "message": message } })
        }
        Err(e) => {
            json!({ "decision": decision, "subject": subject, "failed": { "error": e.label(), "message": e.to_string() } })
        }
    }
}

/// `pgwarden policy test` runs the SDK's fixture runner on the module.
impl Evaluator for Policy {
    fn evaluate(
        &self,
        settings: &pgwarden_sdk::types::Settings,
        request: &Request,
    ) -> std::result::Result<Outcome, String> {
        // The case's settings, checked by the policy as at load (a refusal is the denial).
        let decided = self
            .with_settings(Some(settings.value()))
            .and_then(|p| p.decide(request));
        match decided {
            Ok(decision) => Ok(Outcome::Allowed(decision.to_json())),
            Err(PolicyError::Denied { message, .. }) => Ok(Outcome::Denied(message)),
            Err(failure) => Err(failure.to_string()),
        }
    }
}
