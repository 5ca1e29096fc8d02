//! The in-pod instance agent: runs PostgreSQL, archives WAL, takes backups, reports facts.

pub mod cli;
