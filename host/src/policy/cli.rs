//! `pgwarden policy eval|test`: a dry run of a module on objects, and its fixture tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use pgwarden_crds::settings::pod as conventions;
use pgwarden_crds::{Backup, BackupPhase, Cluster, ScheduledBackup};
use pgwarden_sdk::names;
use pgwarden_sdk::testing::Evaluator;
use pgwarden_sdk::types::{BackupFacts, DECISIONS, Instance, Outcome, Request, Role};
use serde_json::{Value, json};

use super::{Engine, EngineConfig, Limits, Policy, PolicyError};
use pgwarden_core::plan::{self, Action};

/// Evaluate and test policy modules.
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(clap::Subcommand, Debug)]
enum PolicyCommand {
    /// Print a module's decisions on objects, and the actions they plan, as JSON (dry run).
    Eval {
        #[command(flatten)]
        module: ModuleArgs,
        /// YAML file of Kubernetes objects (Cluster, Backup, ScheduledBackup, Pod), `---` separated.
        #[arg(long)]
        input: PathBuf,
        /// Only this decision (instance-pod, archive-settings, backup-settings,
        /// backup-transition, schedule, retention).
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
        engine
            .load(&bytes, limits)
            .with_context(|| format!("cannot load {}", self.module.display()))
    }
}

/// Runs `pgwarden policy ...`.
pub fn run(args: PolicyArgs) -> Result<()> {
    match args.command {
        PolicyCommand::Eval {
            module,
            input,
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
            let objects = Objects::read(&input)?;
            let report = eval(
                &policy,
                &objects,
                decision.as_deref(),
                now.unwrap_or_else(Utc::now),
            );
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

/// The objects of an input file, by kind.
#[derive(Default, Debug)]
pub struct Objects {
    pub clusters: Vec<Cluster>,
    pub backups: Vec<Backup>,
    pub scheduled: Vec<ScheduledBackup>,
    pub pods: Vec<Pod>,
}

impl Objects {
    /// Reads a multi-document YAML file; unknown kinds are an error naming them.
    pub fn read(path: &Path) -> Result<Objects> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Objects::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses multi-document YAML.
    pub fn parse(text: &str) -> Result<Objects> {
        let mut objects = Objects::default();
        for value in serde_saphyr::from_multiple::<Value>(text)? {
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            match kind.as_str() {
                "" if value.is_null() => {}
                "Cluster" => objects
                    .clusters
                    .push(serde_json::from_value(value).context("not a valid Cluster")?),
                "Backup" => objects
                    .backups
                    .push(serde_json::from_value(value).context("not a valid Backup")?),
                "ScheduledBackup" => objects
                    .scheduled
                    .push(serde_json::from_value(value).context("not a valid ScheduledBackup")?),
                "Pod" => objects
                    .pods
                    .push(serde_json::from_value(value).context("not a valid Pod")?),
                other => bail!(
                    "cannot evaluate objects of kind {other:?}: expected Cluster, Backup, ScheduledBackup or Pod"
                ),
            }
        }
        Ok(objects)
    }

    fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    /// The Cluster's instances: its Pods in the input, or (none given) the instances its spec
    /// asks for, the first one primary, all ready.
    pub fn instances(&self, cluster: &Cluster) -> Vec<Instance> {
        let cluster_name = cluster.metadata.name.clone().unwrap_or_default();
        let labelled = |p: &&Pod| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(conventions::LABEL_CLUSTER))
                == Some(&cluster_name)
        };
        let pods: Vec<Instance> = self
            .pods
            .iter()
            .filter(labelled)
            .map(plan::instance)
            .collect();
        if !pods.is_empty() {
            return pods;
        }
        let count = cluster.spec.instances.max(0) as u32;
        let role = |i| if i == 0 { Role::Primary } else { Role::Replica };
        (0..count)
            .map(|i| Instance {
                name: names::instance(&cluster_name, i),
                role: role(i),
                ready: true,
            })
            .collect()
    }
}

fn wanted(filter: Option<&str>, decision: &str) -> bool {
    filter.is_none_or(|f| f == decision)
}

/// One decision's entry in the report.
fn entry<T: serde::Serialize>(
    decision: &str,
    subject: &str,
    result: &Result<T, PolicyError>,
) -> Value {
    match result {
        Ok(value) => json!({ "decision": decision, "subject": subject, "allowed": value }),
        Err(PolicyError::Denied(message)) => {
            json!({ "decision": decision, "subject": subject, "denied": message })
        }
        Err(e) => {
            json!({ "decision": decision, "subject": subject, "failed": { "error": e.label(), "message": e.to_string() } })
        }
    }
}

/// What a dry run prints: the decisions, the actions the guardrails pass, and refusals.
#[derive(Default)]
struct Report {
    decisions: Vec<Value>,
    actions: Vec<Value>,
    refused: Vec<Value>,
}

impl Report {
    /// Checks `actions` against `subject`'s guardrails: each passed or refused.
    fn guarded(&mut self, subject: &plan::Subject, actions: Vec<Action>) {
        for action in actions {
            match plan::guardrails::check_one(subject, &action) {
                Ok(()) => self
                    .actions
                    .push(serde_json::to_value(&action).unwrap_or_default()),
                Err(e) => self.refused.push(json!(e.to_string())),
            }
        }
    }
}

/// Every decision (or only `filter`) on `objects`, with the actions they plan, as JSON.
pub fn eval(policy: &Policy, objects: &Objects, filter: Option<&str>, now: DateTime<Utc>) -> Value {
    let mut report = Report::default();
    let ask = Ask {
        policy,
        objects,
        filter,
        now,
    };
    for cluster in &objects.clusters {
        ask.cluster(cluster, &mut report);
        ask.retention(cluster, &mut report);
    }
    for backup in &objects.backups {
        ask.backup(backup, &mut report);
    }
    for scheduled in &objects.scheduled {
        ask.schedule(scheduled, &mut report);
    }
    json!({
        "policy": { "digest": policy.digest(), "abiVersion": policy.abi_version() },
        "now": now,
        "decisions": report.decisions,
        "actions": report.actions,
        "refused": report.refused,
    })
}

/// One dry run's policy, objects, decision filter and time.
struct Ask<'a> {
    policy: &'a Policy,
    objects: &'a Objects,
    filter: Option<&'a str>,
    now: DateTime<Utc>,
}

impl Ask<'_> {
    fn wanted(&self, decision: &str) -> bool {
        wanted(self.filter, decision)
    }

    /// A Cluster's archive settings and pods, and the objects they plan.
    fn cluster(&self, cluster: &Cluster, report: &mut Report) {
        let subject = plan::subject(cluster);
        let name = format!("Cluster {}", subject.object.name);
        let archive = self.policy.archive_settings(cluster);
        if self.wanted("archive-settings") {
            report
                .decisions
                .push(entry("archive-settings", &name, &archive));
        }
        let count = cluster.spec.instances.max(0) as u32;
        let pods: Vec<_> = (0..count)
            .map(|i| self.policy.instance_pod(cluster, i))
            .collect();
        if self.wanted("instance-pod") {
            let pods = pods.iter().map(|p| entry("instance-pod", &name, p));
            report.decisions.extend(pods);
        }
        let pods = pods.into_iter().collect::<Result<Vec<_>, _>>();
        if let (Ok(archive), Ok(pods), true) = (archive, pods, self.filter.is_none()) {
            match plan::plan_cluster(cluster, &plan::ClusterDecisions { archive, pods }) {
                Ok(planned) => report.guarded(&subject, planned),
                Err(e) => report.refused.push(json!(e.to_string())),
            }
        }
    }

    /// A Cluster's retention over its Backups, and the deletions it plans.
    fn retention(&self, cluster: &Cluster, report: &mut Report) {
        let cluster_name = cluster.metadata.name.clone().unwrap_or_default();
        let backups: Vec<Backup> = (self.objects.backups.iter())
            .filter(|b| b.spec.cluster.name == cluster_name)
            .cloned()
            .collect();
        let live = plan::retention::candidates(cluster, &backups);
        if !self.wanted("retention") || live.is_empty() {
            return;
        }
        let doomed = self.policy.retention(cluster, &live, self.now);
        let name = format!("Cluster {cluster_name}");
        report.decisions.push(entry("retention", &name, &doomed));
        let Ok(doomed) = doomed else {
            return;
        };
        // The agent of the first instance deletes, as on a Cluster whose primary is 1.
        let pod = format!("{cluster_name}-1");
        let planned = plan::plan_retention(&plan::RetentionInput {
            cluster,
            backups: &backups,
            expired: &doomed,
            agent_pod: Some(&pod),
            now: self.now,
        });
        for action in planned {
            let subject = plan::retention_subject(cluster, &backups, &action);
            report.guarded(&subject, vec![action]);
        }
    }

    /// A ScheduledBackup's schedule, and the Backup it creates.
    fn schedule(&self, scheduled: &ScheduledBackup, report: &mut Report) {
        if !self.wanted("schedule") {
            return;
        }
        let subject = plan::scheduled_subject(scheduled);
        let decision = self.policy.schedule(scheduled, self.now);
        let name = format!("ScheduledBackup {}", subject.object.name);
        report.decisions.push(entry("schedule", &name, &decision));
        if let Ok(decision) = decision {
            let cluster = self.objects.cluster(&scheduled.spec.cluster.name);
            let planned = plan::plan_schedule(scheduled, cluster, &decision, self.now);
            report.guarded(&subject, planned);
        }
    }

    /// A Backup's settings (while pending) and transition, and the status they plan.
    fn backup(&self, backup: &Backup, report: &mut Report) {
        let (policy, objects, filter, now) = (self.policy, self.objects, self.filter, self.now);
        let subject = plan::backup_subject(backup);
        let name = format!("Backup {}", subject.object.name);
        let cluster = objects.cluster(&backup.spec.cluster.name);
        let pending = backup
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(BackupPhase::Pending)
            == BackupPhase::Pending;
        let settings = cluster
            .filter(|_| pending)
            .map(|cluster| policy.backup_settings(backup, cluster, &objects.instances(cluster)));
        if let (Some(settings), true) = (&settings, wanted(filter, "backup-settings")) {
            report
                .decisions
                .push(entry("backup-settings", &name, settings));
        }
        let settings = settings.and_then(Result::ok);
        let pod_name = settings.as_ref().map(|s| s.target_pod.clone()).or_else(|| {
            backup
                .status
                .as_ref()?
                .instance_id
                .as_ref()?
                .pod_name
                .clone()
        });
        let pod = pod_name
            .and_then(|n| {
                objects
                    .pods
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(&n))
            })
            .map(plan::pod_facts);
        let facts = BackupFacts {
            backup: backup.clone(),
            cluster: cluster.cloned(),
            pod,
            now,
        };
        if wanted(filter, "backup-transition") {
            let transition = policy.backup_transition(&facts);
            report
                .decisions
                .push(entry("backup-transition", &name, &transition));
            if let Ok(t) = transition {
                let planned = plan::plan_backup(backup, cluster, &t, settings.as_ref(), now);
                report.guarded(&subject, planned);
            }
        }
    }
}

/// `pgwarden policy test` runs the SDK's fixture runner on the module.
impl Evaluator for Policy {
    fn evaluate(&self, request: &Request) -> std::result::Result<Outcome, String> {
        match self.decide(request) {
            Ok(decision) => Ok(Outcome::Allowed(decision.to_json())),
            Err(PolicyError::Denied(message)) => Ok(Outcome::Denied(message)),
            Err(failure) => Err(failure.to_string()),
        }
    }
}
