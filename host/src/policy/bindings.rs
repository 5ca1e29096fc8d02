//! Host bindings of `sdk/wit/policy.wit` and conversions to the SDK's wire types.

use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_crds::{BackupPhase, DataCompression, Encryption, WalCompression};
use pgwarden_sdk::convert::time;
use pgwarden_sdk::types::{
    Expiry, Instance, PodFacts, Role, ScheduleDecision, ScheduledRun, Transition,
};

mod generated {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "pgwarden:policy/policy",
    });
}

pub use generated::pgwarden::policy::types as wit;
pub use generated::{Policy, PolicyPre};

pub fn archive(s: wit::ArchiveSettings) -> ArchiveSettings {
    ArchiveSettings {
        destination_path: s.destination_path,
        endpoint_url: s.endpoint_url,
        endpoint_ca_file: s.endpoint_ca_file,
        server_name: s.server_name,
        compression: s.compression.map(|c| match c {
            wit::WalCompression::Gzip => WalCompression::Gzip,
            wit::WalCompression::Bzip2 => WalCompression::Bzip2,
            wit::WalCompression::Snappy => WalCompression::Snappy,
            wit::WalCompression::Lz4 => WalCompression::Lz4,
            wit::WalCompression::Xz => WalCompression::Xz,
            wit::WalCompression::Zstd => WalCompression::Zstd,
        }),
        encryption: s.encryption.map(encryption),
        max_parallel: s.max_parallel,
        archive_timeout_seconds: s.archive_timeout_seconds,
    }
}

fn encryption(e: wit::Encryption) -> Encryption {
    match e {
        wit::Encryption::Aes256 => Encryption::Aes256,
        wit::Encryption::AwsKms => Encryption::AwsKms,
    }
}

pub fn backup_settings(s: wit::BackupSettings) -> BackupSettings {
    BackupSettings {
        target_pod: s.target_pod,
        compression: s.compression.map(|c| match c {
            wit::DataCompression::Gzip => DataCompression::Gzip,
            wit::DataCompression::Bzip2 => DataCompression::Bzip2,
            wit::DataCompression::Snappy => DataCompression::Snappy,
            wit::DataCompression::Lz4 => DataCompression::Lz4,
        }),
        encryption: s.encryption.map(encryption),
        jobs: s.jobs,
        immediate_checkpoint: s.immediate_checkpoint,
    }
}

pub fn instance(i: &Instance) -> wit::Instance {
    let role = match i.role {
        Role::Primary => wit::Role::Primary,
        Role::Replica => wit::Role::Replica,
    };
    wit::Instance {
        name: i.name.clone(),
        role,
        ready: i.ready,
    }
}

pub fn pod_facts(p: &PodFacts) -> wit::PodFacts {
    wit::PodFacts {
        name: p.name.clone(),
        phase: p.phase.clone(),
        ready: p.ready,
        restart_count: p.restart_count,
        container_started_at: p.container_started_at.map(|t| t.timestamp()),
    }
}

pub fn transition(t: wit::Transition) -> Transition {
    let phase = match t.phase {
        wit::BackupPhase::Pending => BackupPhase::Pending,
        wit::BackupPhase::Running => BackupPhase::Running,
        wit::BackupPhase::Completed => BackupPhase::Completed,
        wit::BackupPhase::Failed => BackupPhase::Failed,
    };
    Transition {
        phase,
        reason: t.reason,
        message: t.message,
        requeue_after_seconds: t.requeue_after_seconds,
    }
}

pub fn expiry(e: wit::Expiry) -> Expiry {
    match e.object {
        wit::ExpiredObject::Remove => Expiry::remove(e.name),
        wit::ExpiredObject::Keep => Expiry::keep(e.name),
    }
}

pub fn schedule(d: wit::ScheduleDecision) -> ScheduleDecision {
    ScheduleDecision {
        create: d.create.map(|r| ScheduledRun {
            name: r.name,
            scheduled_at: time(r.scheduled_at),
        }),
        next_run: d.next_run.map(time),
    }
}
