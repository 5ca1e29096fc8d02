//! The options of `pgwarden instance run`, apart from the agent that runs with them: the
//! restore and the live parameters read them too, and the agent uses those.

use std::path::PathBuf;
use std::time::Duration;

use pgwarden_crds::RecoveryTarget;

/// Everything `instance run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub pgdata: PathBuf,
    pub pg_bin: PathBuf,
    pub port: u16,
    pub listen_addresses: String,
    pub socket_dir: PathBuf,
    pub settings_dir: PathBuf,
    pub cluster: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub parameters: Vec<(String, String)>,
    pub report_interval: Duration,
    /// Replaces `pgwarden instance wal-archive %p` (benchmarks compare against plain barman).
    pub archive_command: Option<String>,
    pub restore: Option<RestoreOptions>,
}

/// Bootstrap from a backup instead of initdb.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Barman backup id (or name), or `latest`.
    pub backup_id: String,
    /// Archive settings of the store to restore from (default: the cluster's own).
    pub source: Option<PathBuf>,
    pub target: Option<RecoveryTarget>,
}
