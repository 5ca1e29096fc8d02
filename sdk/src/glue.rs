//! The raw WIT exports implemented on top of a [`Policy`]: parse the JSON inputs into the
//! `crds` types, call the policy, convert the answer to WIT records. The same functions run
//! natively under `cargo test` ([`crate::testing::Native`]) and as the component's exports.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::convert::time;
use crate::policy::{Decided, Policy};
use crate::types::{
    ABI_VERSION, BackupFacts, ClaimFacts, ClusterFacts, Denial, FailoverFacts, Instance,
    InstanceFacts, PodFacts, Settings,
};
use crate::wit;

/// The component's exports for policy `P`.
pub struct Exports<P>(PhantomData<P>);

/// A decision's answer as the WIT result.
type Answer<T> = Result<T, wit::Denial>;

/// Panics go straight to the trap: std's default hook would read the environment
/// (`RUST_BACKTRACE`) and write to stderr, which the sandbox does not grant.
/// Natively (fixtures under `cargo test`) the default hook stays, so a failing test says why.
fn quiet_panics() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    }
}

fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Decided<T> {
    serde_json::from_str(json)
        .map_err(|e| format!("the policy cannot read the {what} it was given: {e}").into())
}

fn settings(json: &str) -> Decided<Settings> {
    quiet_panics();
    Settings::from_json(json)
}

fn instances(list: Vec<wit::Instance>) -> Vec<Instance> {
    list.into_iter().map(Instance::from).collect()
}

/// A decision's result as the WIT result.
fn answer<T, W>(decided: Decided<T>, to_wit: impl FnOnce(T) -> W) -> Answer<W> {
    decided.map(to_wit).map_err(|d: Denial| wit::Denial {
        reason: d.reason,
        message: d.message,
    })
}

impl<P: Policy> wit::Guest for Exports<P> {
    fn abi_version() -> String {
        quiet_panics();
        ABI_VERSION.to_string()
    }

    fn validate_settings(s: String) -> Answer<()> {
        answer(settings(&s).and_then(|s| P::validate_settings(&s)), |()| ())
    }

    fn validate(s: String, cluster: String) -> Answer<()> {
        let decided = (|| P::validate(&settings(&s)?, &parse("Cluster", &cluster)?))();
        answer(decided, |()| ())
    }

    fn instance_pod(
        s: String,
        cluster: String,
        instance: u32,
        observed: Vec<wit::Instance>,
    ) -> Answer<String> {
        let decided = (|| {
            let cluster = parse("Cluster", &cluster)?;
            let template =
                P::instance_pod(&settings(&s)?, &cluster, instance, &instances(observed))?;
            serde_json::to_string(&template)
                .map_err(|e| format!("cannot serialize the pod template: {e}").into())
        })();
        answer(decided, |t| t)
    }

    fn storage(
        s: String,
        cluster: String,
        instance: u32,
        current: Option<wit::ClaimFacts>,
    ) -> Answer<wit::Storage> {
        let decided = (|| {
            let current = current.map(ClaimFacts::from);
            P::storage(
                &settings(&s)?,
                &parse("Cluster", &cluster)?,
                instance,
                current.as_ref(),
            )
        })();
        answer(decided, wit::Storage::from)
    }

    fn archive_settings(s: String, cluster: String) -> Answer<Option<wit::ArchiveSettings>> {
        let decided = (|| P::archive_settings(&settings(&s)?, &parse("Cluster", &cluster)?))();
        answer(decided, |a| a.map(wit::ArchiveSettings::from))
    }

    fn backup_settings(
        s: String,
        backup: String,
        cluster: String,
        observed: Vec<wit::Instance>,
    ) -> Answer<wit::BackupSettings> {
        let decided = (|| {
            let backup = parse("Backup", &backup)?;
            let cluster = parse("Cluster", &cluster)?;
            P::backup_settings(&settings(&s)?, &backup, &cluster, &instances(observed))
        })();
        answer(decided, wit::BackupSettings::from)
    }

    fn backup_transition(s: String, facts: wit::BackupFacts) -> Answer<wit::Transition> {
        let decided = (|| {
            let facts = BackupFacts {
                backup: parse("Backup", &facts.backup)?,
                cluster: facts
                    .cluster
                    .as_deref()
                    .map(|c| parse("Cluster", c))
                    .transpose()?,
                pod: facts.pod.map(PodFacts::from),
                now: time(facts.now),
            };
            P::backup_transition(&settings(&s)?, &facts)
        })();
        answer(decided, wit::Transition::from)
    }

    fn schedule(s: String, scheduled_backup: String, now: i64) -> Answer<wit::ScheduleDecision> {
        let decided = (|| {
            let scheduled = parse("ScheduledBackup", &scheduled_backup)?;
            P::schedule(&settings(&s)?, &scheduled, time(now))
        })();
        answer(decided, wit::ScheduleDecision::from)
    }

    fn retention(
        s: String,
        cluster: String,
        backups: Vec<String>,
        now: i64,
    ) -> Answer<Vec<wit::Expiry>> {
        let decided = (|| {
            let cluster = parse("Cluster", &cluster)?;
            let backups = backups
                .iter()
                .map(|b| parse("Backup", b))
                .collect::<Decided<Vec<_>>>()?;
            P::retention(&settings(&s)?, &cluster, &backups, time(now))
        })();
        answer(decided, |e| e.into_iter().map(wit::Expiry::from).collect())
    }

    fn cluster_status(s: String, facts: wit::ClusterFacts) -> Answer<wit::ClusterHealth> {
        let decided = (|| {
            let facts = ClusterFacts {
                cluster: parse("Cluster", &facts.cluster)?,
                instances: instances(facts.instances),
                missing_secrets: facts.missing_secrets,
                failure: facts.failure.map(Denial::from),
                waiting: facts.waiting.map(Denial::from),
                now: time(facts.now),
            };
            P::cluster_status(&settings(&s)?, &facts)
        })();
        answer(decided, wit::ClusterHealth::from)
    }

    fn failover(s: String, facts: wit::FailoverFacts) -> Answer<Option<wit::Promotion>> {
        let decided = (|| {
            let facts = FailoverFacts {
                cluster: parse("Cluster", &facts.cluster)?,
                instances: facts
                    .instances
                    .into_iter()
                    .map(InstanceFacts::from)
                    .collect(),
                current_primary: facts.current_primary,
                target_primary: facts.target_primary,
                primary_unhealthy_seconds: facts.primary_unhealthy_seconds,
                now: time(facts.now),
            };
            P::failover(&settings(&s)?, &facts)
        })();
        answer(decided, |p| p.map(wit::Promotion::from))
    }
}

/// Exports a [`Policy`] as the component's `pgwarden:policy` world. Use it once, at the root of
/// a policy crate: `pgwarden_sdk::export_policy!(MyPolicy);`. It expands to nothing outside
/// WebAssembly, so the crate also builds (and tests) natively.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        mod __pgwarden_policy_exports {
            #[allow(unused_imports)]
            use super::*;
            type Exports = $crate::glue::Exports<$policy>;
            $crate::wit::export_raw!(Exports with_types_in $crate::wit);
        }
    };
}
