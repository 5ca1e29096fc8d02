//! Streaming standbys: which role this instance has, the replication user on the primary,
//! and the clone of a standby from the primary.
//!
//! ```text
//!   role: the Cluster's primary (instance 0 until a failover moves it, see `rejoin`);
//!         a standby streams from it and is re-pointed when it moves
//!   primary: after start ─► CREATE/ALTER ROLE streaming_replica REPLICATION (password by stdin)
//!   standby: clone.json? ─► wipe, clone again (an interrupted clone is redone from scratch)
//!            PG_VERSION + standby.signal ─► start as it is
//!            empty ─► record clone.json ─► pg_basebackup from the primary ─► standby.signal
//!                   ─► forget clone.json ─► start with primary_conninfo (passfile 0600)
//!            (the policy's standbyClone: object-store clones from the store instead and
//!             starts with a restore_command too, see `clone_store`)
//! ```
//!
//! The password comes from the Cluster's `<cluster>-replication` Secret, mounted as a file
//! (never env, never an argument): the agent copies it into a passfile owned by `postgres`.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_sdk::names;

use super::clone_store::CloneFrom;
pub use super::layout::clone_marker;
use super::layout::{self, Layout};
use super::options::RunOptions;
use super::postgres::wipe;
use super::postgres::{Postgres, RunAs};

/// Env: the folder of the mounted replication Secret (default [`names::REPLICATION_MOUNT_PATH`]).
pub const ENV_REPLICATION_DIR: &str = "PGWARDEN_REPLICATION_DIR";
/// Env: the primary's host, overriding the `-rw` Service and the primary pod's address.
pub const ENV_PRIMARY_HOST: &str = "PGWARDEN_PRIMARY_HOST";

/// This instance's part in the Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// Streams from the primary at `host` (port: the instance's own, every instance's).
    Standby {
        host: String,
    },
}

/// The replication password from the mounted Secret; `None` when no Secret is mounted (a pod
/// made by an older operator, or an agent run by hand).
pub fn password() -> Result<Option<String>> {
    let dir = std::env::var_os(ENV_REPLICATION_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(names::REPLICATION_MOUNT_PATH));
    let path = dir.join(names::REPLICATION_PASSWORD_KEY);
    match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => Ok(Some(p.trim().to_string())),
        Ok(_) => bail!("{} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Where the standby finds the primary pod `primary`: the `-rw` Service when its name
/// resolves (in a cluster; it follows the primary), else the pod's address from the API (the
/// local sandbox has no DNS); waits until one is known.
pub async fn primary_host(opts: &RunOptions, primary: &str) -> Result<String> {
    let mut waited = 0u64;
    loop {
        if let Some(host) = primary_address(opts, primary).await? {
            return Ok(host);
        }
        if waited.is_multiple_of(30) {
            eprintln!("pgwarden-agent: waiting for the primary pod {primary} to have an address");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
    }
}

/// [`primary_host`] without waiting: `None` while the pod has no address.
pub async fn primary_address(opts: &RunOptions, primary: &str) -> Result<Option<String>> {
    if let Ok(host) = std::env::var(ENV_PRIMARY_HOST) {
        return Ok(Some(host));
    }
    if let Some(service) = service_host(opts) {
        return Ok(Some(service));
    }
    let namespace = opts.namespace.clone().unwrap_or_default();
    let client = kube::Client::try_default()
        .await
        .context("no Service name resolves and no API client to find the primary pod")?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client, &namespace);
    let ip = match pods.get_opt(primary).await {
        Ok(pod) => pod.and_then(|p| p.status?.pod_ip),
        Err(e) => {
            eprintln!("pgwarden-agent: cannot read pod {namespace}/{primary}: {e}");
            None
        }
    };
    Ok(ip.filter(|ip| !ip.is_empty()))
}

/// The `-rw` Service's name when DNS resolves it (then nothing ever needs re-pointing).
pub fn service_host(opts: &RunOptions) -> Option<String> {
    let service = names::service_rw(opts.cluster.as_deref().unwrap_or_default());
    (service.as_str(), opts.port)
        .to_socket_addrs()
        .is_ok()
        .then_some(service)
}

/// Creates or updates the replication user on the primary. The password reaches PostgreSQL
/// on psql's stdin, never on a command line; the session logs no statement (a superuser's
/// `log_statement` or an error would otherwise write it to the server log).
pub fn ensure_replication_user(pg: &Postgres, password: &str) -> Result<()> {
    let user = names::REPLICATION_USER;
    let sql = format!(
        "SET log_statement = 'none';\nSET log_min_error_statement = 'panic';\n\
         DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN \
         CREATE ROLE {user} WITH LOGIN REPLICATION; END IF; END $$;\n\
         ALTER ROLE {user} WITH LOGIN REPLICATION PASSWORD '{}';\n{REWIND_GRANTS}",
        password.replace('\'', "''")
    );
    pg.query_stdin(&sql)
        .with_context(|| format!("cannot create or update the replication role {user}"))
}

/// What `pg_rewind` reads on its source (the new primary) besides replication, granted to
/// the replication user rather than using a superuser over the network. Granted on the
/// primary, they reach every standby with the WAL: whichever is promoted has them.
const REWIND_GRANTS: &str = "\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO streaming_replica;\n\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO streaming_replica;\n\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO streaming_replica;\n\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO streaming_replica;\n";

/// The replication user's passfile in the state folder (`clone_marker` beside it is in
/// `layout`).
pub fn passfile(layout: &Layout) -> PathBuf {
    layout.state.join("replication.pgpass")
}

/// Writes the passfile libpq reads (0600, owned by the PostgreSQL user: libpq ignores a
/// passfile others can read).
pub fn write_passfile(layout: &Layout, run_as: RunAs, password: &str) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = passfile(layout);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "*:*:*:{}:{password}", names::REPLICATION_USER)?;
    run_as.own(&path, false)?;
    Ok(path)
}

/// `primary_conninfo` for the primary at `host`, the password read from `passfile`.
pub fn primary_conninfo(host: &str, port: u16, passfile: &Path, application: &str) -> String {
    format!(
        "host={host} port={port} user={} passfile='{}' application_name='{}'",
        names::REPLICATION_USER,
        passfile
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('\'', "\\'"),
        application.replace('\\', "\\\\").replace('\'', "\\'"),
    )
}

/// Makes PGDATA a standby of the primary at `host` unless it is one already, cloned from
/// where `from` says; returns the recovery settings to start it with.
pub fn prepare(
    pg: &Postgres,
    layout: &Layout,
    host: &str,
    password: &str,
    application: &str,
    from: &CloneFrom,
) -> Result<Vec<(String, String)>> {
    let passfile = write_passfile(layout, pg.run_as, password)?;
    let marker = clone_marker(layout);
    let cloned = layout.pgdata.join("PG_VERSION").exists()
        && layout.pgdata.join("standby.signal").exists()
        && !marker.exists();
    if !cloned {
        if layout.pgdata.join("PG_VERSION").exists() && !marker.exists() {
            // Not a standby's data and no clone of ours under way: someone else's database.
            bail!(
                "{} holds a database that is not a standby (no standby.signal) and was not being cloned: \
                 refusing to overwrite it; move it away or delete the claim to clone this instance afresh",
                layout.pgdata.display()
            );
        }
        match from {
            CloneFrom::Primary => clone(pg, layout, host, &passfile, application)?,
            CloneFrom::ObjectStore(store) => super::clone_store::clone(pg, layout, store)?,
        }
    }
    // A re-pointed standby's `ALTER SYSTEM` value would win over the one given at start.
    forget_auto_setting(
        &layout.pgdata.join("postgresql.auto.conf"),
        "primary_conninfo",
    )?;
    let conninfo = primary_conninfo(host, pg.port, &passfile, application);
    let mut recovery = vec![("primary_conninfo".into(), conninfo)];
    recovery.extend(from.recovery_settings());
    Ok(recovery)
}

/// Removes `name`'s lines from `postgresql.auto.conf` (what `ALTER SYSTEM RESET` does,
/// with PostgreSQL stopped); no file, nothing to do.
pub fn forget_auto_setting(auto: &Path, name: &str) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(auto) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| l.split(['=', ' ']).next() != Some(name))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept != text {
        // In place: the file keeps its owner (PostgreSQL's user, which `ALTER SYSTEM` needs).
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(auto)?;
        file.write_all(kept.as_bytes())?;
        file.sync_all()?;
    }
    Ok(())
}

/// The host the running standby streams from (`SHOW primary_conninfo`), if any.
pub fn streaming_from(pg: &Postgres) -> Result<Option<String>> {
    let conninfo = pg.query("SHOW primary_conninfo")?;
    Ok(conninfo
        .split_whitespace()
        .find_map(|w| w.strip_prefix("host="))
        .map(str::to_string))
}

/// Points the running standby at the primary at `host` (a failover moved it, or its pod
/// came back with another address): `primary_conninfo` is reloadable since PostgreSQL 13,
/// the WAL receiver reconnects.
pub fn repoint(pg: &Postgres, layout: &Layout, host: &str, application: &str) -> Result<()> {
    let conninfo = primary_conninfo(host, pg.port, &passfile(layout), application);
    pg.query(&format!(
        "ALTER SYSTEM SET primary_conninfo = '{}'",
        conninfo.replace('\'', "''")
    ))?;
    pg.query("SELECT pg_reload_conf()")?;
    Ok(())
}

/// Clones PGDATA from the primary, from scratch, until it succeeds (the primary may not be
/// up yet, or not have created the replication user yet).
fn clone(
    pg: &Postgres,
    layout: &Layout,
    host: &str,
    passfile: &Path,
    application: &str,
) -> Result<()> {
    let marker = clone_marker(layout);
    layout::write_json_durable(&marker, &serde_json::json!({"from": host}))?;
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        wipe(&layout.pgdata, pg.run_as)?;
        match basebackup(pg, host, passfile, application) {
            Ok(()) => break,
            Err(e) => {
                eprintln!(
                    "pgwarden-agent: clone from {host} (attempt {attempt}, {}s): {e:#}",
                    start.elapsed().as_secs()
                );
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    let signal = layout.pgdata.join("standby.signal");
    layout::write_durable(&signal, b"")?;
    pg.run_as.own(&signal, false)?;
    std::fs::remove_file(&marker).with_context(|| format!("cannot remove {}", marker.display()))?;
    eprintln!("pgwarden-agent: cloned from the primary at {host}");
    Ok(())
}

fn basebackup(pg: &Postgres, host: &str, passfile: &Path, application: &str) -> Result<()> {
    let mut cmd = Command::new(pg.bin.join("pg_basebackup"));
    pg.run_as.apply(&mut cmd);
    let out = cmd
        .arg("-D")
        .arg(&pg.pgdata)
        .args(["-h", host, "-p", &pg.port.to_string()])
        .args([
            "-U",
            names::REPLICATION_USER,
            "-w",
            "-X",
            "stream",
            "-c",
            "fast",
        ])
        .env("PGPASSFILE", passfile)
        .env("PGAPPNAME", application)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .context("cannot run pg_basebackup")?;
    if !out.status.success() {
        bail!(
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A standby is ready when it streams from the primary (a restore in recovery is not).
pub fn streaming(pg: &Postgres) -> Result<bool> {
    let answer =
        pg.query("SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")?;
    Ok(answer == "t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_names_the_passfile_and_never_a_password() {
        let c = primary_conninfo("pg-rw", 5432, Path::new("/d/it's/p"), "pg-2");
        assert_eq!(
            c,
            "host=pg-rw port=5432 user=streaming_replica passfile='/d/it\\'s/p' application_name='pg-2'"
        );
        assert!(!c.contains("password"));
    }

    #[test]
    fn the_passfile_is_private_and_holds_the_replication_user_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            pgdata: dir.path().join("pgdata"),
            state: dir.path().to_path_buf(),
        };
        let path = write_passfile(&layout, RunAs::current(), "abc").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "*:*:*:streaming_replica:abc\n"
        );
    }

    /// A PGDATA with `pg_basebackup` replaced by a script that records its calls and
    /// "clones" (PG_VERSION and a `cloned` file), or fails.
    fn fake(dir: &Path, clone_works: bool) -> (Layout, Postgres) {
        use std::os::unix::fs::PermissionsExt;
        let layout = Layout {
            pgdata: dir.join("pgdata"),
            state: dir.join("state"),
        };
        std::fs::create_dir_all(&layout.state).unwrap();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let body = match clone_works {
            true => r#"echo x >> "$0.calls"; touch "$2/PG_VERSION" "$2/cloned""#,
            false => r#"echo x >> "$0.calls"; exit 1"#,
        };
        let script = bin.join("pg_basebackup");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh
{body}
"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let pg = Postgres {
            bin,
            pgdata: layout.pgdata.clone(),
            port: 5432,
            socket_dir: dir.into(),
            run_as: RunAs::current(),
        };
        (layout, pg)
    }

    fn calls(pg: &Postgres) -> usize {
        std::fs::read_to_string(pg.bin.join("pg_basebackup.calls"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn an_interrupted_clone_is_redone_from_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, pg) = fake(dir.path(), true);
        // What an agent killed mid-clone leaves: the marker and half a PGDATA.
        std::fs::create_dir_all(&layout.pgdata).unwrap();
        std::fs::write(layout.pgdata.join("PG_VERSION"), "15").unwrap();
        std::fs::write(layout.pgdata.join("half-copied"), "x").unwrap();
        std::fs::write(clone_marker(&layout), "{}").unwrap();
        let settings =
            prepare(&pg, &layout, "10.0.0.1", "pw", "pg-2", &CloneFrom::Primary).unwrap();
        assert_eq!(calls(&pg), 1);
        assert!(!layout.pgdata.join("half-copied").exists(), "not wiped");
        assert!(layout.pgdata.join("cloned").exists());
        assert!(layout.pgdata.join("standby.signal").exists());
        assert!(!clone_marker(&layout).exists());
        assert_eq!(settings[0].0, "primary_conninfo");
        assert!(
            settings[0]
                .1
                .starts_with("host=10.0.0.1 port=5432 user=streaming_replica")
        );
        // Started again: a standby already, no second clone.
        prepare(&pg, &layout, "10.0.0.1", "pw", "pg-2", &CloneFrom::Primary).unwrap();
        assert_eq!(calls(&pg), 1);
    }

    #[test]
    fn a_cloned_standby_starts_without_cloning() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, pg) = fake(dir.path(), false);
        std::fs::create_dir_all(&layout.pgdata).unwrap();
        std::fs::write(layout.pgdata.join("PG_VERSION"), "15").unwrap();
        std::fs::write(layout.pgdata.join("standby.signal"), "").unwrap();
        prepare(&pg, &layout, "pg-rw", "pw", "pg-3", &CloneFrom::Primary).unwrap();
        assert_eq!(calls(&pg), 0);
        assert!(layout.pgdata.join("PG_VERSION").exists());
    }

    #[test]
    fn someone_elses_database_is_never_cloned_over() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            pgdata: dir.path().join("pgdata"),
            state: dir.path().join("state"),
        };
        std::fs::create_dir_all(&layout.pgdata).unwrap();
        std::fs::create_dir_all(&layout.state).unwrap();
        std::fs::write(layout.pgdata.join("PG_VERSION"), "15").unwrap();
        let pg = Postgres {
            bin: "/nonexistent".into(),
            pgdata: layout.pgdata.clone(),
            port: 5432,
            socket_dir: dir.path().into(),
            run_as: RunAs::current(),
        };
        let err = prepare(&pg, &layout, "pg-rw", "x", "pg-2", &CloneFrom::Primary).unwrap_err();
        assert!(format!("{err:#}").contains("not a standby"), "{err:#}");
        assert!(layout.pgdata.join("PG_VERSION").exists());
    }
}
