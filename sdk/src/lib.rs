//! The pgwarden policy SDK: write a reconcile policy in Rust, test it natively, build it to
//! a WebAssembly component.
//!
//! ```text
//!   sdk/wit/policy.wit ──wit-bindgen──► wit (guest bindings)      ──► the .wasm exports
//!                        └─wasmtime bindgen (host/src/policy)      ◄── the operator calls
//!   Policy trait (one method per decision, each given the policy's Settings; defaults =
//!   the seed's behaviour; a denial is a Denial { reason, message })
//!     └─ glue::Exports<P>: JSON in → crds types → P → WIT records out
//!          ├─ export_policy!(P)   in the component
//!          └─ testing::Native<P>  under `cargo test` (same code path, no wasm)
//! ```
//!
//! A policy crate:
//!
//! ```ignore
//! use pgwarden_sdk::prelude::*;
//! pub struct Strict;
//! impl Policy for Strict {
//!     fn archive_settings(_: &Settings, cluster: &Cluster) -> Decided<Option<ArchiveSettings>> {
//!         let mut settings = defaults::archive_settings(cluster)?;
//!         if let Some(s) = settings.as_mut() { s.compression.get_or_insert(WalCompression::Zstd); }
//!         Ok(settings)
//!     }
//! }
//! pgwarden_sdk::export_policy!(Strict);
//! ```

pub mod convert;
pub mod defaults;
pub mod glue;
pub mod names;
mod policy;
pub mod testing;
pub mod types;
pub mod wit;

pub use chrono;
pub use k8s_openapi;
pub use pgwarden_crds as crds;
pub use policy::{Decided, Policy};
pub use serde_json;
pub use types::{Denial, Settings};

/// What a policy crate needs, in one `use`.
pub mod prelude {
    pub use crate::defaults;
    pub use crate::names;
    pub use crate::policy::{Decided, Policy};
    pub use crate::types::{
        BackupFacts, ClaimFacts, ClusterFacts, ClusterHealth, ConditionDecision, Denial, Expiry,
        FailoverFacts, Instance, InstanceFacts, PodFacts, Promotion, Role, ScheduleDecision,
        ScheduledRun, Settings, Storage, Transition,
    };
    pub use chrono::{DateTime, Duration, Utc};
    pub use k8s_openapi::api::core::v1::PodTemplateSpec;
    pub use pgwarden_crds::settings::{ArchiveSettings, BackupSettings, CloneSource};
    pub use pgwarden_crds::{
        Backup, BackupPhase, Cluster, DataCompression, Encryption, ExpiredObject, ScheduledBackup,
        WalCompression,
    };
}
