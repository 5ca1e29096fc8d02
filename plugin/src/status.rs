//! `status CLUSTER`: what the operator and the agents reported, in four tables.

use std::process::ExitCode;

use anyhow::Result;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Attribute, Cell, Color, Table};
use kube::Api;
use pgwarden_crds::{ArchiveStatus, Backup, Cluster, InstanceStatus};

use crate::{Target, get_cluster};

pub async fn run(target: &Target, name: &str) -> Result<ExitCode> {
    let cluster = get_cluster(target, name).await?;
    let last_backup = latest_backup(target, name).await?;
    print!(
        "{}",
        render(&cluster, last_backup.as_ref(), crate::colour())
    );
    Ok(ExitCode::SUCCESS)
}

/// The Cluster's most recently created Backup (none when there is none or they cannot be
/// listed: the status is still worth showing).
async fn latest_backup(target: &Target, cluster: &str) -> Result<Option<Backup>> {
    let api: Api<Backup> = Api::namespaced(target.client.clone(), &target.namespace);
    let Ok(list) = api.list(&Default::default()).await else {
        return Ok(None);
    };
    Ok(list
        .items
        .into_iter()
        .filter(|b| b.spec.cluster.name == cluster)
        .max_by_key(|b| b.metadata.creation_timestamp.clone().map(|t| t.0)))
}

/// The whole report: overview, instances, WAL archiving, conditions.
pub fn render(cluster: &Cluster, last_backup: Option<&Backup>, colour: bool) -> String {
    let status = cluster.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut section = |title: &str, table: Table| {
        let title = if colour {
            format!("\x1b[1m{title}\x1b[0m")
        } else {
            title.to_string()
        };
        out.push_str(&format!("{title}\n{table}\n\n"));
    };
    section("Cluster", overview(cluster, last_backup, colour));
    section("Instances", instances(&status.instances_status, colour));
    section(
        "WAL archiving",
        archiving(status.archive.as_ref(), cluster, colour),
    );
    section("Conditions", conditions(&status.conditions, colour));
    out
}

fn table(colour: bool, header: Option<&[&str]>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    if colour {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    if let Some(header) = header {
        t.set_header(
            header
                .iter()
                .map(|h| Cell::new(h).add_attribute(Attribute::Bold)),
        );
    }
    t
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn good_bad(text: String, good: Option<bool>) -> Cell {
    match good {
        Some(true) => Cell::new(text).fg(Color::Green),
        Some(false) => Cell::new(text).fg(Color::Red),
        None => Cell::new(text).fg(Color::Yellow),
    }
}

fn overview(cluster: &Cluster, last_backup: Option<&Backup>, colour: bool) -> Table {
    let status = cluster.status.clone().unwrap_or_default();
    let mut t = table(colour, None);
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    t.add_row(vec![Cell::new("Name"), Cell::new(format!("{ns}/{name}"))]);
    t.add_row(vec!["Phase".into(), Cell::new(or_dash(status.phase))]);
    t.add_row(vec![
        Cell::new("Primary"),
        good_bad(
            or_dash(status.current_primary.clone()),
            Some(status.current_primary.is_some()),
        ),
    ]);
    if status.target_primary.is_some() && status.target_primary != status.current_primary {
        t.add_row(vec![
            Cell::new("Target primary"),
            good_bad(or_dash(status.target_primary), None),
        ]);
    }
    let ready = status.ready_instances.unwrap_or(0);
    t.add_row(vec![
        Cell::new("Ready instances"),
        good_bad(
            format!("{ready}/{}", cluster.spec.instances),
            Some(ready == cluster.spec.instances),
        ),
    ]);
    let policy = status.policy.and_then(|p| p.name);
    t.add_row(vec!["Policy".into(), Cell::new(or_dash(policy))]);
    t.add_row(vec![
        Cell::new("First recoverability point"),
        Cell::new(or_dash(status.first_recoverability_point)),
    ]);
    t.add_row(vec![
        Cell::new("Last backup"),
        last_backup_cell(last_backup),
    ]);
    if let Some(failed) = status.last_failed_backup {
        t.add_row(vec![
            Cell::new("Last failed backup"),
            Cell::new(failed).fg(Color::Red),
        ]);
    }
    t
}

fn last_backup_cell(backup: Option<&Backup>) -> Cell {
    let Some(b) = backup else {
        return Cell::new("-");
    };
    let s = b.status.clone().unwrap_or_default();
    let phase = s.phase.map(|p| format!("{p:?}").to_lowercase());
    let mut text = format!(
        "{} ({})",
        b.metadata.name.clone().unwrap_or_default(),
        or_dash(phase.clone())
    );
    if let Some(id) = s.backup_id {
        text.push_str(&format!(", id {id}"));
    }
    if let Some(at) = s.stopped_at.or(s.started_at) {
        text.push_str(&format!(", {at}"));
    }
    if let Some(error) = s.error {
        text.push_str(&format!(": {error}"));
    }
    let good = match phase.as_deref() {
        Some("completed") => Some(true),
        Some("failed") => Some(false),
        _ => None,
    };
    good_bad(text, good)
}

fn instances(list: &[InstanceStatus], colour: bool) -> Table {
    let header = [
        "Instance",
        "Role",
        "Ready",
        "Streaming",
        "Received LSN",
        "Replayed LSN",
        "Lag",
        "Reported",
    ];
    let mut t = table(colour, Some(&header));
    for i in list {
        let lag = match (i.lag_bytes, i.lag_seconds) {
            (None, None) => "-".to_string(),
            (b, s) => format!("{} B, {} s", b.unwrap_or(0), s.unwrap_or(0)),
        };
        let role = or_dash(i.role.clone());
        let streaming = if i.role.as_deref() == Some("primary") {
            "-".to_string()
        } else {
            or_dash(i.streaming)
        };
        t.add_row(vec![
            Cell::new(&i.name),
            Cell::new(role),
            good_bad(or_dash(i.ready), Some(i.ready == Some(true))),
            Cell::new(streaming),
            Cell::new(or_dash(i.received_lsn.clone())),
            Cell::new(or_dash(i.replayed_lsn.clone())),
            Cell::new(lag),
            Cell::new(or_dash(i.reported_at.clone())),
        ]);
    }
    t
}

fn archiving(archive: Option<&ArchiveStatus>, cluster: &Cluster, colour: bool) -> Table {
    let mut t = table(colour, None);
    let destination = cluster
        .spec
        .backup
        .as_ref()
        .map(|b| b.destination_path.clone());
    t.add_row(vec![
        Cell::new("Destination"),
        Cell::new(or_dash(destination)),
    ]);
    let Some(a) = archive else {
        t.add_row(vec![Cell::new("Reported"), Cell::new("nothing yet")]);
        return t;
    };
    let failing = a.last_failed_time.is_some() && a.last_failed_time > a.last_archived_time;
    let rows = [
        ("Reported by", or_dash(a.pod_name.clone()), Some(true)),
        ("Archived WAL files", or_dash(a.archived_count), Some(true)),
        (
            "Last archived WAL",
            at(&a.last_archived_wal, &a.last_archived_time),
            Some(a.last_archived_wal.is_some()),
        ),
        (
            "Waiting to be archived",
            format!(
                "{} file(s), oldest {} s",
                a.ready_segments.unwrap_or(0),
                a.oldest_ready_age_seconds.unwrap_or(0)
            ),
            Some(a.ready_segments.unwrap_or(0) <= 1),
        ),
        ("Failed attempts", or_dash(a.failed_count), Some(!failing)),
        (
            "Last failed WAL",
            at(&a.last_failed_wal, &a.last_failed_time),
            Some(!failing),
        ),
    ];
    for (key, value, good) in rows {
        t.add_row(vec![Cell::new(key), good_bad(value, good)]);
    }
    if let Some(why) = &a.last_failure {
        t.add_row(vec![
            Cell::new("Last failure"),
            good_bad(why.clone(), Some(!failing)),
        ]);
    }
    t.add_row(vec![
        Cell::new("Destination checked"),
        good_bad(or_dash(a.destination_checked), a.destination_checked),
    ]);
    t.add_row(vec![
        Cell::new("Reported at"),
        Cell::new(or_dash(a.reported_at.clone())),
    ]);
    t
}

fn at(what: &Option<String>, when: &Option<String>) -> String {
    match (what, when) {
        (Some(w), Some(t)) => format!("{w} at {t}"),
        (Some(w), None) => w.clone(),
        _ => "-".into(),
    }
}

fn conditions(
    list: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    colour: bool,
) -> Table {
    let header = ["Type", "Status", "Reason", "Message", "Since"];
    let mut t = table(colour, Some(&header));
    for c in list {
        let good = match c.status.as_str() {
            "True" => Some(true),
            "False" => Some(false),
            _ => None,
        };
        t.add_row(vec![
            Cell::new(&c.type_),
            good_bad(c.status.clone(), good),
            Cell::new(&c.reason),
            Cell::new(&c.message),
            Cell::new(c.last_transition_time.0.to_string()),
        ]);
    }
    t
}
