//! `backup CLUSTER [--name N] [--wait]`: creates a Backup and, with `--wait`, follows its
//! phase until it completes or fails.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Api;
use kube::api::PostParams;
use pgwarden_crds::{Backup, BackupPhase, BackupSpec, BackupStatus, LocalObjectReference};

use crate::{Target, get_cluster};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Cluster to back up.
    cluster: String,
    /// Name of the Backup. Default: `<cluster>-<UTC time, YYYYMMDDhhmmss>`.
    #[arg(long)]
    name: Option<String>,
    /// Follow the Backup until it completes (exit 0) or fails (exit 1, naming the error).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 2).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

pub async fn run(target: &Target, args: &Args) -> Result<ExitCode> {
    // A Backup of a missing Cluster would wait for it forever: say so now.
    get_cluster(target, &args.cluster).await?;
    let name = args.name.clone().unwrap_or_else(|| {
        let now = chrono::Utc::now().format("%Y%m%d%H%M%S");
        format!("{}-{now}", args.cluster)
    });
    let api: Api<Backup> = Api::namespaced(target.client.clone(), &target.namespace);
    let backup = Backup::new(
        &name,
        BackupSpec {
            cluster: LocalObjectReference {
                name: args.cluster.clone(),
            },
            target: None,
        },
    );
    api.create(&PostParams::default(), &backup)
        .await
        .with_context(|| format!("cannot create Backup {}/{name}", target.namespace))?;
    println!("backup {}/{name} created", target.namespace);
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow(&api, &name, Duration::from_secs(args.timeout)).await
}

/// Prints each phase the Backup passes through; its exit code once it ends.
async fn follow(api: &Api<Backup>, name: &str, timeout: Duration) -> Result<ExitCode> {
    let start = Instant::now();
    let mut shown: Option<(Option<BackupPhase>, Option<String>)> = None;
    loop {
        let Some(backup) = api.get_opt(name).await? else {
            bail!("Backup {name} was deleted while it was followed");
        };
        let status = backup.status.unwrap_or_default();
        let now = (status.phase, status.reason.clone());
        if shown.as_ref() != Some(&now) {
            println!("{}", progress_line(&status, start.elapsed()));
            shown = Some(now);
        }
        match status.phase {
            Some(BackupPhase::Completed) => return Ok(ExitCode::SUCCESS),
            Some(BackupPhase::Failed) => {
                let why = status
                    .error
                    .or(status.message)
                    .unwrap_or_else(|| "no error reported".into());
                eprintln!("error: Backup {name} failed: {why}");
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            eprintln!(
                "error: Backup {name} did not end within {} s (it goes on)",
                timeout.as_secs()
            );
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn progress_line(status: &BackupStatus, elapsed: Duration) -> String {
    let phase = status
        .phase
        .map(|p| format!("{p:?}").to_lowercase())
        .unwrap_or_else(|| "waiting for the operator".into());
    let mut line = format!("[{:>4}s] {phase}", elapsed.as_secs());
    if let Some(pod) = status
        .instance_id
        .as_ref()
        .and_then(|i| i.pod_name.as_ref())
    {
        line.push_str(&format!(" on {pod}"));
    }
    if let Some(reason) = &status.reason {
        line.push_str(&format!(" ({reason})"));
    }
    if status.phase == Some(BackupPhase::Completed) {
        let id = status.backup_id.as_deref().unwrap_or("-");
        let wal = match (&status.begin_wal, &status.end_wal) {
            (Some(b), Some(e)) => format!(", WAL {b}..{e}"),
            _ => String::new(),
        };
        line.push_str(&format!(": backup id {id}{wal}"));
    }
    line
}
