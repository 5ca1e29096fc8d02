//! `restore NEW --from-backup B | --from-cluster C [--target-time T]`: prints the manifest of
//! a Cluster bootstrapped by recovery, its settings copied from the source Cluster, once the
//! API server accepted it in a dry-run.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use kube::Api;
use kube::api::PostParams;
use pgwarden_crds::{
    Backup, BackupPhase, Bootstrap, BootstrapRecovery, Cluster, ClusterSpec, LocalObjectReference,
    RecoveryTarget,
};

use crate::{Target, get_cluster};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["from_backup", "from_cluster"])))]
pub struct Args {
    /// Name of the new Cluster.
    new_cluster: String,
    /// Restore this Backup (a completed Backup object of the namespace).
    #[arg(long)]
    from_backup: Option<String>,
    /// Restore from this Cluster's object store (its backups and archived WAL).
    #[arg(long)]
    from_cluster: Option<String>,
    /// With --from-cluster: stop recovery at this time (RFC 3339, e.g.
    /// 2026-12-01T10:00:00Z). Default: replay all archived WAL.
    #[arg(long, requires = "from_cluster")]
    target_time: Option<String>,
}

pub async fn run(target: &Target, args: &Args) -> Result<ExitCode> {
    let (source, recovery) = match (&args.from_backup, &args.from_cluster) {
        (Some(backup), _) => from_backup(target, backup).await?,
        (None, Some(cluster)) => from_cluster(target, cluster, args.target_time.as_deref()).await?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let cluster = manifest(&args.new_cluster, &target.namespace, &source, recovery);
    let api: Api<Cluster> = Api::namespaced(target.client.clone(), &target.namespace);
    // The API server's own admission (schemas, CEL rules) judges the manifest before anyone
    // applies it: a dry-run create writes nothing.
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&dry_run, &cluster).await.with_context(|| {
        format!(
            "the API server refused the restore manifest of Cluster {}/{} (dry-run)",
            target.namespace, args.new_cluster
        )
    })?;
    print!("{}", pgwarden_crds::to_yaml(&cluster)?);
    Ok(ExitCode::SUCCESS)
}

/// The source Cluster of Backup `name` and a recovery from that Backup.
async fn from_backup(target: &Target, name: &str) -> Result<(Cluster, BootstrapRecovery)> {
    let api: Api<Backup> = Api::namespaced(target.client.clone(), &target.namespace);
    let backup = api
        .get_opt(name)
        .await?
        .with_context(|| format!("Backup {name} not found in namespace {}", target.namespace))?;
    let phase = backup.status.as_ref().and_then(|s| s.phase);
    if phase != Some(BackupPhase::Completed) {
        bail!(
            "Backup {name} is {}, not completed: only a completed Backup can be restored",
            phase.map_or("pending".into(), |p| format!("{p:?}").to_lowercase())
        );
    }
    let source = get_cluster(target, &backup.spec.cluster.name)
        .await
        .with_context(|| {
            format!(
                "the settings of Backup {name}'s Cluster are needed (without it, write the manifest with bootstrap.recovery.source)"
            )
        })?;
    let recovery = BootstrapRecovery {
        backup: Some(LocalObjectReference { name: name.into() }),
        ..Default::default()
    };
    Ok((source, recovery))
}

/// Cluster `name` and a recovery from its object store, up to `target_time` if given.
async fn from_cluster(
    target: &Target,
    name: &str,
    target_time: Option<&str>,
) -> Result<(Cluster, BootstrapRecovery)> {
    let source = get_cluster(target, name).await?;
    let Some(mut store) = source.spec.backup.clone() else {
        bail!("Cluster {name} has no spec.backup: there is no object store to restore from");
    };
    // The source's folder, named explicitly: the default is the name of the Cluster that
    // reads the manifest, the new one.
    store.server_name = store.server_name.or_else(|| Some(name.to_string()));
    let recovery_target = match target_time {
        Some(t) => {
            chrono::DateTime::parse_from_rfc3339(t).with_context(|| {
                format!("--target-time {t:?} is not an RFC 3339 time with a zone, like 2026-12-01T10:00:00Z")
            })?;
            warn_if_before_first_point(&source, t);
            Some(RecoveryTarget {
                target_time: Some(t.into()),
                ..Default::default()
            })
        }
        None => None,
    };
    let recovery = BootstrapRecovery {
        source: Some(store),
        recovery_target,
        ..Default::default()
    };
    Ok((source, recovery))
}

fn warn_if_before_first_point(source: &Cluster, t: &str) {
    let first = source
        .status
        .as_ref()
        .and_then(|s| s.first_recoverability_point.as_deref());
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    if let (Some(first), Some(at)) = (first.and_then(parse), parse(t))
        && at < first
    {
        eprintln!(
            "warning: --target-time {t} is before the first recoverability point {first}: no backup can reach it"
        );
    }
}

/// The new Cluster: the source's spec (instances, image, storage, PostgreSQL settings,
/// resources, policy, object store, and whatever else it sets), `recovery` as its bootstrap.
/// It archives to the same store under its own folder (serverName unset: its own name), never
/// into the source's.
fn manifest(name: &str, namespace: &str, source: &Cluster, recovery: BootstrapRecovery) -> Cluster {
    let mut spec: ClusterSpec = source.spec.clone();
    if let Some(store) = spec.backup.as_mut() {
        store.server_name = None;
    }
    spec.bootstrap = Some(Bootstrap {
        initdb: None,
        recovery: Some(recovery),
    });
    let mut cluster = Cluster::new(name, spec);
    cluster.metadata.namespace = Some(namespace.into());
    cluster
}
