//! The `pgwarden instance` command line, run as PostgreSQL runs it (and so that
//! `cargo test --workspace` builds the binary the data-path tests drive).

use std::process::Command;

fn pgwarden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgwarden"))
}

#[test]
fn wal_archive_without_settings_fails_so_postgresql_keeps_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let out = pgwarden()
        .args(["instance", "wal-archive", "pg_wal/000000010000000000000001"])
        .env("PGDATA", dir.path().join("pgdata"))
        .env("PGWARDEN_SETTINGS_DIR", dir.path().join("settings"))
        .env("AWS_SECRET_ACCESS_KEY", "do-not-print-me")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("archive.json"), "{err}");
    assert!(!err.contains("do-not-print-me"));
    let failure =
        std::fs::read_to_string(dir.path().join("pgwarden/archive-failure.json")).unwrap();
    assert!(failure.contains("000000010000000000000001"), "{failure}");
}

#[test]
fn delete_backups_refuses_an_unknown_retention_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("archive.json"),
        r#"{"destinationPath":"s3://b/p","serverName":"pg","maxParallel":1,"archiveTimeoutSeconds":0}"#,
    )
    .unwrap();
    let out = pgwarden()
        .args([
            "instance",
            "delete-backups",
            "--retention",
            "3y",
            "--settings-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not like 30d, 4w or 6m"));
}
