//! The images `cargo xtask image` builds, run with runc as a node would: the instance image
//! starts PostgreSQL as its non-root user on a PGDATA volume and holds the pinned barman
//! cloud tools and this `pgwarden`; the operator image holds `pgwarden` and the shipped
//! policy modules and runs it as its non-root user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Instant;

use pgwarden_tests::runc::{Bundle, TAG, image_layout};

/// The uids the images run as: Debian's `postgres` fixed at 999; the operator's 65532, the
/// uid deploy/operator.yaml sets.
const POSTGRES_UID: u64 = 999;
const OPERATOR_UID: u64 = 65532;

#[test]
fn instance_image_runs_postgres_as_postgres_with_pinned_barman_and_pgwarden() {
    let started = Instant::now();
    let bundle = Bundle::unpack(&image_layout("PGWARDEN_INSTANCE_IMAGE"), TAG);
    eprintln!("umoci unpack: {:.1?}", started.elapsed());
    assert_eq!(bundle.uid(), POSTGRES_UID, "the image's user");

    let started = Instant::now();
    let id = stdout(bundle.run(&["id", "-u"], &[]), "id -u");
    eprintln!(
        "runc run `id -u` (start to exit): {:.1?}",
        started.elapsed()
    );
    assert_eq!(id.trim(), POSTGRES_UID.to_string(), "runs as postgres");

    let version = stdout(bundle.run(&["pgwarden", "--version"], &[]), "pgwarden");
    assert_eq!(version.trim(), format!("pgwarden {TAG}"));
    let barman = bundle.run(&["barman-cloud-wal-archive", "--version"], &[]);
    let barman = stdout(barman, "barman-cloud-wal-archive");
    assert_eq!(barman.trim(), "barman-cloud-wal-archive 3.19.1");

    // A PGDATA volume the node gives the pod, owned by postgres. No TCP listener: the host's
    // network is shared and other tests use its ports; the socket is in /run/postgresql.
    let volume = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(volume.path(), Some(999), Some(999)).expect("chown volume");
    std::fs::set_permissions(volume.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod volume");
    let script = "initdb --auth=trust >/dev/null \
        && pg_ctl -w -o \"-c listen_addresses=''\" -l \"$PGDATA/../log\" start >/dev/null \
        && psql -XtA -d postgres -c 'SELECT 1' \
        && pg_ctl -w -m fast stop >/dev/null";
    let started = Instant::now();
    let out = bundle.run(
        &["sh", "-c", script],
        &[(volume.path(), "/var/lib/postgresql/data")],
    );
    let log = std::fs::read_to_string(volume.path().join("log")).unwrap_or_default();
    let answer = stdout(out, &format!("initdb, start, psql (server log: {log})"));
    eprintln!(
        "runc run: initdb + start + psql + stop: {:.1?}",
        started.elapsed()
    );
    assert_eq!(answer.trim(), "1");
    assert_owned_by(&volume.path().join("pgdata"), POSTGRES_UID);
}

#[test]
fn operator_image_runs_pgwarden_as_non_root_with_the_policy_modules() {
    let bundle = Bundle::unpack(&image_layout("PGWARDEN_OPERATOR_IMAGE"), TAG);
    assert_eq!(bundle.uid(), OPERATOR_UID, "the image's user");
    let started = Instant::now();
    // The entrypoint is pgwarden itself: the arguments are its own.
    let version = stdout(bundle.run(&["--version"], &[]), "pgwarden --version");
    eprintln!("runc run `pgwarden --version`: {:.1?}", started.elapsed());
    assert_eq!(version.trim(), format!("pgwarden {TAG}"));

    let policies = bundle.rootfs().join("usr/share/pgwarden/policies");
    for module in ["default.wasm", "production.wasm"] {
        let bytes = std::fs::read(policies.join(module))
            .unwrap_or_else(|e| panic!("{module} in the operator image: {e}"));
        assert_eq!(&bytes[..4], b"\0asm", "{module} is a wasm module");
    }
    assert!(
        !policies.join("adversarial.wasm").exists(),
        "the sandbox tests' adversarial module is not shipped"
    );
    assert!(
        !bundle.rootfs().join("bin/sh").exists(),
        "the operator image holds no shell"
    );
}

/// The command's stdout, or a panic with its status and stderr naming `what`.
fn stdout(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} in the container failed ({}): stdout: {} stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_owned_by(path: &Path, uid: u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(u64::from(meta.uid()), uid, "owner of {}", path.display());
}
