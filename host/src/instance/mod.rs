//! The in-pod instance agent: runs PostgreSQL, archives WAL, takes backups, reports facts.
//!
//! ```text
//!   cli       `pgwarden instance run|wal-archive|wal-restore|backup|delete-backups|ready|alive`
//!   agent     bootstrap (initdb | restore), supervise postgres, report archive facts
//!   alive     the main loop's beat, and the liveness probe that reads it
//!   isolation a primary that cannot report fences itself until it reports again
//!   restore   the restore state machine (pure): downloading → replaying → promoted
//!   recovery  its I/O: download the base backup, replay until promoted, resume after restarts
//!   archive   the archive_command, with parallel archiving ahead of PostgreSQL
//!   walrestore the restore_command: "not in the store" ends recovery, store errors stop it
//!   backup    barman-cloud-backup, idempotent per Backup (named by the object's uid)
//!   barman    the barman cloud command lines (pure) and what their failures mean
//!   postgres  initdb, postgresql.pgwarden.conf, psql, recovery settings
//!   facts     facts → status patches (pure); report: the server-side-apply I/O edge
//!   retention barman-cloud-backup-delete of the backups the operator hands this pod
//!   layout    where the agent keeps its files
//!   role      instancesStatus, promotion, fencing; standby/rejoin: streaming, re-pointing,
//!             a former primary back as a standby (pg_rewind, else a fresh clone)
//!   native    the native WAL archiver/restorer in barman's store format (S3 client in Rust)
//! ```

pub mod agent;
pub mod alive;
pub mod archive;
pub mod backup;
pub mod backups;
pub mod barman;
pub mod cli;
pub mod clone_store;
pub mod facts;
pub mod fencing;
pub mod held_wal;
pub mod isolation;
pub mod layout;
pub mod native;
pub mod options;
pub mod parameters;
pub mod postgres;
pub mod recovery;
pub mod rejoin;
pub mod report;
pub mod restore;
pub mod retention;
pub mod role;
pub mod standby;
pub mod switchover;
pub mod walrestore;
