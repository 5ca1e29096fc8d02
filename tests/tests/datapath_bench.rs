//! `cargo xtask bench wal`: WAL archiving throughput and lag under pgbench at full speed,
//! `pgwarden instance wal-archive` with the native archiver (resident in the agent) and with
//! barman-cloud (parallel, maxParallel = 8), against plain `barman-cloud-wal-archive` as
//! archive_command, one after the other in one run, same load.
//!
//! The load is pgbench at full speed running a WAL-heavy script (~1 MB of rows per
//! transaction), not TPC-B: TPC-B at ~1,200 tps here fills a 16 MB segment only every
//! ~20 s, which any archive command keeps up with.
//!
//! Ignored by `cargo test`; run with `--ignored`. Knobs: `PGWARDEN_BENCH_SECONDS` (load per
//! mode, default 60), `PGWARDEN_BENCH_CLIENTS` (default 4), `PGWARDEN_BENCH_OUT` (JSON file,
//! default `target/bench/wal.json`), `PGWARDEN_BENCH_DRAIN_SECONDS` (catch-up bound, 240),
//! `PGWARDEN_BENCH_MODES` (default `native,parallel,plain`), `PGWARDEN_BENCH_COMPRESSION`
//! (WAL compressions, each a run of every mode; default `none,gzip`),
//! `PGWARDEN_BENCH_RESTORE` (`0` skips the restore benchmark).
//!
//! Disk: the script grows its table ~80 MB/s and each segment lands in pg_wal and in MinIO;
//! a 60 s native run with its two restores peaked above 16 GB (2026-12-01, the disk filled
//! on the shared machine). `PGWARDEN_BENCH_SECONDS=15` needs about a quarter of that.
//!
//! The restore benchmark (native mode only, where the same store serves both): a base backup
//! is taken before the load; after the catch-up, the same backup and WAL are restored twice
//! to the latest point, once with the native restorer (prefetching `maxParallel` segments)
//! and once with `barman-cloud-wal-restore` as restore_command, timed from the agent's start
//! to PostgreSQL promoted, with the rows counted against the source.

use std::time::{Duration, Instant};

use pgwarden_crds::WalCompression;
use pgwarden_crds::settings::Archiver;
use pgwarden_tests::datapath::{Instance, InstanceOptions, S3Server, archive_settings, deps};
use serde_json::json;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Segment number (timeline-less) of a WAL file name.
fn segno(wal: &str) -> u64 {
    if wal.len() < 24 {
        return 0;
    }
    let log = u64::from_str_radix(&wal[8..16], 16).unwrap_or(0);
    let seg = u64::from_str_radix(&wal[16..24], 16).unwrap_or(0);
    log * 0x100 + seg
}

struct Sample {
    t: f64,
    written: u64,
    archived: u64,
    ready: u64,
}

fn sample(pg: &Instance, t0: Instant) -> Sample {
    let row = pg.psql(
        "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, ''), \
         (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') FROM pg_stat_archiver",
    );
    let f: Vec<&str> = row.split('|').collect();
    Sample {
        t: t0.elapsed().as_secs_f64(),
        written: segno(f[0]),
        archived: segno(f[1]),
        ready: f[2].parse().unwrap_or(0),
    }
}

fn run_mode(
    s3: &S3Server,
    mode: &str,
    compression: Option<WalCompression>,
    seconds: u32,
    clients: u32,
) -> serde_json::Value {
    let bucket = format!("bench-{mode}-{}", label(compression));
    s3.create_bucket(&bucket);
    let mut settings = archive_settings(s3, &bucket, mode);
    settings.max_parallel = 8;
    settings.compression = compression;
    if mode == "native" {
        settings.archiver = Archiver::Native;
    }
    let mut extra_args = vec![];
    if mode == "plain" {
        let mut words = vec![
            deps()
                .barman_bin
                .join("barman-cloud-wal-archive")
                .display()
                .to_string(),
        ];
        words.extend(["--cloud-provider", "aws-s3", "--endpoint-url"].map(String::from));
        words.extend([s3.endpoint(), "--addressing-style".into(), "path".into()]);
        words.extend([
            settings.destination_path.clone(),
            settings.server_name.clone(),
            "%p".into(),
        ]);
        extra_args = vec!["--archive-command".into(), words.join(" ")];
    }
    let pg = Instance::start(InstanceOptions {
        settings,
        credentials: s3.credentials.clone(),
        extra_args,
        env: vec![],
    });
    // A WAL-heavy pgbench script: each transaction writes ~1 MB of rows, so the load
    // produces segments faster than one archive call per segment can keep up with.
    pg.psql("CREATE TABLE bench_wal (i int, pad text)");
    let script = pg.dir.path().join("wal.sql");
    std::fs::write(
        &script,
        "INSERT INTO bench_wal SELECT g, repeat('x', 400) FROM generate_series(1, 2000) g;\n",
    )
    .unwrap();
    let first = pg.switch_wal();
    assert!(
        pg.wait_archived(&first, Duration::from_secs(120)),
        "{mode}: initial WAL not archived"
    );
    let restore_from =
        (mode == "native" && env_u32("PGWARDEN_BENCH_RESTORE", 1) != 0).then(|| base_backup(&pg));

    let t0 = Instant::now();
    let cpu_start = CpuTimes::now();
    let start = sample(&pg, t0);
    let bench = pg.pgbench_script_spawn(&script, clients, seconds);
    let mut samples = vec![];
    while t0.elapsed() < Duration::from_secs(seconds as u64) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(sample(&pg, t0));
    }
    let out = bench.wait_with_output().expect("pgbench");
    let tps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("tps"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let end = sample(&pg, t0);
    let cpu_load = CpuTimes::now().since(&cpu_start);
    let cpu_drain_start = CpuTimes::now();
    // Catch-up: until everything written during the load is archived (bounded).
    let target = end.written;
    let drain_start = Instant::now();
    let mut last = sample(&pg, t0);
    while last.archived + 1 < target
        && drain_start.elapsed()
            < Duration::from_secs(env_u32("PGWARDEN_BENCH_DRAIN_SECONDS", 240) as u64)
    {
        std::thread::sleep(Duration::from_millis(500));
        last = sample(&pg, t0);
    }
    let drained = last.archived + 1 >= target;
    let catch_up = drained.then(|| drain_start.elapsed().as_secs_f64());
    let cpu_drain = CpuTimes::now().since(&cpu_drain_start);
    let load_secs = end.t - start.t;
    let written = end.written - start.written;
    let archived = end.archived.saturating_sub(start.archived);
    let max_ready = samples.iter().map(|s| s.ready).max().unwrap_or(0);
    let max_lag = samples
        .iter()
        .map(|s| s.written.saturating_sub(s.archived + 1))
        .max()
        .unwrap_or(0);
    let failed = pg.psql("SELECT failed_count FROM pg_stat_archiver");
    let agent_rss = agent_peak_rss_kib(&pg);
    let restores = restore_from.map(|id| restore_both(s3, &pg, &id, written));
    json!({
        "mode": mode,
        "archive_command": match mode {
            "plain" => "barman-cloud-wal-archive %p",
            "native" => "pgwarden instance wal-archive %p (native archiver, maxParallel 8)",
            _ => "pgwarden instance wal-archive %p (barman-cloud, maxParallel 8)",
        },
        "compression": label(compression),
        "restore": restores,
        "agent_peak_rss_mib": agent_rss.map(|k| k as f64 / 1024.0),
        "load_seconds": load_secs,
        "pgbench_clients": clients,
        "pgbench_tps": tps,
        "segments_written": written,
        "segments_archived_during_load": archived,
        "written_segments_per_second": written as f64 / load_secs,
        "archived_segments_per_second": archived as f64 / load_secs,
        "lag_segments_at_end_of_load": end.written.saturating_sub(end.archived + 1),
        "max_lag_segments": max_lag,
        "max_ready_files": max_ready,
        "catch_up_seconds": catch_up,
        "archived_after_catch_up_window": last.archived.saturating_sub(start.archived),
        "failed_count": failed.parse::<i64>().unwrap_or(-1),
        "cpu_busy_during_load": cpu_load.busy,
        "cpu_iowait_during_load": cpu_load.iowait,
        "cpu_busy_during_catch_up": cpu_drain.busy,
        "cpu_iowait_during_catch_up": cpu_drain.iowait,
    })
}

/// The WAL compressions to run every mode with, from `PGWARDEN_BENCH_COMPRESSION`.
fn compressions() -> Vec<Option<WalCompression>> {
    let names = std::env::var("PGWARDEN_BENCH_COMPRESSION").unwrap_or_else(|_| "none,gzip".into());
    names
        .split(',')
        .map(|n| match n.trim() {
            "none" | "" => None,
            name => Some(serde_json::from_value(json!(name)).expect("a WAL compression")),
        })
        .collect()
}

fn label(c: Option<WalCompression>) -> String {
    c.map_or("none".into(), |c| format!("{c:?}").to_lowercase())
}

fn base_backup(pg: &Instance) -> String {
    let (ok, facts, stderr) = pg.backup("bench-base");
    assert!(ok, "backup: {stderr}\n{facts}");
    facts["backupId"].as_str().expect("backup id").to_string()
}

/// The same backup and WAL restored to latest with each restorer: seconds to promotion.
fn restore_both(s3: &S3Server, pg: &Instance, backup_id: &str, segments: u64) -> serde_json::Value {
    let want = pg.psql("SELECT count(*) FROM bench_wal");
    let mut out = serde_json::Map::new();
    out.insert("wal_segments_after_backup".into(), json!(segments));
    for (name, archiver) in [
        ("native", Archiver::Native),
        ("barman_cloud_wal_restore", Archiver::BarmanCloud),
    ] {
        let mut source = pg.opts.settings.clone();
        source.archiver = archiver;
        let file = pg.dir.path().join(format!("source-{name}.json"));
        std::fs::write(&file, serde_json::to_vec(&source).unwrap()).unwrap();
        let mut settings = source.clone();
        settings.server_name = format!("restored-{name}");
        let t0 = Instant::now();
        let restored = Instance::start(InstanceOptions {
            settings,
            credentials: s3.credentials.clone(),
            extra_args: vec![
                "--restore-backup".into(),
                backup_id.into(),
                "--restore-source".into(),
                file.display().to_string(),
            ],
            env: vec![],
        });
        let secs = t0.elapsed().as_secs_f64();
        let got = restored.psql("SELECT count(*) FROM bench_wal");
        assert_eq!(got, want, "{name}: the restore lost rows");
        out.insert(format!("{name}_seconds"), json!(secs));
    }
    serde_json::Value::Object(out)
}

/// The agent's peak resident memory (VmHWM): with the native archiver it holds the uploads.
/// The agent is the postmaster's parent.
fn agent_peak_rss_kib(pg: &Instance) -> Option<u64> {
    let postmaster = pg.live_postmaster()?;
    let stat = std::fs::read_to_string(format!("/proc/{postmaster}/stat")).ok()?;
    let ppid = stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?;
    let status = std::fs::read_to_string(format!("/proc/{ppid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The machine's CPU time from `/proc/stat` (all cores), to tell what bounds the archiving.
struct CpuTimes {
    busy: u64,
    iowait: u64,
    total: u64,
}

/// Fractions of all the cores' time in a phase.
struct CpuShare {
    busy: f64,
    iowait: f64,
}

impl CpuTimes {
    fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        let total: u64 = fields.iter().take(8).sum();
        let (idle, iowait) = (at(3), at(4));
        CpuTimes {
            busy: total - idle - iowait,
            iowait,
            total,
        }
    }

    fn since(&self, start: &CpuTimes) -> CpuShare {
        let total = (self.total - start.total).max(1) as f64;
        CpuShare {
            busy: (self.busy - start.busy) as f64 / total,
            iowait: (self.iowait - start.iowait) as f64 / total,
        }
    }
}

#[test]
#[ignore = "benchmark: cargo xtask bench wal"]
fn bench_wal_archiving_parallel_vs_plain() {
    let seconds = env_u32("PGWARDEN_BENCH_SECONDS", 60);
    let clients = env_u32("PGWARDEN_BENCH_CLIENTS", 4);
    let s3 = S3Server::start();
    let modes =
        std::env::var("PGWARDEN_BENCH_MODES").unwrap_or_else(|_| "native,parallel,plain".into());
    let mut results = vec![];
    for c in compressions() {
        for m in modes.split(',') {
            results.push(run_mode(&s3, m.trim(), c, seconds, clients));
        }
    }
    let doc = json!({
        "benchmark": "wal-archiving",
        "store": "minio (single node, 127.0.0.1)",
        "wal_segment_bytes": 16 * 1024 * 1024,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "results": results,
    });
    let out = std::env::var("PGWARDEN_BENCH_OUT")
        .unwrap_or_else(|_| format!("{}/../target/bench/wal.json", env!("CARGO_MANIFEST_DIR")));
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&doc).unwrap());
    println!(
        "{:<10} {:<6} {:>6} {:>10} {:>11} {:>8} {:>8} {:>10} {:>11} {:>13} {:>9} {:>17}",
        "mode",
        "comp",
        "tps",
        "written/s",
        "archived/s",
        "lag@end",
        "max lag",
        "catch-up s",
        "cpu (load)",
        "cpu (catch-up)",
        "agent MiB",
        "restore s (n/b)"
    );
    for r in &results {
        println!(
            "{:<10} {:<6} {:>6.0} {:>10.2} {:>11.2} {:>8} {:>8} {:>10} {:>10.0}% {:>12.0}% {:>9.1} {:>17}",
            r["mode"].as_str().unwrap(),
            r["compression"].as_str().unwrap_or("none"),
            r["pgbench_tps"].as_f64().unwrap_or(0.0),
            r["written_segments_per_second"].as_f64().unwrap_or(0.0),
            r["archived_segments_per_second"].as_f64().unwrap_or(0.0),
            r["lag_segments_at_end_of_load"],
            r["max_lag_segments"],
            r["catch_up_seconds"]
                .as_f64()
                .map(|v| format!("{v:.1}"))
                .unwrap_or("—".into()),
            100.0 * r["cpu_busy_during_load"].as_f64().unwrap_or(0.0),
            100.0 * r["cpu_busy_during_catch_up"].as_f64().unwrap_or(0.0),
            r["agent_peak_rss_mib"].as_f64().unwrap_or(0.0),
            match &r["restore"] {
                serde_json::Value::Null => "—".to_string(),
                x => format!(
                    "{:.1} / {:.1}",
                    x["native_seconds"].as_f64().unwrap_or(0.0),
                    x["barman_cloud_wal_restore_seconds"]
                        .as_f64()
                        .unwrap_or(0.0)
                ),
            },
        );
    }
    println!("written to {out}");
}
