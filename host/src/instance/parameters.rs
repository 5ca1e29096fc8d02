//! The Cluster's `spec.postgresql.parameters` in the running instance: the decisions, as pure
//! functions (the I/O is in [`live`]).
//!
//! ```text
//!   --parameter flags + parameters.json (settings ConfigMap)
//!     └─ vet: name form, reserved names, wal_level minimal, same name twice ─► refused
//!     └─ postgres -C on a scratch folder (live): values PostgreSQL refuses ─► refused,
//!        their previous value kept
//!     └─ splice into postgresql.pgwarden.conf ─► pg_reload_conf()
//!     └─ verdict: pending_restart ─► restart (fast shutdown, start); an error on reload
//!        ─► refused, previous value written back
//!     └─ status.parameters: how it was applied, what waits, what was refused (names only)
//! ```
//!
//! A refused parameter keeps its previous value (or stays unset), so a value PostgreSQL
//! refuses never reaches the file it starts with: no crash loop after the next restart.

pub mod live;

use std::collections::BTreeMap;

use pgwarden_crds::settings::parameters::{
    self as rules, AppliedBy, ParametersStatus, RefusedParameter,
};
use serde::Deserialize;

/// One parameter: name and value, in the order written.
pub type Parameter = (String, String);

/// PostgreSQL matches parameter names case-insensitively.
fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn refused(name: &str, reason: &str) -> RefusedParameter {
    RefusedParameter {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Parameters to write, and the ones refused on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vetted {
    pub params: Vec<Parameter>,
    pub refused: Vec<RefusedParameter>,
}

/// Why a parameter is never written, whatever PostgreSQL would say of it (admission refuses
/// the same; this is the agent's own line of defence).
pub fn never_written(name: &str, value: &str) -> Option<&'static str> {
    if !rules::is_valid_name(name) {
        Some("not a PostgreSQL parameter name")
    } else if rules::is_reserved(name) {
        Some("pgwarden owns it")
    } else if value.contains('\0') {
        Some("its value holds a NUL character")
    } else if same(name, "wal_level") && value.trim().eq_ignore_ascii_case("minimal") {
        Some("wal_level minimal cannot archive WAL")
    } else {
        None
    }
}

/// The `--parameter` flags, then the Cluster's parameters, which win over a flag of the same
/// name. A name the Cluster sets twice in different case is refused: PostgreSQL would take
/// whichever line came last.
pub fn vet(flags: &[Parameter], cluster: &BTreeMap<String, String>) -> Vetted {
    let twice = |name: &str| cluster.keys().filter(|k| same(k, name)).count() > 1;
    let entries = flags
        .iter()
        .map(|(k, v)| (k, v, false))
        .chain(cluster.iter().map(|(k, v)| (k, v, true)));
    let mut out = Vetted::default();
    for (name, value, from_cluster) in entries {
        let reason = match from_cluster && twice(name) {
            true => Some("set twice, in different case"),
            false => never_written(name, value),
        };
        if let Some(reason) = reason {
            out.refused.push(refused(name, reason));
            continue;
        }
        out.params.retain(|(k, _)| !same(k, name));
        out.params.push((name.clone(), value.clone()));
    }
    out
}

pub(crate) fn value_of<'a>(set: &'a [Parameter], name: &str) -> Option<&'a str> {
    set.iter()
        .rev()
        .find(|(k, _)| same(k, name))
        .map(|(_, v)| v.as_str())
}

/// Names set, changed or removed from `old` to `new`.
pub fn changed(old: &[Parameter], new: &[Parameter]) -> Vec<String> {
    let mut out: Vec<String> = new
        .iter()
        .filter(|(k, v)| value_of(old, k) != Some(v.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(
        old.iter()
            .filter(|(k, _)| value_of(new, k).is_none())
            .map(|(k, _)| k.clone()),
    );
    out
}

/// `new` with each of `names` back at its value in `old`, or left out when `old` has none.
pub fn revert(new: &[Parameter], names: &[String], old: &[Parameter]) -> Vec<Parameter> {
    let named = |k: &str| names.iter().any(|n| same(n, k));
    let mut out: Vec<Parameter> = new
        .iter()
        .filter_map(|(k, v)| match named(k) {
            false => Some((k.clone(), v.clone())),
            true => value_of(old, k).map(|o| (k.clone(), o.to_string())),
        })
        .collect();
    for (k, v) in old {
        if named(k) && value_of(&out, k).is_none() {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// The names in `params` set to a value PostgreSQL did not start with (`failed`): tried again
/// only once the Cluster sets another value.
pub fn known_bad(params: &[Parameter], failed: &[Parameter]) -> Vec<String> {
    params
        .iter()
        .filter(|(k, v)| value_of(failed, k) == Some(v.as_str()))
        .map(|(k, _)| k.clone())
        .collect()
}

/// What PostgreSQL said of the values in a check file (`postgres -C` output, one parameter per
/// line of the file in `params`' order): the parameters it names, and why, without the values.
pub fn refused_in(stderr: &str, params: &[Parameter]) -> Vec<RefusedParameter> {
    let mut out: Vec<RefusedParameter> = Vec::new();
    for line in stderr.lines() {
        let named = quoted_after(line, "parameter \"")
            .and_then(|n| params.iter().find(|(k, _)| same(k, n)))
            .or_else(|| {
                let n: usize = quoted_number_after(line, "\" line ")?;
                params.get(n.checked_sub(1)?)
            });
        let Some((name, _)) = named else { continue };
        let reason = if line.contains("unrecognized configuration parameter") {
            "PostgreSQL does not know this parameter"
        } else if line.contains("syntax error") {
            "PostgreSQL cannot parse it"
        } else {
            "PostgreSQL refuses its value"
        };
        if !out.iter().any(|r| same(&r.name, name)) {
            out.push(refused(name, reason));
        }
    }
    out
}

fn quoted_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split('"').next()
}

fn quoted_number_after(line: &str, marker: &str) -> Option<usize> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What a reload showed: `pg_settings.pending_restart` and `pg_file_settings.error` rows of
/// the agent's file.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub pending: Vec<String>,
    pub errors: Vec<FileError>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    pub name: String,
    pub error: String,
}

/// Among the `changed` names after a reload: those that need a restart (PostgreSQL reads them
/// only at start; its file error says "setting could not be applied" for them too) and those
/// PostgreSQL refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub restart: Vec<String>,
    pub refused: Vec<String>,
}

pub fn verdict(changed: &[String], reloaded: &Reloaded) -> Verdict {
    let pending = |n: &str| reloaded.pending.iter().any(|p| same(p, n));
    let failed = |n: &str| reloaded.errors.iter().any(|e| same(&e.name, n));
    Verdict {
        restart: changed.iter().filter(|n| pending(n)).cloned().collect(),
        refused: changed
            .iter()
            .filter(|n| !pending(n) && failed(n))
            .cloned()
            .collect(),
    }
}

/// One line of `postgresql.pgwarden.conf`, quoted as `PgConfig::render` quotes it.
pub fn conf_line(name: &str, value: &str) -> String {
    let quoted = value
        .replace('\\', "\\\\")
        .replace('\'', "''")
        .replace('\n', "\\n")
        .replace('\r', "\\r");
    format!("{name} = '{quoted}'")
}

/// The configuration `text` with its lines of `old` (the last run of them) replaced by the
/// lines of `new`, appended when `old` is empty; `None` when `text` does not hold `old`.
pub fn splice(text: &str, old: &[Parameter], new: &[Parameter]) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let old_lines: Vec<String> = old.iter().map(|(k, v)| conf_line(k, v)).collect();
    let at = match old_lines.len() {
        0 => lines.len(),
        n => (0..=lines.len().checked_sub(n)?)
            .rev()
            .find(|&i| lines[i..i + n].iter().zip(&old_lines).all(|(l, o)| l == o))?,
    };
    let new_lines = new.iter().map(|(k, v)| conf_line(k, v));
    let out: Vec<String> = lines[..at]
        .iter()
        .map(|l| l.to_string())
        .chain(new_lines)
        .chain(lines[at + old_lines.len()..].iter().map(|l| l.to_string()))
        .collect();
    Some(out.join("\n") + "\n")
}

fn list(names: &[String]) -> String {
    names.join(", ")
}

/// The sentence of `status.parameters.message`; `waiting` says why a restart waits.
pub fn describe(s: &ParametersStatus, waiting: Option<&str>) -> String {
    let applied: Vec<String> = s
        .changed
        .iter()
        .filter(|n| !s.restarted_for.contains(n) && !s.pending_restart.contains(n))
        .filter(|n| !s.refused.iter().any(|r| same(&r.name, n)))
        .cloned()
        .collect();
    let mut parts = Vec::new();
    match s.applied_by {
        Some(AppliedBy::Start) if applied.is_empty() => {
            parts.push("PostgreSQL started without Cluster parameters".to_string())
        }
        Some(AppliedBy::Start) => parts.push(format!(
            "parameters in effect since PostgreSQL started: {}",
            list(&applied)
        )),
        Some(AppliedBy::Restart) => {
            parts.push(format!(
                "restarted PostgreSQL to apply {}",
                list(&s.restarted_for)
            ));
            if !applied.is_empty() {
                parts.push(format!("applied by reload: {}", list(&applied)));
            }
        }
        Some(AppliedBy::Reload) if !applied.is_empty() => {
            parts.push(format!("parameters applied (reload): {}", list(&applied)))
        }
        _ => {}
    }
    if !s.pending_restart.is_empty() {
        parts.push(format!(
            "{} waits for a restart of PostgreSQL: {}",
            list(&s.pending_restart),
            waiting.unwrap_or("not yet restarted")
        ));
    }
    if !s.refused.is_empty() {
        let each: Vec<String> = s
            .refused
            .iter()
            .map(|r| format!("{} ({})", r.name, r.reason))
            .collect();
        parts.push(format!(
            "refused, the previous value stays: {}",
            each.join(", ")
        ));
    }
    match parts.is_empty() {
        true => "no parameter changed".to_string(),
        false => parts.join("; "),
    }
}

#[cfg(test)]
mod tests;
