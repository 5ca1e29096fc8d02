use std::collections::BTreeMap;

use pgwarden_crds::settings::PARAMETERS_KEY;
use pgwarden_crds::settings::parameters::{AppliedBy, ParametersStatus};

use super::*;
use crate::instance::postgres::PgConfig;

fn p(pairs: &[(&str, &str)]) -> Vec<Parameter> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    p(pairs).into_iter().collect()
}

fn names(refused: &[RefusedParameter]) -> Vec<&str> {
    refused.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn the_clusters_parameters_win_over_flags_and_owned_or_malformed_names_are_never_written() {
    let flags = p(&[("work_mem", "4MB"), ("Archive_Command", "/bin/true")]);
    let cluster = map(&[
        ("WORK_MEM", "8MB"),
        ("max_wal_size", "1GB"),
        ("RESTORE_COMMAND", "cp %f %p"),
        ("recovery_target_time", "2026-01-01"),
        ("include_dir", "conf.d"),
        ("max-wal-size", "1GB"),
        ("a.b.c", "1"),
        ("pg_stat_statements.max", "5000"),
    ]);
    let v = vet(&flags, &cluster);
    assert_eq!(
        v.params,
        p(&[
            ("WORK_MEM", "8MB"),
            ("max_wal_size", "1GB"),
            ("pg_stat_statements.max", "5000"),
        ])
    );
    let mut refused = names(&v.refused);
    refused.sort_unstable();
    assert_eq!(
        refused,
        [
            "Archive_Command",
            "RESTORE_COMMAND",
            "a.b.c",
            "include_dir",
            "max-wal-size",
            "recovery_target_time"
        ]
    );
    let reason = |n: &str| {
        v.refused
            .iter()
            .find(|r| r.name == n)
            .unwrap()
            .reason
            .clone()
    };
    assert_eq!(reason("Archive_Command"), "pgwarden owns it");
    assert_eq!(reason("a.b.c"), "not a PostgreSQL parameter name");
    // Names only: a refusal never carries the value.
    assert!(!format!("{:?}", v.refused).contains("/bin/true"));
}

#[test]
fn a_name_set_twice_in_different_case_and_wal_level_minimal_are_refused() {
    let cluster = map(&[
        ("shared_buffers", "128MB"),
        ("Shared_Buffers", "1GB"),
        ("WAL_LEVEL", " Minimal"),
        ("value_with_nul", "a\0b"),
    ]);
    let v = vet(&[], &cluster);
    assert!(v.params.is_empty(), "{:?}", v.params);
    assert_eq!(v.refused.len(), 4, "{:?}", v.refused);
    assert!(
        v.refused
            .iter()
            .filter(|r| r.name.eq_ignore_ascii_case("shared_buffers"))
            .all(|r| r.reason == "set twice, in different case")
    );
    assert!(
        vet(&[], &map(&[("wal_level", "logical")]))
            .refused
            .is_empty()
    );
}

#[test]
fn changes_are_set_changed_or_removed_names_in_any_case() {
    let old = p(&[
        ("work_mem", "4MB"),
        ("max_connections", "100"),
        ("x.y", "1"),
    ]);
    let new = p(&[
        ("WORK_MEM", "4MB"),
        ("max_connections", "42"),
        ("max_wal_size", "1GB"),
    ]);
    assert_eq!(
        changed(&old, &new),
        ["max_connections", "max_wal_size", "x.y"]
    );
    assert!(changed(&new, &new).is_empty());
}

#[test]
fn reverting_puts_back_the_previous_value_or_leaves_a_new_name_out() {
    let old = p(&[("work_mem", "4MB"), ("shared_buffers", "128MB")]);
    let new = p(&[("work_mem", "lots"), ("max_wal_size", "x")]);
    let back = revert(
        &new,
        &[
            "WORK_MEM".into(),
            "max_wal_size".into(),
            "shared_buffers".into(),
        ],
        &old,
    );
    assert_eq!(back, p(&[("work_mem", "4MB"), ("shared_buffers", "128MB")]));
    assert_eq!(revert(&new, &[], &old), new);
}

/// The rows PostgreSQL 15 showed after a reload that changed max_wal_size (sighup),
/// max_connections (postmaster) and work_mem to an invalid value.
#[test]
fn after_a_reload_pending_restart_means_restart_and_an_error_alone_means_refused() {
    let reloaded: Reloaded = serde_json::from_str(
        r#"{"pending": ["max_connections"],
            "errors": [{"name": "max_connections", "error": "setting could not be applied"},
                       {"name": "work_mem", "error": "setting could not be applied"}]}"#,
    )
    .unwrap();
    let v = verdict(
        &[
            "max_wal_size".into(),
            "Max_Connections".into(),
            "work_mem".into(),
        ],
        &reloaded,
    );
    assert_eq!(v.restart, ["Max_Connections"]);
    assert_eq!(v.refused, ["work_mem"]);
    // A parameter pending from something else than this change is not ours to restart for.
    let other = Reloaded {
        pending: vec!["shared_buffers".into()],
        errors: vec![],
    };
    assert_eq!(verdict(&["work_mem".into()], &other), Verdict::default());
}

#[test]
fn conf_lines_are_quoted_exactly_as_the_agent_renders_its_file() {
    let tricky = p(&[
        ("search_path", "\"$user\", public"),
        ("application_name", "it's\\a\nline\r"),
        ("work_mem", "8MB"),
    ]);
    let rendered = PgConfig {
        parameters: tricky.clone(),
        ..Default::default()
    }
    .render();
    for (k, v) in &tricky {
        let line = conf_line(k, v);
        assert!(
            rendered.lines().any(|l| l == line),
            "{line} not in:\n{rendered}"
        );
    }
}

#[test]
fn splicing_replaces_the_written_lines_in_place_or_appends_them() {
    let old = p(&[("work_mem", "4MB"), ("max_wal_size", "1GB")]);
    let text = PgConfig {
        parameters: old.clone(),
        archive_command: Some("x %p".into()),
        ..Default::default()
    }
    .render();
    let new = p(&[("work_mem", "8MB")]);
    let spliced = splice(&text, &old, &new).unwrap();
    let lines: Vec<&str> = spliced.lines().collect();
    let at = lines.iter().position(|l| *l == "work_mem = '8MB'").unwrap();
    assert!(
        lines[at + 1].starts_with("archive_mode = 'on'"),
        "{spliced}"
    );
    assert!(!spliced.contains("max_wal_size"));
    assert_eq!(
        text.lines().count() - 1,
        lines.len(),
        "one line less:\n{spliced}"
    );
    // Nothing written yet: appended after the agent's own lines.
    let bare = PgConfig::default().render();
    let appended = splice(&bare, &[], &new).unwrap();
    assert!(appended.ends_with("work_mem = '8MB'\n"), "{appended}");
    // A file that does not hold what the agent wrote is not touched.
    assert_eq!(splice(&bare, &old, &new), None);
}

/// What `postgres -C` printed here for a configuration with each kind of problem.
#[test]
fn postgres_messages_name_the_refused_parameters_without_their_values() {
    let params = p(&[
        ("work_mem", "8MB"),
        ("max_wal_size", "lots"),
        ("foo_bar", "1"),
        ("max_connections", "99999999"),
    ]);
    let stderr = "\
2026-11-30 13:44:13.490 GMT [21098] LOG:  skipping missing configuration file \"/x/postgresql.auto.conf\"
2026-11-30 13:43:31.689 UTC [19961] LOG:  invalid value for parameter \"max_wal_size\": \"lots\"
2026-11-30 13:44:13.519 GMT [21101] LOG:  unrecognized configuration parameter \"foo_bar\" in file \"/x/check.conf\" line 3
2026-11-30 13:44:13.519 GMT [21101] LOG:  99999999 is outside the valid range for parameter \"max_connections\" (1 .. 262143)
2026-11-30 13:44:13.519 GMT [21101] FATAL:  configuration file \"/x/check.conf\" contains errors";
    let refused = refused_in(stderr, &params);
    assert_eq!(
        names(&refused),
        ["max_wal_size", "foo_bar", "max_connections"]
    );
    assert_eq!(refused[0].reason, "PostgreSQL refuses its value");
    assert_eq!(refused[1].reason, "PostgreSQL does not know this parameter");
    let syntax = "LOG:  syntax error in file \"/x/check.conf\" line 2, near token \"x\"";
    assert_eq!(names(&refused_in(syntax, &params)), ["max_wal_size"]);
    assert!(!format!("{refused:?}").contains("lots"));
}

#[test]
fn the_message_says_how_each_parameter_was_applied() {
    let mut s = ParametersStatus {
        applied_by: Some(AppliedBy::Reload),
        changed: vec!["max_wal_size".into(), "max_connections".into()],
        pending_restart: vec!["max_connections".into()],
        ..Default::default()
    };
    assert_eq!(
        describe(&s, Some("backup b-1 runs on this pod")),
        "parameters applied (reload): max_wal_size; max_connections waits for a restart of \
         PostgreSQL: backup b-1 runs on this pod"
    );
    let waiting = ParametersStatus {
        changed: vec!["max_connections".into()],
        ..s.clone()
    };
    assert_eq!(
        describe(&waiting, None),
        "max_connections waits for a restart of PostgreSQL: not yet restarted"
    );
    assert_eq!(
        describe(&ParametersStatus::default(), None),
        "no parameter changed"
    );
    s.applied_by = Some(AppliedBy::Restart);
    s.pending_restart.clear();
    s.restarted_for = vec!["max_connections".into()];
    s.refused = vec![refused("work_mem", "PostgreSQL refuses its value")];
    assert_eq!(
        describe(&s, None),
        "restarted PostgreSQL to apply max_connections; applied by reload: max_wal_size; \
         refused, the previous value stays: work_mem (PostgreSQL refuses its value)"
    );
}

/// The operator's half: the settings ConfigMap carries the Cluster's parameters as the agent
/// reads them, `{}` when there are none (a change of the key, never its removal).
#[test]
fn the_settings_config_map_carries_the_clusters_parameters() {
    let mut cluster: pgwarden_crds::Cluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "pg", "namespace": "prod", "uid": "u-1"},
        "spec": {"postgresql": {"parameters": {"max_wal_size": "256MB", "work_mem": "8MB"}}},
    }))
    .unwrap();
    let data = pgwarden_core::plan::settings_config_map(&cluster, None)
        .data
        .unwrap();
    let read: BTreeMap<String, String> = serde_json::from_str(&data[PARAMETERS_KEY]).unwrap();
    assert_eq!(read, map(&[("max_wal_size", "256MB"), ("work_mem", "8MB")]));
    cluster.spec.postgresql = None;
    let data = pgwarden_core::plan::settings_config_map(&cluster, None)
        .data
        .unwrap();
    assert_eq!(data[PARAMETERS_KEY], "{}");
}

#[test]
fn a_value_postgresql_did_not_start_with_stays_out_until_the_cluster_changes_it() {
    let failed = p(&[("shared_preload_libraries", "no_such_lib")]);
    let same = p(&[
        ("Shared_Preload_Libraries", "no_such_lib"),
        ("work_mem", "8MB"),
    ]);
    assert_eq!(known_bad(&same, &failed), ["Shared_Preload_Libraries"]);
    let other = p(&[("shared_preload_libraries", "pg_stat_statements")]);
    assert!(known_bad(&other, &failed).is_empty());
}
