//! The native archiver's store format against barman's own tools (issue 14): real WAL from
//! real PostgreSQL, barman cloud 3.19.1, MinIO. Needs `cargo xtask setup`.
//!
//! ```text
//!   native Store::archive ─► MinIO ─► barman-cloud-wal-restore   byte-identical, each
//!                                                                compression, SSE applied
//!   barman-cloud-wal-archive ─► MinIO ─► native Store::fetch     byte-identical, each
//!                                                                compression
//!   an object of the same name with other content               refused, left as it was
//!   the agent with `archiver: native` and no barman at all      archives ahead of PostgreSQL,
//!                                                                keeps WAL through an outage
//!   a restore with no barman-cloud-wal-restore                  replays natively archived WAL
//!                                                                (native restorer, prefetch)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgwarden::instance::native::key::COMPRESSIONS;
use pgwarden::instance::native::{Store, Stored};
use pgwarden::instance::{barman, walrestore};
use pgwarden_crds::settings::{ArchiveSettings, Archiver};
use pgwarden_crds::{Encryption, WalCompression};
use pgwarden_tests::datapath::{
    Instance, InstanceOptions, KMS_KEY_NAME, S3Server, archive_settings, deps, log_tail,
    shared_tempdir,
};

const BUCKET: &str = "wal";

fn label(c: Option<WalCompression>) -> String {
    c.map_or("none".into(), |c| format!("{c:?}").to_lowercase())
}

/// A primary archiving with barman-cloud-wal-archive (gzip) into server `barman`, and copies
/// of `n` of its complete WAL segments in `dir`.
fn real_segments(s3: &S3Server, dir: &Path, n: usize) -> (Instance, Vec<PathBuf>) {
    s3.create_bucket(BUCKET);
    let pg = Instance::start(InstanceOptions {
        settings: archive_settings(s3, BUCKET, "barman"),
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![],
    });
    pg.psql("CREATE TABLE t(v text)");
    let mut copies = Vec::new();
    for i in 0..n {
        pg.psql(&format!(
            "INSERT INTO t SELECT md5(g::text || '{i}') FROM generate_series(1, 20000) g"
        ));
        let wal = pg.switch_wal();
        // Switched: complete, and still in pg_wal until a checkpoint after its archiving.
        let copy = dir.join(&wal);
        std::fs::copy(pg.pgdata().join("pg_wal").join(&wal), &copy).unwrap();
        copies.push(copy);
    }
    let last = copies
        .last()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        pg.wait_archived(last, Duration::from_secs(120)),
        "{last} not archived by barman: {}",
        log_tail(&pg.log(), 30)
    );
    (pg, copies)
}

fn settings(s3: &S3Server, server: &str, c: Option<WalCompression>) -> ArchiveSettings {
    let mut s = archive_settings(s3, BUCKET, server);
    s.compression = c;
    s
}

fn store(s3: &S3Server, s: &ArchiveSettings) -> Store {
    let env = s3.credentials.env();
    Store::open(s, |k| {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .expect("store")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// `barman-cloud-wal-restore` of `wal` into `dest`: its exit status and stderr.
fn barman_restore(s3: &S3Server, s: &ArchiveSettings, wal: &str, dest: &Path) -> (i32, String) {
    let spool = dest.with_extension("spool");
    let out = Command::new(deps().barman_bin.join("barman-cloud-wal-restore"))
        .args(barman::wal_restore_args(s, &spool, wal, dest))
        .envs(s3.credentials.env())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

/// `barman-cloud-wal-archive` of `path` with `s`'s compression.
fn barman_archive(s3: &S3Server, s: &ArchiveSettings, path: &Path) {
    let out = Command::new(deps().barman_bin.join("barman-cloud-wal-archive"))
        .args(barman::wal_archive_args(s, path))
        .envs(s3.credentials.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "barman-cloud-wal-archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn wal_archived_natively_is_restored_byte_identical_by_barman_for_each_compression() {
    let s3 = S3Server::start();
    let dir = shared_tempdir("pgwarden-native-");
    let (_pg, segments) = real_segments(&s3, dir.path(), 2);
    let history = dir.path().join("00000002.history");
    std::fs::write(&history, "1\t0/3000060\tno recovery target specified\n").unwrap();
    let rt = runtime();
    // SSE on some: AES256 and aws:kms (MinIO's default key) must be what the store applied.
    let sse = [None, Some(Encryption::Aes256), Some(Encryption::AwsKms)];
    for (i, c) in COMPRESSIONS.into_iter().enumerate() {
        let server = format!("native-{}", label(c));
        let mut s = settings(&s3, &server, c);
        s.encryption = sse[i % 3];
        let st = store(&s3, &s);
        for file in segments.iter().chain([&history]) {
            let name = file.file_name().unwrap().to_str().unwrap();
            let stored = rt.block_on(st.archive(file)).unwrap();
            let Stored::Uploaded { key, .. } = stored else {
                panic!("{name} ({server}): {stored:?}")
            };
            let folder = if name.ends_with(".history") {
                String::new()
            } else {
                format!("{}/", &name[..16])
            };
            let suffix = pgwarden::instance::native::key::suffix(c);
            assert_eq!(key, format!("pg/{server}/wals/{folder}{name}{suffix}"));
            assert_eq!(
                s3.encryption_of(BUCKET, &key).as_deref(),
                s.encryption.map(|e| e.as_str()),
                "{key}"
            );
            let back = dir.path().join(format!("{server}-{name}"));
            let (code, stderr) = barman_restore(&s3, &s, name, &back);
            assert_eq!(code, 0, "barman-cloud-wal-restore {key}: {stderr}");
            assert!(same_bytes(file, &back), "{key} came back different");
        }
    }
}

#[test]
fn wal_archived_by_barman_is_read_by_the_native_restore() {
    let s3 = S3Server::start();
    let dir = shared_tempdir("pgwarden-native-");
    let (_pg, segments) = real_segments(&s3, dir.path(), 2);
    let rt = runtime();
    // The instance's own archive: barman-cloud-wal-archive --gzip, run by the agent.
    let gz = store(&s3, &settings(&s3, "barman", Some(WalCompression::Gzip)));
    for seg in &segments {
        let name = seg.file_name().unwrap().to_str().unwrap();
        let back = dir.path().join(format!("gz-{name}"));
        let n = rt.block_on(gz.fetch(name, &back)).unwrap();
        assert_eq!(n, Some(16 * 1024 * 1024), "{name}");
        assert!(same_bytes(seg, &back), "{name} came back different");
    }
    // Every other compression, archived by barman-cloud-wal-archive itself.
    for c in COMPRESSIONS {
        let server = format!("barman-{}", label(c));
        let s = settings(&s3, &server, c);
        barman_archive(&s3, &s, &segments[0]);
        // The native restore reads the suffix, whatever compression it would write itself.
        let reader = store(&s3, &settings(&s3, &server, Some(WalCompression::Zstd)));
        let name = segments[0].file_name().unwrap().to_str().unwrap();
        let back = dir.path().join(format!("{server}-{name}"));
        let n = rt.block_on(reader.fetch(name, &back)).unwrap();
        assert!(n.is_some(), "{server}: {name} not found");
        assert!(same_bytes(&segments[0], &back), "{server}: {name} differs");
        // Absent files are a clean "not in the store", with nothing written.
        let next = segments[1].file_name().unwrap().to_str().unwrap();
        let none = dir.path().join(format!("{server}-{next}"));
        assert_eq!(rt.block_on(reader.fetch(next, &none)).unwrap(), None);
        assert!(!none.exists());
        let history = rt
            .block_on(reader.fetch("00000002.history", &none))
            .unwrap();
        assert_eq!(history, None);
    }
}

#[test]
fn an_object_of_the_same_name_with_other_content_is_refused() {
    let s3 = S3Server::start();
    let dir = shared_tempdir("pgwarden-native-");
    let (_pg, segments) = real_segments(&s3, dir.path(), 2);
    let rt = runtime();
    let name = segments[0].file_name().unwrap().to_str().unwrap();
    // The same WAL already archived by barman (other gzip bytes, same content): accepted.
    let s = settings(&s3, "barman", Some(WalCompression::Gzip));
    let st = store(&s3, &s);
    let again = rt.block_on(st.archive(&segments[0])).unwrap();
    assert!(matches!(again, Stored::AlreadyThere { .. }), "{again:?}");
    // Another segment's content under this name: refused, and the object is left alone.
    let impostor_dir = dir.path().join("impostor");
    std::fs::create_dir(&impostor_dir).unwrap();
    let impostor = impostor_dir.join(name);
    std::fs::copy(&segments[1], &impostor).unwrap();
    for c in [Some(WalCompression::Gzip), None] {
        let s = settings(&s3, if c.is_some() { "barman" } else { "plain" }, c);
        let st = store(&s3, &s);
        if c.is_none() {
            rt.block_on(st.archive(&segments[0])).unwrap();
        }
        let err = rt
            .block_on(st.archive(&impostor))
            .expect_err("other content must be refused");
        let text = format!("{err:#}");
        assert!(text.contains("other content"), "{text}");
        assert!(text.contains(name), "{text}");
        let back = dir.path().join(format!("back-{}-{name}", label(c)));
        let (code, stderr) = barman_restore(&s3, &s, name, &back);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            same_bytes(&segments[0], &back),
            "the object was overwritten"
        );
    }
}

#[test]
fn the_agent_archives_natively_without_barman_and_keeps_wal_through_an_outage() {
    let mut s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let mut settings = archive_settings(&s3, BUCKET, "agent");
    settings.archiver = Archiver::Native;
    // No barman-cloud-* to run: every WAL file must go through the native archiver.
    let no_barman = shared_tempdir("pgwarden-no-barman-");
    let pg = Instance::start(InstanceOptions {
        settings,
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![(
            "PGWARDEN_BARMAN_BIN".into(),
            no_barman.path().display().to_string(),
        )],
    });
    pg.psql("CREATE TABLE t(v text)");
    let switch = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                pg.psql(&format!(
                    "INSERT INTO t SELECT md5(g::text || '{i}') FROM generate_series(1, 20000) g"
                ));
                pg.switch_wal()
            })
            .collect()
    };
    let wals = switch(6);
    let last = wals.last().unwrap();
    assert!(
        pg.wait_archived(last, Duration::from_secs(60)),
        "{last} not archived: {}",
        log_tail(&pg.log(), 30)
    );
    let keys = s3.list(BUCKET, "pg/agent/wals/");
    for w in &wals {
        let key = format!("pg/agent/wals/{}/{w}.gz", &w[..16]);
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
    // The store goes away: PostgreSQL keeps the files until they are in the store.
    s3.stop();
    let later = switch(3);
    let later_last = later.last().unwrap();
    assert!(!pg.wait_archived(later_last, Duration::from_secs(5)));
    s3.restart();
    assert!(
        pg.wait_archived(later_last, Duration::from_secs(180)),
        "{later_last} not archived after the outage: {}",
        log_tail(&pg.log(), 30)
    );
    let keys = s3.list(BUCKET, "pg/agent/wals/");
    for w in &later {
        let key = format!("pg/agent/wals/{}/{w}.gz", &w[..16]);
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
}

/// barman's folder without `barman-cloud-wal-restore`: a restore must replay WAL natively.
fn barman_without_wal_restore() -> tempfile::TempDir {
    let dir = shared_tempdir("pgwarden-barman-");
    for entry in std::fs::read_dir(&deps().barman_bin).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "barman-cloud-wal-restore" {
            std::os::unix::fs::symlink(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

#[test]
fn a_restore_replays_natively_archived_wal_with_the_native_restorer() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let mut settings = archive_settings(&s3, BUCKET, "source");
    settings.archiver = Archiver::Native;
    settings.compression = Some(WalCompression::Zstd);
    settings.encryption = Some(Encryption::Aes256);
    let pg = Instance::start(InstanceOptions {
        settings: settings.clone(),
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![],
    });
    pg.psql("CREATE TABLE t(v text)");
    let (ok, facts, stderr) = pg.backup("native-restore");
    assert!(ok, "backup: {stderr}\n{facts}");
    let backup_id = facts["backupId"].as_str().expect("backup id").to_string();
    // Several segments after the backup: replay must fetch (and prefetch) each.
    let mut last = String::new();
    for i in 0..8 {
        pg.psql(&format!(
            "INSERT INTO t SELECT md5(g::text || '{i}') FROM generate_series(1, 20000) g"
        ));
        last = pg.switch_wal();
    }
    assert!(
        pg.wait_archived(&last, Duration::from_secs(120)),
        "{last} not archived: {}",
        log_tail(&pg.log(), 30)
    );
    let want = pg.psql("SELECT count(*) FROM t");
    let source = pg.dir.path().join("source.json");
    std::fs::write(&source, serde_json::to_vec(&settings).unwrap()).unwrap();
    let mut restored_settings = settings.clone();
    restored_settings.server_name = "restored".into();
    let barman = barman_without_wal_restore();
    let restored = Instance::start(InstanceOptions {
        settings: restored_settings,
        credentials: s3.credentials.clone(),
        extra_args: vec![
            "--restore-backup".into(),
            backup_id,
            "--restore-source".into(),
            source.display().to_string(),
        ],
        env: vec![(
            "PGWARDEN_BARMAN_BIN".into(),
            barman.path().display().to_string(),
        )],
    });
    assert_eq!(
        restored.psql("SELECT count(*) FROM t"),
        want,
        "{}",
        log_tail(&restored.log(), 30)
    );
    assert_eq!(restored.psql("SELECT pg_is_in_recovery()"), "f");

    // restore_command's exit statuses through the agent's restorer: 0 found, 1 only for the
    // store's own "no such file", > 125 for a store it cannot reach (recovery stops).
    let mut s3 = s3;
    let wal_restore = |wal: &str| {
        let dest = restored.dir.path().join(format!("fetched-{wal}"));
        Command::new(&deps().pgwarden)
            .args(["instance", "wal-restore", "--source"])
            .arg(&source)
            .arg(wal)
            .arg(&dest)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(restored.env())
            .env(walrestore::ENV_RETRY_SECONDS, "2")
            .output()
            .unwrap()
    };
    let status = |out: &std::process::Output| out.status.code();
    assert_eq!(status(&wal_restore(&last)), Some(0));
    assert_eq!(status(&wal_restore("0000000100000000000000FE")), Some(1));
    s3.stop();
    let down = wal_restore(&last);
    assert_eq!(
        status(&down),
        Some(walrestore::ABORT_RECOVERY),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}

/// What the store says of an object's encryption: `ServerSideEncryption` and `SSEKMSKeyId`.
fn sse_of(s3: &S3Server, key: &str) -> (String, String) {
    let out = s3.boto3(
        "import boto3,sys\n\
         h=boto3.client('s3',endpoint_url=sys.argv[1]).head_object(Bucket=sys.argv[2],Key=sys.argv[3])\n\
         print(h.get('ServerSideEncryption') or '-', h.get('SSEKMSKeyId') or '-')\n",
        &[BUCKET, key],
    );
    let (sse, kms) = out.trim().split_once(' ').expect("two words");
    (sse.to_string(), kms.to_string())
}

#[test]
fn a_kms_key_id_reaches_the_store_from_the_native_archiver_and_from_barman() {
    let s3 = S3Server::start();
    let dir = shared_tempdir("pgwarden-native-");
    let (_pg, segments) = real_segments(&s3, dir.path(), 1);
    let rt = runtime();
    let name = segments[0].file_name().unwrap().to_str().unwrap();
    let kms = |server: &str, c: Option<WalCompression>, key_id: &str| {
        let mut s = settings(&s3, server, c);
        s.encryption = Some(Encryption::AwsKms);
        s.sse_kms_key_id = Some(key_id.into());
        s
    };
    // Uncompressed (the streamed PUT) and gzip (the buffered one), with MinIO's own key.
    for c in [None, Some(WalCompression::Gzip)] {
        let s = kms(&format!("kms-{}", label(c)), c, KMS_KEY_NAME);
        let stored = rt.block_on(store(&s3, &s).archive(&segments[0])).unwrap();
        let Stored::Uploaded { key, .. } = stored else {
            panic!("{stored:?}")
        };
        let (sse, key_id) = sse_of(&s3, &key);
        assert_eq!(sse, "aws:kms", "{key}");
        assert!(key_id.ends_with(KMS_KEY_NAME), "{key}: {key_id}");
        let back = dir.path().join(format!("kms-{}-{name}", label(c)));
        let (code, stderr) = barman_restore(&s3, &s, name, &back);
        assert_eq!(code, 0, "barman-cloud-wal-restore {key}: {stderr}");
        assert!(same_bytes(&segments[0], &back), "{key} came back different");
    }
    // A key the store does not have: the id was sent, so the upload fails and stores nothing.
    for c in [None, Some(WalCompression::Gzip)] {
        let server = format!("kms-unknown-{}", label(c));
        let s = kms(&server, c, "no-such-key");
        let err = rt
            .block_on(store(&s3, &s).archive(&segments[0]))
            .expect_err("an unknown KMS key must fail the upload");
        eprintln!("unknown key, {}: {err:#}", label(c));
        assert!(s3.list(BUCKET, &format!("pg/{server}/")).is_empty());
    }
    // barman-cloud-wal-archive gets the key id too (`--sse-kms-key-id`).
    let s = kms("kms-barman", Some(WalCompression::Gzip), KMS_KEY_NAME);
    barman_archive(&s3, &s, &segments[0]);
    let key = format!("pg/kms-barman/wals/{}/{name}.gz", &name[..16]);
    let (sse, key_id) = sse_of(&s3, &key);
    assert_eq!(sse, "aws:kms", "{key}");
    assert!(key_id.ends_with(KMS_KEY_NAME), "{key}: {key_id}");
}

#[test]
fn uploads_of_one_name_at_once_store_one_object_and_never_overwrite() {
    let s3 = S3Server::start();
    let dir = shared_tempdir("pgwarden-native-");
    let (_pg, segments) = real_segments(&s3, dir.path(), 2);
    let rt = runtime();
    let name = segments[0].file_name().unwrap().to_str().unwrap();
    let impostor = dir.path().join("impostor").join(name);
    std::fs::create_dir(impostor.parent().unwrap()).unwrap();
    std::fs::copy(&segments[1], &impostor).unwrap();
    for c in [None, Some(WalCompression::Gzip)] {
        let s = settings(&s3, &format!("race-{}", label(c)), c);
        let (a, b) = (store(&s3, &s), store(&s3, &s));
        // The same segment twice at once: one upload, the other finds it (If-None-Match).
        let (x, y) =
            rt.block_on(async { tokio::join!(a.archive(&segments[0]), b.archive(&segments[0])) });
        let mut got = [x.unwrap(), y.unwrap()].map(|o| matches!(o, Stored::Uploaded { .. }));
        got.sort();
        assert_eq!(got, [false, true], "{}: exactly one upload", label(c));
        // Two contents under one name at once, to a fresh folder: one wins, the other is
        // refused, and the object is the winner's whole file.
        let s = settings(&s3, &format!("race2-{}", label(c)), c);
        let (a, b) = (store(&s3, &s), store(&s3, &s));
        let (x, y) =
            rt.block_on(async { tokio::join!(a.archive(&impostor), b.archive(&segments[0])) });
        let refusal = match (x, y) {
            (Ok(Stored::Uploaded { .. }), Err(e)) | (Err(e), Ok(Stored::Uploaded { .. })) => {
                assert!(format!("{e:#}").contains("other content"), "{e:#}");
                e
            }
            other => panic!("{}: one upload and one refusal, not {other:?}", label(c)),
        };
        let back = dir.path().join(format!("race-{}-{name}", label(c)));
        let (code, stderr) = barman_restore(&s3, &s, name, &back);
        assert_eq!(code, 0, "{stderr}");
        let kept = if same_bytes(&segments[0], &back) {
            &segments[0]
        } else {
            &impostor
        };
        assert!(
            same_bytes(kept, &back),
            "a torn or mixed object (refused: {refusal:#})"
        );
    }
}
