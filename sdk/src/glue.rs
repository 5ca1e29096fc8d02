//! The raw WIT exports implemented on top of a [`Policy`]: parse the JSON inputs into the
//! `crds` types, call the policy, convert the answer to WIT records. The same functions run
//! natively under `cargo test` ([`crate::testing::Native`]) and as the component's exports.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::convert::{
    archive_to_wit, backup_settings_to_wit, instance_from_wit, pod_facts_from_wit, schedule_to_wit,
    time, transition_to_wit,
};
use crate::policy::Policy;
use crate::types::{ABI_VERSION, BackupFacts};
use crate::wit;

/// The component's exports for policy `P`.
pub struct Exports<P>(PhantomData<P>);

/// Panics go straight to the trap: std's default hook would read the environment
/// (`RUST_BACKTRACE`) and write to stderr, which the sandbox does not grant.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, String> {
    serde_json::from_str(json)
        .map_err(|e| format!("the policy cannot read the {what} it was given: {e}"))
}

impl<P: Policy> wit::Guest for Exports<P> {
    fn abi_version() -> String {
        quiet_panics();
        ABI_VERSION.to_string()
    }

    fn instance_pod(cluster: String, instance: u32) -> Result<String, String> {
        quiet_panics();
        let cluster = parse("Cluster", &cluster)?;
        let template = P::instance_pod(&cluster, instance).map_err(|d| d.message)?;
        serde_json::to_string(&template)
            .map_err(|e| format!("cannot serialize the pod template: {e}"))
    }

    fn archive_settings(cluster: String) -> Result<Option<wit::ArchiveSettings>, String> {
        quiet_panics();
        let cluster = parse("Cluster", &cluster)?;
        Ok(P::archive_settings(&cluster)
            .map_err(|d| d.message)?
            .map(archive_to_wit))
    }

    fn backup_settings(
        backup: String,
        cluster: String,
        instances: Vec<wit::Instance>,
    ) -> Result<wit::BackupSettings, String> {
        quiet_panics();
        let backup = parse("Backup", &backup)?;
        let cluster = parse("Cluster", &cluster)?;
        let instances: Vec<_> = instances.into_iter().map(instance_from_wit).collect();
        Ok(backup_settings_to_wit(
            P::backup_settings(&backup, &cluster, &instances).map_err(|d| d.message)?,
        ))
    }

    fn backup_transition(facts: wit::BackupFacts) -> Result<wit::Transition, String> {
        quiet_panics();
        let facts = BackupFacts {
            backup: parse("Backup", &facts.backup)?,
            cluster: facts
                .cluster
                .as_deref()
                .map(|c| parse("Cluster", c))
                .transpose()?,
            pod: facts.pod.map(pod_facts_from_wit),
            now: time(facts.now),
        };
        Ok(transition_to_wit(
            P::backup_transition(&facts).map_err(|d| d.message)?,
        ))
    }

    fn schedule(scheduled_backup: String, now: i64) -> Result<wit::ScheduleDecision, String> {
        quiet_panics();
        let scheduled = parse("ScheduledBackup", &scheduled_backup)?;
        Ok(schedule_to_wit(
            P::schedule(&scheduled, time(now)).map_err(|d| d.message)?,
        ))
    }

    fn retention(
        cluster: String,
        backups: Vec<String>,
        now: i64,
    ) -> Result<Vec<wit::Expiry>, String> {
        quiet_panics();
        let cluster = parse("Cluster", &cluster)?;
        let backups = backups
            .iter()
            .map(|b| parse("Backup", b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(P::retention(&cluster, &backups, time(now))
            .map_err(|d| d.message)?
            .into_iter()
            .map(crate::convert::expiry_to_wit)
            .collect())
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
