//! Conversions between the WIT records (guest side) and the SDK's serde types.

use chrono::{DateTime, Utc};
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_crds::{BackupPhase, DataCompression, Encryption, WalCompression};

use crate::types::{Expiry, Instance, PodFacts, Role, ScheduleDecision, ScheduledRun, Transition};
use crate::wit;

/// Seconds since the epoch → a UTC time (out-of-range values clamp to the epoch).
pub fn time(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// A Kubernetes (jiff) timestamp as a chrono time.
pub fn from_jiff(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32).unwrap_or_default()
}

pub(crate) fn wal_compression_to_wit(c: WalCompression) -> wit::WalCompression {
    match c {
        WalCompression::Gzip => wit::WalCompression::Gzip,
        WalCompression::Bzip2 => wit::WalCompression::Bzip2,
        WalCompression::Snappy => wit::WalCompression::Snappy,
        WalCompression::Lz4 => wit::WalCompression::Lz4,
        WalCompression::Xz => wit::WalCompression::Xz,
        WalCompression::Zstd => wit::WalCompression::Zstd,
    }
}

pub(crate) fn wal_compression_from_wit(c: wit::WalCompression) -> WalCompression {
    match c {
        wit::WalCompression::Gzip => WalCompression::Gzip,
        wit::WalCompression::Bzip2 => WalCompression::Bzip2,
        wit::WalCompression::Snappy => WalCompression::Snappy,
        wit::WalCompression::Lz4 => WalCompression::Lz4,
        wit::WalCompression::Xz => WalCompression::Xz,
        wit::WalCompression::Zstd => WalCompression::Zstd,
    }
}

pub(crate) fn data_compression_to_wit(c: DataCompression) -> wit::DataCompression {
    match c {
        DataCompression::Gzip => wit::DataCompression::Gzip,
        DataCompression::Bzip2 => wit::DataCompression::Bzip2,
        DataCompression::Snappy => wit::DataCompression::Snappy,
        DataCompression::Lz4 => wit::DataCompression::Lz4,
    }
}

pub(crate) fn data_compression_from_wit(c: wit::DataCompression) -> DataCompression {
    match c {
        wit::DataCompression::Gzip => DataCompression::Gzip,
        wit::DataCompression::Bzip2 => DataCompression::Bzip2,
        wit::DataCompression::Snappy => DataCompression::Snappy,
        wit::DataCompression::Lz4 => DataCompression::Lz4,
    }
}

pub(crate) fn encryption_to_wit(e: Encryption) -> wit::Encryption {
    match e {
        Encryption::Aes256 => wit::Encryption::Aes256,
        Encryption::AwsKms => wit::Encryption::AwsKms,
    }
}

pub(crate) fn encryption_from_wit(e: wit::Encryption) -> Encryption {
    match e {
        wit::Encryption::Aes256 => Encryption::Aes256,
        wit::Encryption::AwsKms => Encryption::AwsKms,
    }
}

pub(crate) fn phase_to_wit(p: BackupPhase) -> wit::BackupPhase {
    match p {
        BackupPhase::Pending => wit::BackupPhase::Pending,
        BackupPhase::Running => wit::BackupPhase::Running,
        BackupPhase::Completed => wit::BackupPhase::Completed,
        BackupPhase::Failed => wit::BackupPhase::Failed,
    }
}

pub(crate) fn phase_from_wit(p: wit::BackupPhase) -> BackupPhase {
    match p {
        wit::BackupPhase::Pending => BackupPhase::Pending,
        wit::BackupPhase::Running => BackupPhase::Running,
        wit::BackupPhase::Completed => BackupPhase::Completed,
        wit::BackupPhase::Failed => BackupPhase::Failed,
    }
}

pub(crate) fn archive_to_wit(s: ArchiveSettings) -> wit::ArchiveSettings {
    wit::ArchiveSettings {
        destination_path: s.destination_path,
        endpoint_url: s.endpoint_url,
        endpoint_ca_file: s.endpoint_ca_file,
        server_name: s.server_name,
        compression: s.compression.map(wal_compression_to_wit),
        encryption: s.encryption.map(encryption_to_wit),
        max_parallel: s.max_parallel,
        archive_timeout_seconds: s.archive_timeout_seconds,
    }
}

pub(crate) fn archive_from_wit(s: wit::ArchiveSettings) -> ArchiveSettings {
    ArchiveSettings {
        destination_path: s.destination_path,
        endpoint_url: s.endpoint_url,
        endpoint_ca_file: s.endpoint_ca_file,
        server_name: s.server_name,
        compression: s.compression.map(wal_compression_from_wit),
        encryption: s.encryption.map(encryption_from_wit),
        max_parallel: s.max_parallel,
        archive_timeout_seconds: s.archive_timeout_seconds,
    }
}

pub(crate) fn backup_settings_to_wit(s: BackupSettings) -> wit::BackupSettings {
    wit::BackupSettings {
        target_pod: s.target_pod,
        compression: s.compression.map(data_compression_to_wit),
        encryption: s.encryption.map(encryption_to_wit),
        jobs: s.jobs,
        immediate_checkpoint: s.immediate_checkpoint,
    }
}

pub(crate) fn backup_settings_from_wit(s: wit::BackupSettings) -> BackupSettings {
    BackupSettings {
        target_pod: s.target_pod,
        compression: s.compression.map(data_compression_from_wit),
        encryption: s.encryption.map(encryption_from_wit),
        jobs: s.jobs,
        immediate_checkpoint: s.immediate_checkpoint,
    }
}

pub(crate) fn instance_to_wit(i: &Instance) -> wit::Instance {
    wit::Instance {
        name: i.name.clone(),
        role: match i.role {
            Role::Primary => wit::Role::Primary,
            Role::Replica => wit::Role::Replica,
        },
        ready: i.ready,
    }
}

pub(crate) fn instance_from_wit(i: wit::Instance) -> Instance {
    Instance {
        name: i.name,
        role: match i.role {
            wit::Role::Primary => Role::Primary,
            wit::Role::Replica => Role::Replica,
        },
        ready: i.ready,
    }
}

pub(crate) fn pod_facts_to_wit(p: &PodFacts) -> wit::PodFacts {
    wit::PodFacts {
        name: p.name.clone(),
        phase: p.phase.clone(),
        ready: p.ready,
        restart_count: p.restart_count,
        container_started_at: p.container_started_at.map(|t| t.timestamp()),
    }
}

pub(crate) fn pod_facts_from_wit(p: wit::PodFacts) -> PodFacts {
    PodFacts {
        name: p.name,
        phase: p.phase,
        ready: p.ready,
        restart_count: p.restart_count,
        container_started_at: p.container_started_at.map(time),
    }
}

pub(crate) fn transition_to_wit(t: Transition) -> wit::Transition {
    wit::Transition {
        phase: phase_to_wit(t.phase),
        reason: t.reason,
        message: t.message,
        requeue_after_seconds: t.requeue_after_seconds,
    }
}

pub(crate) fn transition_from_wit(t: wit::Transition) -> Transition {
    Transition {
        phase: phase_from_wit(t.phase),
        reason: t.reason,
        message: t.message,
        requeue_after_seconds: t.requeue_after_seconds,
    }
}

pub(crate) fn schedule_to_wit(d: ScheduleDecision) -> wit::ScheduleDecision {
    wit::ScheduleDecision {
        create: d.create.map(|r| wit::ScheduledRun {
            name: r.name,
            scheduled_at: r.scheduled_at.timestamp(),
        }),
        next_run: d.next_run.map(|t| t.timestamp()),
    }
}

pub(crate) fn expiry_to_wit(e: Expiry) -> wit::Expiry {
    wit::Expiry {
        name: e.name,
        object: match e.object {
            pgwarden_crds::ExpiredObject::Remove => wit::ExpiredObject::Remove,
            pgwarden_crds::ExpiredObject::Keep => wit::ExpiredObject::Keep,
        },
    }
}

pub(crate) fn expiry_from_wit(e: wit::Expiry) -> Expiry {
    Expiry {
        name: e.name,
        object: match e.object {
            wit::ExpiredObject::Remove => pgwarden_crds::ExpiredObject::Remove,
            wit::ExpiredObject::Keep => pgwarden_crds::ExpiredObject::Keep,
        },
    }
}

pub(crate) fn schedule_from_wit(d: wit::ScheduleDecision) -> ScheduleDecision {
    ScheduleDecision {
        create: d.create.map(|r| ScheduledRun {
            name: r.name,
            scheduled_at: time(r.scheduled_at),
        }),
        next_run: d.next_run.map(time),
    }
}
