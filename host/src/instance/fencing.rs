//! Fencing: a primary that is not (or no longer) the target refuses writes until it rejoins
//! or is named again; shared by the role loop (`role`) and the clean handover
//! (`switchover`), which is why it lives apart from both.

use anyhow::Result;

use super::postgres::Postgres;

/// What the agent does after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// A former primary, fenced, whose successor has promoted: stop and start again as a
    /// standby (`rejoin`).
    Rejoin,
}

/// Refuses new writes and ends the client sessions (one may hold a read-write transaction).
pub fn fence(pg: &Postgres) -> Result<()> {
    pg.query("ALTER SYSTEM SET default_transaction_read_only = on")?;
    pg.query("SELECT pg_reload_conf()")?;
    pg.query(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )?;
    Ok(())
}

pub fn unfence(pg: &Postgres) -> Result<()> {
    pg.query("ALTER SYSTEM RESET default_transaction_read_only")?;
    pg.query("SELECT pg_reload_conf()")?;
    Ok(())
}
