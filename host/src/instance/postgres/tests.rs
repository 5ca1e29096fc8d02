use super::*;

#[test]
fn config_turns_archiving_on_with_the_agent_as_archive_command() {
    let conf = PgConfig {
        listen_addresses: "127.0.0.1".into(),
        port: 5433,
        socket_dir: "/tmp/s".into(),
        archive_command: Some(archive_command(Path::new("/usr/bin/pgwarden"))),
        archive_timeout_seconds: 60,
        parameters: vec![("max_connections".into(), "50".into())],
        recovery: vec![],
    }
    .render();
    assert!(conf.contains("archive_mode = 'on'\n"));
    assert!(conf.contains("archive_command = '/usr/bin/pgwarden instance wal-archive %p'\n"));
    assert!(conf.contains("archive_timeout = '60s'\n"));
    assert!(conf.contains("max_connections = '50'\n"));
}

/// PostgreSQL's expansion of `%p`, `%f`, `%r`, `%%` (any other `%` stays), as in
/// xlogarchive.c / pgarch.c.
fn pg_expand(cmd: &str, p: &str, f: &str) -> String {
    let mut out = String::new();
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('%', Some('p')) => out.push_str(p),
            ('%', Some('f')) => out.push_str(f),
            ('%', Some('r')) => out.push_str("000000010000000000000001"),
            ('%', Some('%')) => out.push('%'),
            _ => {
                out.push(c);
                continue;
            }
        }
        chars.next();
    }
    out
}

#[test]
fn commands_double_every_percent_sign_of_their_paths() {
    let exe = Path::new("/opt/pg%fwarden/pgwarden");
    let source = Path::new("/etc/pg%p%%/it's%r.json");
    let archive = archive_command(exe);
    assert_eq!(archive, "/opt/pg%%fwarden/pgwarden instance wal-archive %p");
    let restore = restore_command(exe, source);
    let wal = "000000010000000000000007";
    assert_eq!(
        pg_expand(&restore, "pg_wal/RECOVERYXLOG", wal),
        format!(
            "/opt/pg%fwarden/pgwarden instance wal-restore --source \
             '/etc/pg%p%%/it'\\''s%r.json' {wal} pg_wal/RECOVERYXLOG"
        )
    );
    assert_eq!(
        pg_expand(&archive, "pg_wal/x", wal),
        "/opt/pg%fwarden/pgwarden instance wal-archive pg_wal/x"
    );
}

#[test]
fn only_the_replication_user_may_replicate() {
    let text = hba("streaming_replica");
    let replication: Vec<&str> = text
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("replication"))
        .collect();
    assert_eq!(
        replication,
        ["host    replication  streaming_replica  all  scram-sha-256"]
    );
    // `all` as a database does not match replication connections.
    assert!(
        text.lines()
            .all(|l| !l.contains("trust") || l.starts_with("local   all"))
    );
}

#[test]
fn conf_values_cannot_break_out_of_their_line() {
    let config = PgConfig {
        recovery: vec![(
            "recovery_target_name".into(),
            "it's\nrestore_command = 'rm -rf /'\\".into(),
        )],
        ..Default::default()
    };
    let text = config.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("recovery_target_name"))
        .unwrap();
    assert_eq!(
        line,
        r"recovery_target_name = 'it''s\nrestore_command = ''rm -rf /''\\'"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("restore_command"))
            .count(),
        0
    );
}

#[test]
fn recovery_targets_map_to_postgresql_settings() {
    let t = RecoveryTarget {
        target_time: Some("2026-11-25T10:00:00Z".into()),
        ..Default::default()
    };
    let s = recovery_settings("fetch %f %p", Some(&t));
    assert!(s.contains(&(
        "recovery_target_time".into(),
        "2026-11-25 10:00:00+00".into()
    )));
    assert_eq!(
        pg_timestamp("2026-11-25T10:00:00.25+01:00"),
        "2026-11-25 09:00:00.250+00"
    );
    assert!(s.contains(&("recovery_target_action".into(), "promote".into())));
    let t = RecoveryTarget {
        target_immediate: Some(true),
        exclusive: Some(true),
        ..Default::default()
    };
    let s = recovery_settings("fetch %f %p", Some(&t));
    assert!(s.contains(&("recovery_target".into(), "immediate".into())));
    assert!(s.contains(&("recovery_target_inclusive".into(), "off".into())));
    let latest = recovery_settings("fetch %f %p", None);
    assert_eq!(latest.len(), 2);
}
