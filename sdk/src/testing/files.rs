//! Fixture files: reading a case (YAML or JSON, possibly extending a base) and blessing it
//! back into the file, and the format, it came from.
//!
//! A case may start with `base: <file>` (a path relative to the case's folder): its
//! `request` is the base's request deep-merged with the case's own (objects merge key by
//! key, anything else replaces, `null` removes the key); its `settings`, unless the case has
//! its own. The expectation is never inherited:
//! every case states its own. Bases chain; a base kept in a subfolder (`fixtures/base/`) is
//! not a case itself.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Evaluator, Expectation, Testcase};
use crate::types::Outcome;

/// The case files of `dir` (`*.yaml`, `*.yml`, `*.json`, not its subfolders), sorted.
pub fn case_paths(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read fixture folder {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && format_of(p).is_some())
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads every case of `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Testcase>, String> {
    case_paths(dir)?.iter().map(|p| load_case(p)).collect()
}

/// Reads one case file, its base merged in.
pub fn load_case(path: &Path) -> Result<Testcase, String> {
    let invalid =
        |e: &dyn std::fmt::Display| format!("{} is not a valid test case: {e}", path.display());
    let value = with_base(path, read_value(path)?, &mut Vec::new())?;
    let mut case: Testcase = serde_json::from_value(value).map_err(|e| invalid(&e))?;
    if case.name.is_empty() {
        case.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    Ok(case)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

fn read_value(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // Through JSON values (JSON is YAML too): a YAML deserializer may want tags
    // (`!allowed`) for the enums.
    serde_saphyr::from_str(&text)
        .map_err(|e| format!("{} is not a valid test case: {e}", path.display()))
}

/// `value` with the request of its `base:` (if any) merged under its own.
fn with_base(path: &Path, mut value: Value, chain: &mut Vec<PathBuf>) -> Result<Value, String> {
    let Some(object) = value.as_object_mut() else {
        return Ok(value);
    };
    let Some(base) = object.remove("base") else {
        return Ok(value);
    };
    let Some(base) = base.as_str() else {
        return Err(format!("{}: `base` must be a file name", path.display()));
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    chain.push(path.to_path_buf());
    if chain.iter().any(|p| same_file(p, &base_path)) {
        return Err(format!(
            "{}: circular base {}",
            path.display(),
            base_path.display()
        ));
    }
    let base_value =
        read_value(&base_path).map_err(|e| format!("{}: its base {base}: {e}", path.display()))?;
    let base_value = with_base(&base_path, base_value, chain)?;
    let mut request = base_value.get("request").cloned().unwrap_or(Value::Null);
    if let Some(own) = object.remove("request") {
        merge(&mut request, own);
    }
    object.insert("request".into(), request);
    // The settings are inherited whole unless the case states its own.
    if let Some(settings) = base_value
        .get("settings")
        .filter(|_| !object.contains_key("settings"))
    {
        object.insert("settings".into(), settings.clone());
    }
    Ok(value)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Deep merge: objects key by key, `null` removes a key, anything else replaces.
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                if value.is_null() {
                    into.remove(&key);
                } else {
                    merge(into.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (into, from) => *into = from,
    }
}

/// Rewrites the expectation of every case in `dir` with what `evaluator` answers (a
/// golden-file "bless"), each in the file and format it was read from; the rest of the file
/// (comments, `base:`, the request) is kept. Review the diff in git.
pub fn bless_dir(dir: &Path, evaluator: &dyn Evaluator) -> Result<usize, String> {
    let paths = case_paths(dir)?;
    for path in &paths {
        let case = load_case(path)?;
        let settings = case.settings().map_err(|d| d.message)?;
        let expect = match evaluator.evaluate(&settings, &case.request)? {
            Outcome::Allowed(value) => Expectation::Allowed(value),
            Outcome::Denied(message) => Expectation::Denied(message),
        };
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let text = match format_of(path) {
            Some(Format::Json) => bless_json(path, &expect)?,
            _ => bless_yaml(&text, &expect)?,
        };
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(paths.len())
}

/// A JSON case rewritten whole, with the new `expect` (serde_json sorts the keys).
fn bless_json(path: &Path, expect: &Expectation) -> Result<String, String> {
    let mut value: Map<String, Value> = serde_json::from_value(read_value(path)?)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let expect = serde_json::to_value(expect).map_err(|e| e.to_string())?;
    value.insert("expect".into(), expect);
    Ok(serde_json::to_string_pretty(&value).map_err(|e| e.to_string())? + "\n")
}

/// A YAML case with its top-level `expect:` block (to the next top-level key, or the end)
/// replaced, or appended when it has none.
fn bless_yaml(text: &str, expect: &Expectation) -> Result<String, String> {
    let tail = pgwarden_crds::to_yaml(&serde_json::json!({ "expect": expect }))
        .map_err(|e| e.to_string())?;
    let lines: Vec<&str> = text.lines().collect();
    let top_level = |l: &str| !l.is_empty() && !l.starts_with([' ', '\t', '#', '-', '}', ']']);
    let Some(start) = lines.iter().position(|l| l.starts_with("expect:")) else {
        return Ok(format!("{}\n{tail}", text.trim_end()));
    };
    let end = (start + 1..lines.len())
        .find(|&i| top_level(lines[i]))
        .unwrap_or(lines.len());
    let head = lines[..start].join("\n");
    let rest = lines[end..].join("\n");
    let mut out = String::new();
    if !head.trim().is_empty() {
        out = head.trim_end().to_string() + "\n";
    }
    out.push_str(&tail);
    if !rest.is_empty() {
        out = out.trim_end().to_string() + "\n" + &rest + "\n";
    }
    Ok(out)
}
