//! The instance image's base layer: a Debian bookworm minbase rootfs made by mmdebstrap, with
//! PostgreSQL 15 and the barman cloud tools in a venv, pinned as the tests pin them.
//!
//! It takes minutes and changes only with its recipe, so it is cached apart from the image:
//! a new `pgwarden` binary repacks only the small layer on top.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use super::oci;

/// The `postgres` user's uid and gid, fixed (Debian would pick the next free system uid).
pub const POSTGRES_UID: u32 = 999;
const SUITE: &str = "bookworm";
const PACKAGES: &[&str] = &[
    "postgresql-15",
    "python3-venv",
    // pip cannot build psycopg2 in the rootfs (no compiler, no pg_config): the venv sees
    // Debian's through --system-site-packages.
    "python3-psycopg2",
    "ca-certificates",
    "tzdata",
];
/// Files dpkg never unpacks: translations, manuals and docs (~80 MB of the rootfs), as
/// Debian's slim images do; the copyright files stay.
const DPKG_OPTIONS: &[&str] = &[
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];
/// The barman venv inside the image.
pub const VENV: &str = "/opt/barman";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs once the essential packages are in, before PostgreSQL's: the `postgres` user with a
/// fixed uid (groupadd is not there yet, so the entries are written directly), and no
/// default `main` cluster (pgwarden runs initdb itself).
const ESSENTIAL_HOOK: &str = r#"#!/bin/sh
set -e
echo 'postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash' >> "$1/etc/passwd"
echo 'postgres:x:999:' >> "$1/etc/group"
echo 'postgres:*:19000:0:99999:7:::' >> "$1/etc/shadow"
mkdir -p "$1/etc/postgresql-common/createcluster.d"
echo 'create_main_cluster = false' > "$1/etc/postgresql-common/createcluster.d/pgwarden.conf"
"#;

/// The recipe's identity: any change here rebuilds the base.
fn key() -> Result<String> {
    let recipe = format!(
        "{SUITE}\n{PACKAGES:?}\n{DPKG_OPTIONS:?}\n{ESSENTIAL_HOOK}\n{}",
        customize_hook()
    );
    oci::sha256_bytes(recipe.as_bytes())
}

/// Runs once every package is in: the barman venv. pip in the chroot gets a clean
/// environment (the host's `REQUESTS_CA_BUNDLE`, `PIP_*` name host paths) and the host's CA
/// bundle for this run only (egress may go through a TLS proxy); neither stays in the image.
fn customize_hook() -> String {
    // The same pins as the tests' venv, but psycopg2 from Debian (see PACKAGES).
    let pins: Vec<String> = crate::deps::BARMAN_REQUIREMENTS
        .iter()
        .filter(|r| !r.starts_with("psycopg2"))
        .map(|r| format!("'{r}'"))
        .collect();
    format!(
        r#"#!/bin/sh
set -e
cp /etc/ssl/certs/ca-certificates.crt "$1/tmp/host-ca.crt"
chroot "$1" /usr/bin/python3 -m venv --system-site-packages {VENV}
chroot "$1" env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/tmp/host-ca.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_NO_CACHE_DIR=1 \
    {VENV}/bin/pip install --quiet {}
rm -f "$1/tmp/host-ca.crt"
chroot "$1" {VENV}/bin/barman-cloud-wal-archive --version
find "$1{VENV}" -name __pycache__ -type d -prune -exec rm -rf {{}} +
"#,
        pins.join(" ")
    )
}

/// The instance image's configuration: postgres (non-root), PostgreSQL and barman on PATH
/// and where pgwarden's agent looks for them, PGDATA as a volume.
pub fn config() -> oci::Config {
    oci::Config {
        user: format!("{POSTGRES_UID}:{POSTGRES_UID}"),
        env: vec![
            format!(
                "PATH={VENV}/bin:{PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            ),
            format!("PGWARDEN_PG_BIN={PG_BIN}"),
            format!("PGWARDEN_BARMAN_BIN={VENV}/bin"),
            "PGDATA=/var/lib/postgresql/data/pgdata".into(),
            "LANG=C.UTF-8".into(),
        ],
        entrypoint: vec![format!("/{}", super::ENTRYPOINT_PATH)],
        cmd: vec!["pgwarden".into(), "instance".into(), "run".into()],
        workdir: "/var/lib/postgresql".into(),
        volumes: vec!["/var/lib/postgresql/data".into()],
    }
}

/// The cached base: an OCI layout holding the rootfs as one layer under the tag `base`.
pub struct Base {
    pub key: String,
    pub layout: PathBuf,
}

/// The base for the current recipe, built when missing (a few minutes).
pub fn ensure(root: &Path) -> Result<Base> {
    let key = key()?;
    let dir = root.join(format!("base-{}", &key[..16]));
    let base = Base {
        key,
        layout: dir.join("oci"),
    };
    super::prune(root, "base", &dir)?;
    if dir.join(".done").exists() {
        eprintln!("    base rootfs: cached ({})", dir.display());
        return Ok(base);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let tar = dir.join("rootfs.tar");
    let started = Instant::now();
    mmdebstrap(&dir, &tar)?;
    let bytes = std::fs::metadata(&tar)?.len();
    eprintln!(
        "    base rootfs: {:.1} MB in {:.1?} (mmdebstrap)",
        bytes as f64 / 1e6,
        started.elapsed()
    );
    let started = Instant::now();
    oci::new_layout(&base.layout, "base")?;
    oci::add_layer(
        &base.layout,
        "base",
        &tar,
        "mmdebstrap: Debian, PostgreSQL, barman",
    )?;
    std::fs::remove_file(&tar)?;
    std::fs::write(dir.join("rootfs-bytes"), bytes.to_string())?;
    eprintln!(
        "    base layer: packed in {:.1?} (umoci)",
        started.elapsed()
    );
    std::fs::write(dir.join(".done"), &base.key)?;
    Ok(base)
}

/// The rootfs as a tar; mmdebstrap runs as root here (`--mode=root`), the hooks in files.
fn mmdebstrap(dir: &Path, tar: &Path) -> Result<()> {
    let essential = dir.join("essential-hook.sh");
    let customize = dir.join("customize-hook.sh");
    write_script(&essential, ESSENTIAL_HOOK)?;
    write_script(&customize, &customize_hook())?;
    oci::run(
        Command::new("mmdebstrap")
            .args([
                "--mode=root",
                "--variant=minbase",
                "--format=tar",
                "--quiet",
            ])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .args(DPKG_OPTIONS.iter().map(|o| format!("--dpkgopt={o}")))
            .arg(format!("--essential-hook={}", essential.display()))
            .arg(format!("--customize-hook={}", customize.display()))
            .arg(SUITE)
            .arg(tar),
    )
    .context("mmdebstrap could not build the instance rootfs")
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
