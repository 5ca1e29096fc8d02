//! The reconcile core: pure functions from what a controller observed and what was decided to
//! the status it writes and the Warnings it tells. No I/O: no API client, no policy engine,
//! no runtime; the controllers observe, decide, call the core and apply what it returns, so
//! each kind's status is testable from plain data alone.

pub mod backup;
pub mod cluster;
pub mod conditions;
pub mod failover;
pub mod plan;
pub mod policy;
pub mod quantity;
pub mod scheduled;

pub use backup::{BackupAnswer, backup_status};
pub use cluster::{
    ClusterReport, ClusterStatus, Instances, ObservedBackup, ObservedCluster, Outcome, Warning,
    cluster_status,
};
pub use conditions::DesiredCondition;
pub use scheduled::scheduled_status;
