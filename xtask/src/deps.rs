//! The data path's test dependencies: PostgreSQL (Debian), the barman cloud tools (PyPI, in a
//! venv) and a real S3-compatible server (MinIO, built from the Go module proxy).
//!
//! Every installer is idempotent: it writes a marker file keyed by the pinned version once it
//! has finished, and returns at once when the marker is there. The tests find what is
//! installed here through the environment variables below, whose defaults are these paths.
//!
//! ```text
//!   PGWARDEN_PG_BIN      /usr/lib/postgresql/15/bin              (apt: postgresql-15)
//!   PGWARDEN_BARMAN_BIN  .cache/barman/<version>/venv/bin        (pip: barman[cloud]==…)
//!   PGWARDEN_S3_SERVER   .cache/minio/<version>/bin/minio        (go install github.com/minio/minio)
//! ```

// Wired into `cargo xtask setup` by `test::setup()`; until then some items are unused.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::paths;
use crate::progress::{Phase, run_logged, say};

/// PostgreSQL major version, from Debian.
pub const PG_MAJOR: u32 = 15;
/// The barman release, from PyPI.
pub const BARMAN_VERSION: &str = "3.19.1";
/// Every package of the barman venv, pinned (a `pip freeze` of a working venv).
pub const BARMAN_REQUIREMENTS: &[&str] = &[
    "barman[cloud,snappy,zstandard,lz4]==3.19.1",
    "boto3==1.44.8",
    "botocore==1.44.8",
    "cramjam==2.14.0",
    "jmespath==1.1.0",
    "lz4==4.4.5",
    "psycopg2==2.9.13",
    "python-dateutil==2.9.0.post0",
    "python-snappy==0.7.3",
    "s3transfer==0.19.3",
    "six==1.17.0",
    "urllib3==2.8.0",
    "zstandard==0.25.0",
];
/// The S3-compatible server: MinIO, from the Go module proxy. It builds in ~5 minutes on two
/// cores (Garage from crates.io took ~68), and it implements SSE-S3 (`AES256`) and SSE-KMS
/// (`aws:kms`) with a static key, so every encryption the API accepts is tested for real.
/// MinIO tags its releases outside semver; the module proxy serves this pseudo-version
/// (the source of 2026-02-12), which is what pins it.
pub const MINIO_MODULE: &str = "github.com/minio/minio";
pub const MINIO_VERSION: &str = "v0.0.0-20260212201848-7aac2a2c5b7c";

/// Where the data path's dependencies are, once installed.
#[derive(Debug, Clone)]
pub struct DataPathDeps {
    /// PostgreSQL's `bin` folder (initdb, postgres, pg_ctl, psql, pgbench).
    pub pg_bin: PathBuf,
    /// The venv's `bin` folder holding the `barman-cloud-*` commands.
    pub barman_bin: PathBuf,
    /// The S3-compatible server binary.
    pub s3_server: PathBuf,
}

impl DataPathDeps {
    /// The environment variables under which the tests find these paths.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("PGWARDEN_PG_BIN", self.pg_bin.clone()),
            ("PGWARDEN_BARMAN_BIN", self.barman_bin.clone()),
            ("PGWARDEN_S3_SERVER", self.s3_server.clone()),
        ]
    }
}

/// Installs PostgreSQL, the barman venv and the S3 server; fast when all are there.
pub fn ensure_all() -> Result<DataPathDeps> {
    let (pg_bin, barman_bin) = ensure_postgres_and_barman()?;
    let deps = DataPathDeps {
        pg_bin,
        barman_bin,
        s3_server: ensure_s3_server()?,
    };
    deps.show();
    Ok(deps)
}

/// PostgreSQL and the barman venv: downloads and unpacking more than compiling, so the
/// set-up runs them beside the control plane's Go build.
pub fn ensure_postgres_and_barman() -> Result<(PathBuf, PathBuf)> {
    Ok((ensure_postgres()?, ensure_barman()?))
}

impl DataPathDeps {
    /// Prints where each dependency is.
    pub fn show(&self) {
        for (name, path) in self.env() {
            say(&format!("datapath: {name}={}", path.display()));
        }
    }
}

/// PostgreSQL from Debian's packages, with the `postgres` user it runs as.
pub fn ensure_postgres() -> Result<PathBuf> {
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{PG_MAJOR}/bin"));
    if bin.join("postgres").exists() && bin.join("pgbench").exists() {
        return Ok(bin);
    }
    let what = format!("installing postgresql-{PG_MAJOR} (apt-get)");
    let phase = Phase {
        key: "postgresql",
        what: &what,
        usually: (30, 3 * 60),
        tool_shows_progress: false,
    };
    phase.run(|log| {
        run_logged(Command::new("apt-get").arg("update"), log)?;
        run_logged(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .arg(format!("postgresql-{PG_MAJOR}"))
                .env("DEBIAN_FRONTEND", "noninteractive"),
            log,
        )
    })?;
    if !bin.join("postgres").exists() {
        bail!(
            "postgresql-{PG_MAJOR} installed but {} is missing",
            bin.display()
        );
    }
    Ok(bin)
}

/// The barman cloud tools in a venv made with the system Python, so that the `postgres` user
/// can run them (a pyenv Python under /root is unreadable to it).
pub fn ensure_barman() -> Result<PathBuf> {
    let dir = paths::cache().join("barman").join(BARMAN_VERSION);
    let bin = dir.join("venv/bin");
    let marker = dir.join(".installed");
    let want = BARMAN_REQUIREMENTS.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        return Ok(bin);
    }
    let what = format!("installing barman {BARMAN_VERSION} (pip, in a venv)");
    let phase = Phase {
        key: "barman",
        what: &what,
        usually: (30, 3 * 60),
        tool_shows_progress: false,
    };
    phase.run(|log| {
        if dir.join("venv").exists() {
            std::fs::remove_dir_all(dir.join("venv"))?;
        }
        std::fs::create_dir_all(&dir)?;
        run_logged(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(dir.join("venv")),
            log,
        )?;
        run_logged(
            Command::new(bin.join("pip"))
                .args(["install", "--disable-pip-version-check"])
                .args(BARMAN_REQUIREMENTS),
            log,
        )?;
        run_logged(
            Command::new(bin.join("barman-cloud-wal-archive")).arg("--version"),
            log,
        )?;
        std::fs::write(&marker, &want)?;
        Ok(())
    })?;
    Ok(bin)
}

/// MinIO, built with `go install` at the pinned version; the binary is cached by version,
/// in the clone and machine-wide (another clone on this machine reuses it).
pub fn ensure_s3_server() -> Result<PathBuf> {
    let root = paths::cache().join("minio").join(MINIO_VERSION);
    let bin = root.join("bin/minio");
    if bin.exists() {
        return Ok(bin);
    }
    let shared = paths::machine_cache()
        .join("minio")
        .join(MINIO_VERSION)
        .join("minio");
    std::fs::create_dir_all(root.join("bin"))?;
    if shared.exists() {
        std::fs::copy(&shared, &bin)
            .with_context(|| format!("cannot copy {}", shared.display()))?;
        return Ok(bin);
    }
    let what = format!("building the S3 server, MinIO {MINIO_VERSION} (Go)");
    let phase = Phase {
        key: "minio",
        what: &what,
        usually: (150, 8 * 60),
        tool_shows_progress: false,
    };
    let install = format!("{MINIO_MODULE}@{MINIO_VERSION}");
    // The module pins go1.24; the installed Go is newer and must not fetch a toolchain
    // (`go_command` sets GOTOOLCHAIN=local and the set-up's own Go caches).
    phase.run(|log| {
        run_logged(
            crate::controlplane::go_command(&paths::root(), &["install", &install])
                .env("GOBIN", root.join("bin")),
            log,
        )
    })?;
    std::fs::create_dir_all(shared.parent().expect("a folder"))?;
    std::fs::copy(&bin, &shared).with_context(|| format!("cannot copy to {}", shared.display()))?;
    Ok(bin)
}
