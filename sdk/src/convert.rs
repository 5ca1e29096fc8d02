//! Conversions between the WIT records (guest side) and the SDK's serde types.

use chrono::{DateTime, Utc};
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};

use crate::types::{
    ClaimFacts, ClusterFacts, ClusterHealth, ConditionDecision, Denial, Expiry, FailoverFacts,
    Instance, InstanceFacts, PodFacts, Promotion, ScheduleDecision, ScheduledRun, Storage,
    Transition,
};
use crate::wit;

/// Seconds since the epoch → a UTC time (out-of-range values clamp to the epoch).
pub fn time(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// A status time as the operator and the agent write it (RFC 3339), if it is one: a
/// missing or malformed time counts as absent.
pub fn parse_time(value: Option<&str>) -> Option<DateTime<Utc>> {
    value
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A Kubernetes (jiff) timestamp as a chrono time.
pub fn from_jiff(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32).unwrap_or_default()
}

/// The enums the WIT interface shares with the crds and SDK types, listed once. Each line is
/// `WitName = module::Type { Variants }`; a variant has the same name on both sides (the WIT
/// spells it in kebab-case), so one table gives `From` both ways for the guest's bindings
/// (`crate::wit`, below) and the host's (`host/src/policy/bindings.rs`). A variant missing on
/// either side is a compile error (the matches are exhaustive). Also emits a test
/// `wit_enums_round_trip` in the invoking crate.
#[macro_export]
macro_rules! wit_enum_conversions {
    ($($wit:ident)::+) => {
        $crate::wit_enum_conversions!(@table [$($wit)::+]
            WalCompression = crds::WalCompression { Gzip, Bzip2, Snappy, Lz4, Xz, Zstd },
            DataCompression = crds::DataCompression { Gzip, Bzip2, Snappy, Lz4 },
            Encryption = crds::Encryption { Aes256, AwsKms },
            BackupPhase = crds::BackupPhase { Pending, Running, Completed, Failed },
            ExpiredObject = crds::ExpiredObject { Remove, Keep },
            Role = types::Role { Primary, Replica },
            Archiver = types::Archiver { BarmanCloud, Native },
        );
    };
    (@table [$($wit:ident)::+]
        $($name:ident = $m:ident :: $ty:ident { $($v:ident),* }),* $(,)?) => {
        const _: () = {
            use $($wit)::+ as wit_types;
            $(
                impl ::core::convert::From<$crate::$m::$ty> for wit_types::$name {
                    fn from(v: $crate::$m::$ty) -> Self {
                        match v { $($crate::$m::$ty::$v => Self::$v,)* }
                    }
                }
                impl ::core::convert::From<wit_types::$name> for $crate::$m::$ty {
                    fn from(v: wit_types::$name) -> Self {
                        match v { $(wit_types::$name::$v => Self::$v,)* }
                    }
                }
            )*
        };

        #[cfg(test)]
        #[test]
        fn wit_enums_round_trip() {
            use $($wit)::+ as wit_types;
            let mut checked = 0;
            $($(
                let v = $crate::$m::$ty::$v;
                let back = <$crate::$m::$ty>::from(<wit_types::$name>::from(v));
                assert_eq!(back, v, "{} does not round-trip through the WIT enum", stringify!($ty::$v));
                checked += 1;
            )*)*
            assert!(checked > 0);
        }
    };
}

crate::wit_enum_conversions!(crate::wit);

pub(crate) fn archive_to_wit(s: ArchiveSettings) -> wit::ArchiveSettings {
    wit::ArchiveSettings {
        destination_path: s.destination_path,
        endpoint_url: s.endpoint_url,
        endpoint_ca_file: s.endpoint_ca_file,
        server_name: s.server_name,
        compression: s.compression.map(Into::into),
        encryption: s.encryption.map(Into::into),
        max_parallel: s.max_parallel,
        archive_timeout_seconds: s.archive_timeout_seconds,
        archiver: s.archiver.into(),
    }
}

pub(crate) fn archive_from_wit(s: wit::ArchiveSettings) -> ArchiveSettings {
    ArchiveSettings {
        destination_path: s.destination_path,
        endpoint_url: s.endpoint_url,
        endpoint_ca_file: s.endpoint_ca_file,
        server_name: s.server_name,
        compression: s.compression.map(Into::into),
        encryption: s.encryption.map(Into::into),
        max_parallel: s.max_parallel,
        archive_timeout_seconds: s.archive_timeout_seconds,
        archiver: s.archiver.into(),
    }
}

pub(crate) fn backup_settings_to_wit(s: BackupSettings) -> wit::BackupSettings {
    wit::BackupSettings {
        target_pod: s.target_pod,
        compression: s.compression.map(Into::into),
        encryption: s.encryption.map(Into::into),
        jobs: s.jobs,
        immediate_checkpoint: s.immediate_checkpoint,
    }
}

pub(crate) fn backup_settings_from_wit(s: wit::BackupSettings) -> BackupSettings {
    BackupSettings {
        target_pod: s.target_pod,
        compression: s.compression.map(Into::into),
        encryption: s.encryption.map(Into::into),
        jobs: s.jobs,
        immediate_checkpoint: s.immediate_checkpoint,
    }
}

pub(crate) fn instance_to_wit(i: &Instance) -> wit::Instance {
    wit::Instance {
        name: i.name.clone(),
        role: i.role.into(),
        ready: i.ready,
    }
}

pub(crate) fn instance_from_wit(i: wit::Instance) -> Instance {
    Instance {
        name: i.name,
        role: i.role.into(),
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
        phase: t.phase.into(),
        reason: t.reason,
        message: t.message,
        requeue_after_seconds: t.requeue_after_seconds,
    }
}

pub(crate) fn transition_from_wit(t: wit::Transition) -> Transition {
    Transition {
        phase: t.phase.into(),
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
        object: e.object.into(),
    }
}

pub(crate) fn expiry_from_wit(e: wit::Expiry) -> Expiry {
    Expiry {
        name: e.name,
        object: e.object.into(),
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

pub(crate) fn denial_to_wit(d: &Denial) -> wit::Denial {
    wit::Denial {
        reason: d.reason.clone(),
        message: d.message.clone(),
    }
}

pub(crate) fn denial_from_wit(d: wit::Denial) -> Denial {
    Denial {
        reason: d.reason,
        message: d.message,
    }
}

pub(crate) fn storage_to_wit(s: Storage) -> wit::Storage {
    wit::Storage {
        size: s.size,
        storage_class: s.storage_class,
    }
}

pub(crate) fn storage_from_wit(s: wit::Storage) -> Storage {
    Storage {
        size: s.size,
        storage_class: s.storage_class,
    }
}

pub(crate) fn claim_facts_to_wit(c: &ClaimFacts) -> wit::ClaimFacts {
    wit::ClaimFacts {
        name: c.name.clone(),
        size: c.size.clone(),
        storage_class: c.storage_class.clone(),
    }
}

pub(crate) fn claim_facts_from_wit(c: wit::ClaimFacts) -> ClaimFacts {
    ClaimFacts {
        name: c.name,
        size: c.size,
        storage_class: c.storage_class,
    }
}

/// The facts as the guest receives them (the Cluster as JSON text).
pub(crate) fn cluster_facts_to_wit(f: &ClusterFacts) -> wit::ClusterFacts {
    wit::ClusterFacts {
        cluster: serde_json::to_string(&f.cluster).unwrap_or_default(),
        instances: f.instances.iter().map(instance_to_wit).collect(),
        missing_secrets: f.missing_secrets.clone(),
        failure: f.failure.as_ref().map(denial_to_wit),
        waiting: f.waiting.as_ref().map(denial_to_wit),
        now: f.now.timestamp(),
    }
}

pub(crate) fn cluster_health_to_wit(h: ClusterHealth) -> wit::ClusterHealth {
    wit::ClusterHealth {
        phase: h.phase,
        ready: wit::ConditionDecision {
            status: h.ready.status,
            reason: h.ready.reason,
            message: h.ready.message,
        },
    }
}

pub(crate) fn cluster_health_from_wit(h: wit::ClusterHealth) -> ClusterHealth {
    ClusterHealth {
        phase: h.phase,
        ready: ConditionDecision {
            status: h.ready.status,
            reason: h.ready.reason,
            message: h.ready.message,
        },
    }
}

pub(crate) fn instance_facts_to_wit(i: &InstanceFacts) -> wit::InstanceFacts {
    wit::InstanceFacts {
        name: i.name.clone(),
        role: i.role.into(),
        ready: i.ready,
        streaming: i.streaming,
        received_lsn: i.received_lsn,
        replayed_lsn: i.replayed_lsn,
        lag_bytes: i.lag_bytes,
        lag_seconds: i.lag_seconds,
    }
}

pub(crate) fn instance_facts_from_wit(i: wit::InstanceFacts) -> InstanceFacts {
    InstanceFacts {
        name: i.name,
        role: i.role.into(),
        ready: i.ready,
        streaming: i.streaming,
        received_lsn: i.received_lsn,
        replayed_lsn: i.replayed_lsn,
        lag_bytes: i.lag_bytes,
        lag_seconds: i.lag_seconds,
    }
}

/// The failover facts as the guest receives them (the Cluster as JSON text).
pub(crate) fn failover_facts_to_wit(f: &FailoverFacts) -> wit::FailoverFacts {
    wit::FailoverFacts {
        cluster: serde_json::to_string(&f.cluster).unwrap_or_default(),
        instances: f.instances.iter().map(instance_facts_to_wit).collect(),
        current_primary: f.current_primary.clone(),
        target_primary: f.target_primary.clone(),
        primary_unhealthy_seconds: f.primary_unhealthy_seconds,
        now: f.now.timestamp(),
    }
}

pub(crate) fn promotion_to_wit(p: Promotion) -> wit::Promotion {
    wit::Promotion {
        instance: p.instance,
        reason: p.reason,
        message: p.message,
    }
}

pub(crate) fn promotion_from_wit(p: wit::Promotion) -> Promotion {
    Promotion {
        instance: p.instance,
        reason: p.reason,
        message: p.message,
    }
}
