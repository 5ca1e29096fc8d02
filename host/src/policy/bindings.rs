//! Host bindings of `sdk/wit/policy.wit` and conversions to the SDK's wire types.

use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_sdk::convert::time;
use pgwarden_sdk::types::{
    ClaimFacts, ClusterFacts, ClusterHealth, ConditionDecision, Denial, Expiry, FailoverFacts,
    Instance, PodFacts, Promotion, ScheduleDecision, ScheduledRun, Storage, Transition,
};

mod generated {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "pgwarden:policy/policy",
    });
}

pub use generated::pgwarden::policy::types as wit;
pub use generated::{Policy, PolicyPre};

// The enum conversions come from the SDK's one table, as the guest's do.
pgwarden_sdk::wit_enum_conversions!(wit);

pub fn archive(s: wit::ArchiveSettings) -> ArchiveSettings {
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

pub fn backup_settings(s: wit::BackupSettings) -> BackupSettings {
    BackupSettings {
        target_pod: s.target_pod,
        compression: s.compression.map(Into::into),
        encryption: s.encryption.map(Into::into),
        jobs: s.jobs,
        immediate_checkpoint: s.immediate_checkpoint,
    }
}

pub fn instance(i: &Instance) -> wit::Instance {
    wit::Instance {
        name: i.name.clone(),
        role: i.role.into(),
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
    Transition {
        phase: t.phase.into(),
        reason: t.reason,
        message: t.message,
        requeue_after_seconds: t.requeue_after_seconds,
    }
}

pub fn expiry(e: wit::Expiry) -> Expiry {
    Expiry {
        name: e.name,
        object: e.object.into(),
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

fn denial_to_wit(d: &Denial) -> wit::Denial {
    wit::Denial {
        reason: d.reason.clone(),
        message: d.message.clone(),
    }
}

pub fn storage(s: wit::Storage) -> Storage {
    Storage {
        size: s.size,
        storage_class: s.storage_class,
    }
}

pub fn claim_facts(c: &ClaimFacts) -> wit::ClaimFacts {
    wit::ClaimFacts {
        name: c.name.clone(),
        size: c.size.clone(),
        storage_class: c.storage_class.clone(),
    }
}

/// The facts as the guest receives them: the Cluster as JSON text.
pub fn cluster_facts(f: &ClusterFacts) -> wit::ClusterFacts {
    wit::ClusterFacts {
        cluster: serde_json::to_string(&f.cluster).unwrap_or_default(),
        instances: f.instances.iter().map(instance).collect(),
        missing_secrets: f.missing_secrets.clone(),
        failure: f.failure.as_ref().map(denial_to_wit),
        waiting: f.waiting.as_ref().map(denial_to_wit),
        now: f.now.timestamp(),
    }
}

pub fn cluster_health(h: wit::ClusterHealth) -> ClusterHealth {
    ClusterHealth {
        phase: h.phase,
        ready: ConditionDecision {
            status: h.ready.status,
            reason: h.ready.reason,
            message: h.ready.message,
        },
    }
}

/// The failover facts as the guest receives them: the Cluster as JSON text.
pub fn failover_facts(f: &FailoverFacts) -> wit::FailoverFacts {
    wit::FailoverFacts {
        cluster: serde_json::to_string(&f.cluster).unwrap_or_default(),
        instances: (f.instances.iter())
            .map(|i| wit::InstanceFacts {
                name: i.name.clone(),
                role: i.role.into(),
                ready: i.ready,
                streaming: i.streaming,
                received_lsn: i.received_lsn,
                replayed_lsn: i.replayed_lsn,
                lag_bytes: i.lag_bytes,
                lag_seconds: i.lag_seconds,
            })
            .collect(),
        current_primary: f.current_primary.clone(),
        target_primary: f.target_primary.clone(),
        primary_unhealthy_seconds: f.primary_unhealthy_seconds,
        now: f.now.timestamp(),
    }
}

pub fn promotion(p: wit::Promotion) -> Promotion {
    Promotion {
        instance: p.instance,
        reason: p.reason,
        message: p.message,
    }
}
