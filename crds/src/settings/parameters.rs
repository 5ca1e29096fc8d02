//! The Cluster's `spec.postgresql.parameters` on their way to PostgreSQL: which names a user
//! may set, the admission rules that say so, and what the agent reports once it applied them.
//!
//! ```text
//!   spec.postgresql.parameters ─ admission (CEL: name form, reserved names) ─► Cluster
//!        └─ operator ─► settings ConfigMap `parameters.json` ─► agent: vet again, write
//!           postgresql.pgwarden.conf, reload (or restart) ─► status.parameters
//! ```
//!
//! The reserved names are the ones pgwarden writes itself (archiving, recovery, where
//! PostgreSQL listens, its files) plus `include*`, which would pull in files pgwarden does not
//! control. PostgreSQL matches parameter names case-insensitively, so the list does too. The
//! same list feeds the CEL rules and the agent's own check, so the two cannot drift apart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Names the operator owns, in lower case.
pub const RESERVED: &[&str] = &[
    "archive_mode",
    "archive_command",
    "archive_timeout",
    "archive_library",
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "data_directory",
    "hba_file",
    "ident_file",
    "config_file",
];

/// Prefixes of reserved names: every recovery target setting, every include directive.
pub const RESERVED_PREFIXES: &[&str] = &["recovery_target", "include"];

/// A PostgreSQL parameter name as postgresql.conf accepts it: an identifier (letters, digits,
/// `_`, not starting with a digit), or two joined by one `.` for an extension's parameter
/// (`pg_stat_statements.max`; PostgreSQL's configuration lexer refuses a second dot).
pub const NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)?$";

/// Whether `name` is one pgwarden owns, in any case.
pub fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    RESERVED.contains(&lower.as_str()) || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// Whether `name` has the form of a PostgreSQL parameter name ([`NAME_PATTERN`]).
pub fn is_valid_name(name: &str) -> bool {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('.') {
        None => identifier(name),
        Some((extension, parameter)) => identifier(extension) && identifier(parameter),
    }
}

/// CEL: `k` (a parameter name) is reserved.
fn reserved_cel(k: &str) -> String {
    let list = RESERVED
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let prefixes = RESERVED_PREFIXES
        .iter()
        .map(|p| format!(" || {k}.lowerAscii().startsWith('{p}')"))
        .collect::<String>();
    format!("{k}.lowerAscii() in [{list}]{prefixes}")
}

/// CEL rule on the parameters map: no reserved name, in any case.
pub fn reserved_rule() -> String {
    format!("!self.exists(k, {})", reserved_cel("k"))
}

/// At most this many parameters: the API server refuses CEL rules whose estimated cost is
/// unbounded, and more than PostgreSQL has parameters is no loss.
pub const MAX_PARAMETERS: u32 = 512;
/// At most this long a value, for the same reason.
pub const MAX_VALUE_LENGTH: u32 = 4096;

/// CEL naming the first element of the list `list`, and whether there are more. Only the
/// first: a map's order differs between two evaluations in the API server (`[0]` and `[1]` of
/// two filters may be the same name), and `join()`, `string(int)` and `cel.bind` are refused
/// for their unbounded cost or not offered for CRDs.
fn first_name(list: &str, quote: &str) -> String {
    format!(
        "'{quote}' + {list}[0] + '{quote}' + ({list}.size() == 2 ? ' (and one more)' : '') + \
         ({list}.size() > 2 ? ' (and more)' : '')"
    )
}

/// CEL message naming the reserved parameters that were set.
pub fn reserved_message() -> String {
    let set = format!("self.filter(k, {})", reserved_cel("k"));
    format!(
        "'spec.postgresql.parameters must not set ' + {} + ': pgwarden owns archiving, recovery, \
         where PostgreSQL listens and its files (reserved in any case: {}, {}*)'",
        first_name(&set, ""),
        RESERVED.join(", "),
        RESERVED_PREFIXES.join("*, ")
    )
}

/// CEL rule on the parameters map: every name has PostgreSQL's form.
pub fn name_rule() -> String {
    format!("self.all(k, k.matches('{NAME_PATTERN}'))")
}

/// CEL message naming the malformed names.
pub fn name_message() -> String {
    let bad = format!("self.filter(k, !k.matches('{NAME_PATTERN}'))");
    format!(
        "'spec.postgresql.parameters: ' + {} + ' is not a PostgreSQL parameter name: letters, \
         digits and _, starting with a letter or _, with at most one . for a parameter of an \
         extension (pg_stat_statements.max)'",
        first_name(&bad, "\\'")
    )
}

/// CEL rule: `wal_level` (in any case) is not `minimal` (in any case): too little WAL to archive.
pub const WAL_LEVEL_RULE: &str =
    "self.all(k, k.lowerAscii() != 'wal_level' || self[k].trim().lowerAscii() != 'minimal')";

/// How the agent last brought the parameters to PostgreSQL.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AppliedBy {
    /// Written before PostgreSQL started.
    Start,
    /// `pg_reload_conf()`: PostgreSQL took them while running.
    Reload,
    /// A clean restart (fast shutdown, start) by the agent, for parameters PostgreSQL reads
    /// only at start.
    Restart,
}

/// A parameter the agent did not write, and why. Never its value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefusedParameter {
    pub name: String,
    pub reason: String,
}

/// `status.parameters`: what the agent of `podName` did with the Cluster's parameters. Names
/// only, never values.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParametersStatus {
    /// Pod whose agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// How the last change reached PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<AppliedBy>,
    /// Parameters set, changed or removed by the last change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// Parameters that needed a restart and got one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarted_for: Vec<String>,
    /// Parameters whose new value waits for a restart (the message says why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// Parameters not applied: PostgreSQL keeps running with their previous value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedParameter>,
    /// What happened, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the agent applied them (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_match_in_any_case_and_by_prefix() {
        for name in [
            "Archive_Command",
            "PORT",
            "recovery_target_lsn",
            "Include_Dir",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["max_wal_size", "recovery_prefetch", "wal_level", "ports"] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn names_have_postgresqls_form() {
        for name in ["work_mem", "_a1", "pg_stat_statements.max", "X.y_2"] {
            assert!(is_valid_name(name), "{name}");
        }
        for name in ["", "1a", "a.b.c", "a-b", "a b", ".a", "a.", "a.1b", "é"] {
            assert!(!is_valid_name(name), "{name}");
        }
    }
}
